"""The shared token bucket against a real PostgreSQL cluster (tests/postgres.py).

Several ``TokenStore``s on one database stand for several replicas: together they get the
account's burst and rate, not one each. A store that cannot reach the database paces at
``rate / replicas``, logs the change without the password, and goes back to the shared
bucket by itself when the database returns. Circuit-breaker probes take shared tokens.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time

import pytest
import structlog.testing

from relay.config import load_settings
from relay.delivery.circuit import BreakerSender, CircuitBreaker
from relay.delivery.pacing import PacedSender, most_sent
from relay.delivery.pacing_shared import SharedBuckets, TokenStore
from relay.delivery.retry import RetryingSender
from relay.errors import ConfigError, UpstreamUnreachable
from tests.fakes import ACCEPTED, FakeTime, ScriptedSender
from tests.harness import free_port
from tests.paths import REPO
from tests.postgres import PASSWORD, PgCluster

ACCOUNT = "5d2c6c1e-7a0a-4b8a-9d5e-3f1b2a4c6e80"


@pytest.fixture
def url(pg_cluster: PgCluster) -> str:
    return pg_cluster.database()


def tokens_left(pg_cluster: PgCluster, url: str) -> float:
    database = url.rsplit("/", 1)[1]
    return float(pg_cluster.psql("SELECT tokens FROM relay_api_bucket", database))


async def test_the_burst_is_shared_by_every_store_on_the_database(url: str) -> None:
    a, b = TokenStore(url), TokenStore(url)
    try:
        waits = [await a.take(ACCOUNT, 1.0, 5) for _ in range(3)]
        waits += [await b.take(ACCOUNT, 1.0, 5) for _ in range(3)]
    finally:
        await a.aclose()
        await b.aclose()
    assert waits[:5] == [0.0] * 5
    last = waits[5]
    assert last is not None
    assert 0.8 < last <= 1.0  # the sixth token is a second away at 1/s


async def test_debt_queues_takers_one_interval_apart(url: str) -> None:
    """At 2/s each taker in debt waits half a second more than the one before (less the
    few milliseconds of real time between the statements, which refill the bucket)."""
    store = TokenStore(url)
    try:
        waits = [await store.take(ACCOUNT, 2.0, 1) for _ in range(5)]
    finally:
        await store.aclose()
    assert waits[0] == 0.0
    debts = [w for w in waits[1:] if w is not None]
    assert len(debts) == 4
    gaps = [b - a for a, b in itertools.pairwise(debts)]
    assert gaps == pytest.approx([0.5] * 3, abs=0.05)


async def test_accounts_have_their_own_rows(pg_cluster: PgCluster, url: str) -> None:
    store = TokenStore(url)
    try:
        assert await store.take("acct-a", 1.0, 1) == 0.0
        assert await store.take("acct-b", 1.0, 1) == 0.0
        assert (await store.take("acct-a", 1.0, 1) or 0) > 0.9
    finally:
        await store.aclose()
    database = url.rsplit("/", 1)[1]
    assert pg_cluster.psql("SELECT count(*) FROM relay_api_bucket", database) == "2"


async def test_three_replicas_together_stay_under_the_aggregate_rate(url: str) -> None:
    """Three paced senders, each as fast as it can: the sends of all three, counted in any
    one-second window, never exceed rate + burst; the total rate is the account's."""
    rate, burst, per_replica = 40.0, 4, 40
    stores = [TokenStore(url) for _ in range(3)]
    sent: list[float] = []

    class Clocked(ScriptedSender):
        async def send(self, body: bytes, idempotency_key: str):  # type: ignore[no-untyped-def]
            sent.append(time.monotonic())
            return await super().send(body, idempotency_key)

    async def replica(store: TokenStore, n: int) -> None:
        bucket = SharedBuckets(store, rate, burst, replicas=3).for_account(ACCOUNT)
        paced = PacedSender(Clocked([ACCEPTED]), bucket, max_concurrency=8)
        await asyncio.gather(*(paced.send(b"{}", f"{n}-{i}") for i in range(per_replica)))

    started = time.monotonic()
    try:
        await asyncio.gather(*(replica(store, n) for n, store in enumerate(stores)))
    finally:
        for store in stores:
            await store.aclose()
    elapsed = time.monotonic() - started
    assert len(sent) == 3 * per_replica
    assert elapsed >= (3 * per_replica - burst) / rate * 0.95  # not 3x the rate
    # A send is at most one tick late (relay.delivery.pacing); +1: timer jitter at the edge.
    assert max_in_window(sent, 1.0) <= most_sent(1.0, rate, burst) + 1


def max_in_window(stamps: list[float], width: float) -> int:
    """The most ``stamps`` in any half-open window ``[t, t + width)``."""
    stamps = sorted(stamps)
    best, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamps[start] <= stamp - width:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_a_cancelled_wait_gives_the_token_back(pg_cluster: PgCluster, url: str) -> None:
    store = TokenStore(url)
    bucket = SharedBuckets(store, 1.0, 1, replicas=1).for_account(ACCOUNT)
    try:
        assert (await bucket.take()).wait == 0.0
        slot = await bucket.take()
        assert slot.wait > 0.9
        assert tokens_left(pg_cluster, url) == pytest.approx(-1.0, abs=0.01)
        slot.give_back()
    finally:
        await store.aclose()  # waits for the give-back
    assert tokens_left(pg_cluster, url) == pytest.approx(0.0, abs=0.05)


async def test_an_unreachable_database_paces_at_the_replicas_share() -> None:
    """Nothing listens at the URL: the store says so at once, the bucket paces at rate / 3,
    and the warning names the error but never the password."""
    url = f"postgresql://relay:{PASSWORD}@127.0.0.1:{free_port()}/nowhere"
    time_ = FakeTime()
    store = TokenStore(url, retry_interval=60.0, clock=time_.clock)
    bucket = SharedBuckets(store, 3.0, 6, replicas=3).for_account(ACCOUNT)
    try:
        with structlog.testing.capture_logs() as logged:
            waits = [(await bucket.take()).wait for _ in range(4)]
    finally:
        await store.aclose()
    assert waits[:2] == [0.0, 0.0]  # burst 6 / 3 replicas
    assert waits[2] == pytest.approx(1.0, abs=0.1)  # 3/s / 3 replicas = one a second
    assert waits[3] == pytest.approx(2.0, abs=0.1)
    assert not store.reachable
    events = [e for e in logged if e["event"] == "pacing_shared_unavailable"]
    assert len(events) == 1, logged  # logged once, not per call
    assert events[0]["error"] == "OperationalError"
    assert events[0]["reason"].startswith("connection failed: connection to server at")
    assert events[0]["reason"].endswith("Connection refused")  # libpq's own words
    assert PASSWORD not in repr(logged)


async def test_a_stopped_database_falls_back_then_recovers_by_itself(
    pg_cluster: PgCluster, url: str
) -> None:
    store = TokenStore(url, timeout=1.0, retry_interval=0.2)
    bucket = SharedBuckets(store, 50.0, 10, replicas=2).for_account(ACCOUNT)
    try:
        assert (await bucket.take()).wait == 0.0
        assert store.reachable
        pg_cluster.stop()
        try:
            with structlog.testing.capture_logs() as logged:
                began = time.monotonic()
                await bucket.take()
                assert time.monotonic() - began < 1.5  # bounded by the statement timeout
                assert not store.reachable
        finally:
            pg_cluster.start()
        await asyncio.sleep(0.3)  # past retry_interval
        with structlog.testing.capture_logs() as restored:
            assert (await bucket.take()).wait == 0.0
        assert store.reachable
    finally:
        await store.aclose()
    assert [e["event"] for e in logged] == ["pacing_shared_unavailable"]
    assert [e["event"] for e in restored] == ["pacing_shared_restored"]
    # refilled to the burst (10) during the outage, then one shared take
    assert tokens_left(pg_cluster, url) == pytest.approx(9.0, abs=0.5)


async def test_circuit_breaker_probes_take_shared_tokens(pg_cluster: PgCluster, url: str) -> None:
    """The route's order (retrying → breaker → paced): with the breaker open, the probe it
    lets through is paced by the shared bucket like any other call."""
    store = TokenStore(url)
    bucket = SharedBuckets(store, 0.001, 10, replicas=1).for_account(ACCOUNT)  # no refill
    api = ScriptedSender([UpstreamUnreachable("down")] * 3 + [ACCEPTED])
    breaker = CircuitBreaker(probe_interval=0.05)
    guarded = BreakerSender(PacedSender(api, bucket, max_concurrency=4), breaker)
    route = RetryingSender(guarded, deadline=0.0, breaker=breaker)
    try:
        for i in range(3):
            with pytest.raises(UpstreamUnreachable):
                await route.send(b"{}", f"k{i}")
        assert breaker.is_open
        assert tokens_left(pg_cluster, url) == pytest.approx(7.0, abs=0.01)
        with pytest.raises(UpstreamUnreachable, match="circuit open"):
            await route.send(b"{}", "refused")  # no probe due yet: no call, no token
        assert tokens_left(pg_cluster, url) == pytest.approx(7.0, abs=0.01)
        await asyncio.sleep(0.06)
        assert await route.send(b"{}", "probe") == ACCEPTED
    finally:
        await store.aclose()
    assert not breaker.is_open
    assert api.keys == ["k0", "k1", "k2", "probe"]
    assert tokens_left(pg_cluster, url) == pytest.approx(6.0, abs=0.01)


def test_replicas_must_be_positive() -> None:
    with pytest.raises(ValueError, match="replicas"):
        SharedBuckets(TokenStore("postgresql://x@127.0.0.1:1/x"), 1.0, 1, replicas=0)


def test_relay_replicas_below_one_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"^RELAY_REPLICAS: Input should be greater than or equal to 1$"
    ):
        load_settings(environ={"RELAY_DRY_RUN": "true", "RELAY_REPLICAS": "0"})
    assert load_settings(environ={"RELAY_DRY_RUN": "true"}).relay_replicas == 1


def test_the_bench_measures_takes_on_a_given_database(pg_cluster: PgCluster) -> None:
    """``python -m bench.pacing_shared`` (smoke: tiny counts, no figure asserted)."""
    url = pg_cluster.database()
    done = subprocess.run(
        [sys.executable, "-m", "bench.pacing_shared", "--url", url, "--takers", "2",
         "--takes", "20"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["1", "3"]
    assert PASSWORD not in done.stdout + done.stderr
    assert pg_cluster.psql("SELECT count(*) FROM relay_api_bucket", url.rsplit("/", 1)[1]) == "1"
