"""High availability, end to end: three relay processes behind the example HAProxy.

Real parts only: ``python -m relay`` processes configured by their environment, Debian's
``haproxy`` running ``examples/haproxy/haproxy.cfg`` (its addresses rewritten to
loopback: ``tests/ha.py``), the private PostgreSQL cluster (``tests/postgres.py``) as the
shared database, and the stand-in AhaSend API, which counts requests by Idempotency-Key.

- PROXY protocol: the replicas see the application's address, not the balancer's.
- Aggregate pacing: three replicas at ``RELAY_API_RATE=30`` together send 30/s; with the
  database stopped, each falls back to 30 / ``RELAY_REPLICAS`` (measured: with
  ``RELAY_REPLICAS=1`` instead, the busiest second had 98 requests).
- An API outage while 300 messages arrive, then a replica SIGKILLed while the others
  drain: every 250 reaches the stand-in exactly once (by Idempotency-Key), none lost.
- PostgreSQL stopped for 10 s mid-load: no 250 without a stored row, 451 4.3.0 for mail
  that needed the spool, the balancer keeps every replica, recovery without a restart.

Slow (processes, real timing): marked ``ha``; about a minute in all.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.delivery.pacing import most_sent
from tests.ha import (
    CLIENT,
    EXAMPLE,
    STRANGER,
    Replica,
    behind_haproxy,
    haproxy_config,
    send_one,
    smtp_from,
)
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


@pytest.mark.parametrize("proxy", ["v2", "v1"])
def test_replicas_behind_haproxy_see_the_real_client(
    standin: StandIn, tmp_path: Path, proxy: str
) -> None:
    """Through the balancer the PROXY header (binary v2 or text v1) names the application
    (allowed) or a stranger (refused, 554 5.7.1); a replica refuses a direct connection
    from an untrusted peer."""
    with behind_haproxy(standin, tmp_path, proxy=proxy, RELAY_LOG_LEVEL="debug") as (
        balancer,
        replicas,
    ):
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
    # (The start-up probe, which connects and closes at once, may log one with no address.)
    untrusted = [e["client"] for e in events(logs[0], "proxy_peer_untrusted")]
    assert [c for c in untrusted if c not in (None, "None")] == [CLIENT]


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


def paced_replicas(url: str, rate: int, burst: int) -> dict[str, str]:
    """The environment of three replicas sharing ``url`` and the account's ``rate``/``burst``."""
    return {
        "RELAY_SPOOL_URL": url,
        "RELAY_API_RATE": str(rate),
        "RELAY_API_BURST": str(burst),
        "RELAY_REPLICAS": "3",
        "RELAY_RETRY_DEADLINE": "30",
    }


def test_three_replicas_pace_at_the_accounts_rate_together(
    standin: StandIn, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """RELAY_API_RATE=30, RELAY_API_BURST=10 on each of three replicas sharing one
    database: 300 messages through the balancer reach the stand-in at 30/s in aggregate
    (not 90/s), never more than rate * (1 + tick) + burst in any one-second window (a send
    is at most one pacing tick late)."""
    rate, burst, total = 30, 10, 300
    env = paced_replicas(pg_cluster.database(), rate, burst)
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
    assert busiest <= most_sent(1.0, rate, burst) + 1  # +1: the edge of a window
    assert spread >= (total - burst) / rate * 0.9  # 30/s together, not 90/s
    used = [sum(1 for e in events(log, "session") if e.get("transactions")) for log in logs]
    assert all(n > 0 for n in used), used  # all three replicas took mail
    for log in logs:
        assert not events(log, "pacing_shared_unavailable")
        assert PASSWORD not in log


def test_without_the_database_each_replica_paces_at_its_share(
    standin: StandIn, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """PostgreSQL stopped before the load: the three replicas, RELAY_REPLICAS=3, fall back
    to RELAY_API_RATE / 3 each, so together they still stay near the account's rate (the
    API path works without the spool) instead of sending at three times it."""
    rate, burst, total = 30, 3, 150
    env = paced_replicas(pg_cluster.database(), rate, burst)
    with behind_haproxy(standin, tmp_path, **env) as (balancer, replicas):
        pg_cluster.stop()
        try:
            replies = push(balancer.port, [f"Alone {i}" for i in range(total)], threads=30)
            gauges = [metric(r, "ahasend_relay_pacing_shared") for r in replicas]
        finally:
            pg_cluster.start()
        logs = [r.logs() for r in replicas]
    assert Counter(code for code, _ in replies.values()) == {250: total}
    stamps = [r.received_at for r in standin.accepted]
    assert len(stamps) == total
    busiest = max_in_window(stamps)
    spread = max(stamps) - min(stamps)
    print(f"\nwithout the database: {total} spread over {spread:.1f} s, busiest second {busiest}")
    # Each replica's share: 10/s, burst 1. Three shares: 30/s, burst 3, each send at most
    # one pacing tick late (+1: window edge).
    assert busiest <= most_sent(1.0, rate, burst) + 1
    assert spread >= (total - burst) / rate * 0.9
    assert all(events(log, "pacing_shared_unavailable") for log in logs)
    assert gauges == [0.0, 0.0, 0.0]


def metric(replica: Replica, name: str) -> float:
    """One sample of ``replica``'s /metrics."""
    url = f"http://127.0.0.1:{replica.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


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


def claimed(pg_cluster: PgCluster, url: str) -> int:
    """Queued rows some replica holds a lease on right now."""
    sql = (
        "SELECT count(*) FROM relay_spool WHERE state = 'queued'"
        " AND claimed_until > extract(epoch FROM now())"
    )
    return int(pg_cluster.psql(sql, url.rsplit("/", 1)[1]))


def test_api_outage_then_a_replica_killed_while_draining_loses_nothing(
    standin: StandIn, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """The API answers 503 while 300 messages arrive through the balancer: all are spooled
    in the shared database (250 Queued). The API recovers but answers slowly; once every
    replica holds a batch of claims in flight, one is SIGKILLed. Its requests still reach
    the API; when its lease ends a survivor sends those rows again with the same keys and
    the API answers from its idempotency store. Every acknowledged message is accepted
    exactly once."""
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
        standin.delay = 1.5  # back, but slow: every worker's batch stays in flight a while
        standin.clear()
        # A batch is at most RELAY_API_CONCURRENCY (32) rows: 65 claimed means all three.
        wait_until(lambda: claimed(pg_cluster, url) >= 65, 20, "claims on every replica")
        victim = replicas[1]
        victim.kill()
        standin.delay = 0.0
        killed_at = time.monotonic()
        # The survivors drain their share in ~4 s at 90/s; what is still queued at 6 s is
        # the dead replica's, held by its claims until their lease (10 s) ends.
        time.sleep(6)
        stranded = spool_counts(pg_cluster, url).get("queued", 0)
        survivors = [r for r in replicas if r is not victim]
        wait_until(
            lambda: {r.json["subject"] for r in standin.accepted} >= acked,
            60, "every acknowledged message at the stand-in",
        )  # fmt: skip
        # The dead replica's in-flight requests reached the API; its rows are still queued
        # under its claims until the lease ends and a survivor takes them over.
        wait_until(
            lambda: spool_counts(pg_cluster, url) == {"delivered": total}, 60, "an empty queue"
        )
        drained = time.monotonic() - killed_at
        time.sleep(1.0)  # a second delivery of anything would show up now
        assert all(r.running for r in survivors)
        counts = spool_counts(pg_cluster, url)
        logs = "".join(r.logs() for r in survivors)
    print(f"\noutage: {len(during)} failed attempts; drained {drained:.1f} s after the kill")
    assert counts == {"delivered": total}
    check_exactly_once(during + standin.requests, acked)
    assert stranded > 0, "the killed replica held no claims: the takeover was not exercised"
    # Those of its requests that were in flight at the kill had reached the API: sent again
    # by a survivor, they were answered from the idempotency store (replayed, not resent).
    replayed = [r for r in standin.requests if r.replayed]
    assert all(r.received_at > killed_at + 5 for r in replayed)  # only after the lease
    print(f"taken over after the lease: {stranded} rows, {len(replayed)} answered as replays")
    assert "Traceback" not in logs
    assert PASSWORD not in logs


class Load:
    """``threads`` SMTP clients sending numbered messages through ``port`` until stopped;
    each reply kept with the time it came."""

    def __init__(self, port: int, threads: int, pause: float) -> None:
        self.replies: dict[str, tuple[int, str, float]] = {}
        self._port, self._pause = port, pause
        self._stop = threading.Event()
        self._numbers = iter(range(1_000_000))
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                subject = f"Load {next(self._numbers)}"
            code, text = send_one(self._port, subject)
            with self._lock:
                self.replies[subject] = (code, text, time.monotonic())
            time.sleep(self._pause)


def test_database_stopped_mid_load_never_gives_a_250_without_a_stored_row(
    standin: StandIn, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    """One API request in three fails (those need the spool) while PostgreSQL is stopped
    for 10 s in the middle of the load. Meanwhile mail the API takes still gets 250, mail
    that needs the spool gets 451 4.3.0 and is never sent; afterwards the same processes
    spool again. Every 250 reaches the stand-in exactly once."""
    url = pg_cluster.database()
    standin.script(*[Scripted(503) if i % 3 == 0 else Scripted(202) for i in range(30_000)])
    with behind_haproxy(standin, tmp_path, RELAY_SPOOL_URL=url, **SHARED) as (balancer, replicas):
        pids = [r.process.pid for r in replicas if r.process is not None]
        with Load(balancer.port, threads=4, pause=0.1) as load:
            time.sleep(3)
            pg_cluster.stop()
            down = time.monotonic()
            time.sleep(10)
            pg_cluster.start()
            up = time.monotonic()
            time.sleep(4)
        during = list(standin.requests)
        standin.clear()  # the API is healthy from now on: the spool drains
        replies = dict(load.replies)
        acked = {s for s, (code, _, _) in replies.items() if code == 250}
        wait_until(
            lambda: {r.json["subject"] for r in standin.accepted + during if r.accepted} >= acked,
            60, "every acknowledged message at the stand-in",
        )  # fmt: skip
        time.sleep(1.0)
        assert [r.process.pid for r in replicas if r.running and r.process] == pids
        counts = spool_counts(pg_cluster, url)
        logs = [r.logs() for r in replicas]
        checks = balancer.log.read_text()
    # /readyz stayed 200 (the API was reachable): the balancer never took a replica out.
    assert "is DOWN" not in checks, checks[-2000:]
    refused = {s for s, (code, _, _) in replies.items() if code != 250}
    outcomes = Counter((code, text) for code, text, _ in replies.values() if code != 250)
    assert set(outcomes) <= {(451, "4.3.0 Spool unavailable, try again later")}, outcomes
    assert refused, "no message needed the spool while the database was down"
    while_down = [(c, t) for c, t, at in replies.values() if down + 1 < at < up]
    assert any(c == 250 for c, _ in while_down), "the API path stopped with the database"
    after = [t for c, t, at in replies.values() if at > up + 2 and c == 250]
    assert any(t.startswith("2.0.0 Queued for delivery") for t in after), "no spooling after"
    print(
        f"\ndatabase down 10 s: {len(replies)} messages, {len(acked)} got 250 "
        f"({sum(1 for c, _ in while_down if c == 250)} while down), {len(refused)} got 451"
    )
    assert "queued" not in counts
    check_exactly_once(during + standin.requests, acked)
    assert not acked & refused
    for log in logs:
        assert PASSWORD not in log
    assert any(events(log, "pacing_shared_unavailable") for log in logs)
    assert any(events(log, "pacing_shared_restored") for log in logs)


def test_the_config_generator_follows_the_example() -> None:
    """The rewrite touches the bind and server lines only, and refuses an example it
    does not recognise (so the example cannot drift away from what the tests run)."""
    example = EXAMPLE.read_text()
    generated = haproxy_config(example, 2600, [(2701, 9701), (2702, 9702), (2703, 9703)])
    changed = [
        (a, b) for a, b in zip(example.splitlines(), generated.splitlines(), strict=True) if a != b
    ]
    assert [b.strip() for _, b in changed] == [
        "bind 127.0.0.1:2600",
        "server relay1 127.0.0.1:2701 port 9701",
        "server relay2 127.0.0.1:2702 port 9702",
        "server relay3 127.0.0.1:2703 port 9703",
    ]
    v1 = haproxy_config(example, 2600, [(1, 2)] * 3, proxy="v1")
    assert "send-proxy-v2" not in v1
    assert " send-proxy" in v1
    with pytest.raises(ValueError, match="servers"):
        haproxy_config(example, 2600, [(1, 2)] * 2)
    with pytest.raises(ValueError, match="bind"):
        haproxy_config(example.replace("bind :2525", "bind :25 :26"), 2600, [(1, 2)] * 3)
