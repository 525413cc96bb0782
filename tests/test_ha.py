"""High availability, end to end: three relay processes behind the example HAProxy.

Real parts only: ``python -m relay`` processes configured by their environment, Debian's
``haproxy`` running ``examples/haproxy/haproxy.cfg`` (its addresses rewritten to
loopback: ``tests/ha.py``), the private PostgreSQL cluster (``tests/postgres.py``) as the
shared database, and the stand-in AhaSend API, which counts requests by Idempotency-Key.

- PROXY protocol: the replicas see the application's address, not the balancer's.
- Aggregate pacing: three replicas at ``RELAY_API_RATE=30`` together send 30/s.

Slow (processes, real timing): marked ``ha``; about a minute in all.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ha import CLIENT, STRANGER, behind_haproxy, send_one, smtp_from
from tests.postgres import PASSWORD, PgCluster
from tests.standin import StandIn

pytestmark = [pytest.mark.e2e, pytest.mark.ha]


def events(log: str, name: str) -> list[dict[str, object]]:
    """The JSON log lines of one event."""
    found = []
    for line in log.splitlines():
        if f'"{name}"' in line:
            record = json.loads(line)
            if record.get("event") == name:
                found.append(record)
    return found


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    ends = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < ends, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_replicas_behind_haproxy_see_the_real_client(standin: StandIn, tmp_path: Path) -> None:
    """Through the balancer the PROXY header names the application (allowed) or a stranger
    (refused, 554 5.7.1); a replica refuses a direct connection from an untrusted peer."""
    with behind_haproxy(standin, tmp_path, RELAY_LOG_LEVEL="debug") as (balancer, replicas):
        replies = [send_one(balancer.port, f"Proxied {i}") for i in range(6)]
        refused = send_one(balancer.port, "Stranger", source=STRANGER)
        with pytest.raises(OSError), smtp_from(CLIENT, replicas[0].port, timeout=5):
            pass  # no PROXY header, and not from the balancer: closed without a greeting
        logs = [r.logs() for r in replicas]
    assert [code for code, _ in replies] == [250] * 6, replies
    assert refused == (554, "5.7.1 Access denied: client not allowed")
    assert len(standin.accepted) == 6
    sessions = [[e for e in events(log, "session") if e.get("transactions")] for log in logs]
    assert sum(len(s) for s in sessions) == 6
    assert sum(1 for s in sessions if s) >= 2, "the balancer used one replica only"
    for record in (e for s in sessions for e in s):
        assert str(record["peer"]).startswith(f"{CLIENT}:"), record
        assert str(record["via"]).startswith("127.0.0.1:"), record
    untrusted = events(logs[0], "proxy_peer_untrusted")
    assert [e["client"] for e in untrusted] == [CLIENT]


def max_in_window(stamps: list[float], width: float = 1.0) -> int:
    """The most ``stamps`` in any window ``[t, t + width)``."""
    stamps = sorted(stamps)
    best = start = 0
    for end, stamp in enumerate(stamps):
        while stamps[start] <= stamp - width:
            start += 1
        best = max(best, end - start + 1)
    return best


def push(port: int, subjects: list[str], threads: int) -> dict[str, tuple[int, str]]:
    """Send ``subjects`` through ``port`` from ``threads`` concurrent SMTP clients."""
    replies: dict[str, tuple[int, str]] = {}
    queue = list(reversed(subjects))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                subject = queue.pop()
            reply = send_one(port, subject)
            with lock:
                replies[subject] = reply

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
    return replies


def test_three_replicas_pace_at_the_accounts_rate_together(
    standin: StandIn, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """RELAY_API_RATE=30, RELAY_API_BURST=10 on each of three replicas sharing one
    database: 300 messages through the balancer reach the stand-in at 30/s in aggregate
    (not 90/s), never more than rate + burst in any one-second window."""
    rate, burst, total = 30, 10, 300
    env = {
        "RELAY_SPOOL_URL": pg_cluster.database(),
        "RELAY_API_RATE": str(rate),
        "RELAY_API_BURST": str(burst),
        "RELAY_REPLICAS": "3",
        "RELAY_RETRY_DEADLINE": "30",
    }
    subjects = [f"Paced {i}" for i in range(total)]
    with behind_haproxy(standin, tmp_path, **env) as (balancer, replicas):
        started = time.monotonic()
        replies = push(balancer.port, subjects, threads=45)
        elapsed = time.monotonic() - started
        logs = [r.logs() for r in replicas]
    assert Counter(code for code, _ in replies.values()) == {250: total}
    stamps = [r.received_at for r in standin.requests]
    keys = Counter(r.idempotency_key for r in standin.accepted)
    assert len(keys) == total
    assert set(keys.values()) == {1}
    busiest = max_in_window(stamps)
    spread = max(stamps) - min(stamps)
    print(f"\npacing: {total} in {elapsed:.1f} s, spread {spread:.1f} s, busiest second {busiest}")
    assert busiest <= rate + burst + 1  # +1: the edge of a window
    assert spread >= (total - burst) / rate * 0.9  # 30/s together, not 90/s
    used = [sum(1 for e in events(log, "session") if e.get("transactions")) for log in logs]
    assert all(n > 0 for n in used), used  # all three replicas took mail
    for log in logs:
        assert not events(log, "pacing_shared_unavailable")
        assert PASSWORD not in log
