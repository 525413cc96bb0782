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
from tests.standin import Recorded, Scripted, StandIn

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


SHARED = {
    "RELAY_RETRY_DEADLINE": "0",  # a failed attempt is spooled at once
    "RELAY_SPOOL_RETRY_MIN": "1",
    "RELAY_SPOOL_RETRY_MAX": "2",
    "RELAY_SPOOL_LEASE": "10",  # at least 2 x AHASEND_API_TIMEOUT (5 s)
}


def spool_counts(pg_cluster: PgCluster, url: str) -> dict[str, int]:
    """Rows of the shared spool by state."""
    rows = pg_cluster.psql(
        "SELECT state, count(*) FROM relay_spool GROUP BY state", url.rsplit("/", 1)[1]
    )
    return {state: int(n) for state, n in (line.split("|") for line in rows.splitlines())}


def check_exactly_once(requests: list[Recorded], acked: set[str]) -> None:
    """Every acknowledged subject accepted once: one Idempotency-Key per message for life,
    each key accepted once, nothing accepted that was not acknowledged."""
    keys_of: dict[str, set[str | None]] = {}
    for request in requests:
        keys_of.setdefault(request.json["subject"], set()).add(request.idempotency_key)
    assert all(len(keys) == 1 for keys in keys_of.values()), "a message changed its key"
    fresh = Counter(r.idempotency_key for r in requests if r.accepted)
    assert set(fresh.values()) == {1}, [k for k, n in fresh.items() if n > 1]
    delivered = {r.json["subject"] for r in requests if r.accepted}
    assert delivered == acked
    assert all(r.problems == [] for r in requests)


def test_api_outage_then_a_replica_killed_while_draining_loses_nothing(
    standin: StandIn, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """The API answers 503 while 300 messages arrive through the balancer: all are spooled
    in the shared database (250 Queued). The API recovers; while the replicas drain, one
    is SIGKILLed holding claims: the others send its messages when its lease ends. Every
    acknowledged message reaches the stand-in exactly once."""
    url = pg_cluster.database()
    total = 300
    standin.script(*[Scripted(503)] * 100_000)  # down until cleared
    with behind_haproxy(standin, tmp_path, RELAY_SPOOL_URL=url, **SHARED) as (balancer, replicas):
        replies = push(balancer.port, [f"Outage {i}" for i in range(total)], threads=20)
        acked = {s for s, (code, _) in replies.items() if code == 250}
        queued = {s for s, (_, text) in replies.items() if text.startswith("2.0.0 Queued")}
        assert acked == queued == set(replies), Counter(r for r in replies.values())
        assert spool_counts(pg_cluster, url) == {"queued": total}
        during = list(standin.requests)
        standin.clear()  # the API is back
        victim = replicas[1]
        wait_until(lambda: any(r.accepted for r in standin.requests), 20, "the first delivery")
        victim.kill()
        killed_at = time.monotonic()
        survivors = [r for r in replicas if r is not victim]
        wait_until(
            lambda: {r.json["subject"] for r in standin.accepted} >= acked,
            60, "every acknowledged message at the stand-in",
        )  # fmt: skip
        drained = time.monotonic() - killed_at
        time.sleep(1.0)  # a second delivery of anything would show up now
        assert all(r.running for r in survivors)
        counts = spool_counts(pg_cluster, url)
        logs = "".join(r.logs() for r in survivors)
    print(f"\noutage: {len(during)} failed attempts; drained {drained:.1f} s after the kill")
    assert counts == {"delivered": total}
    check_exactly_once(during + standin.requests, acked)
    # The survivors' own share takes ~4 s at 90/s; what came later waited for the dead
    # replica's claims to end (lease 10 s): they were taken over, not lost.
    late = [r for r in standin.accepted if r.received_at > killed_at + 6]
    assert late, "the killed replica held no claims: the takeover was not exercised"
    print(f"taken over from the killed replica after its lease: {len(late)}")
    assert "Traceback" not in logs
    assert PASSWORD not in logs
