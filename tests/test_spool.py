"""The spool contract (``relay.delivery.spool.base``), run against every backend.

The state machine, claims and leases, operator actions and stats, through the
``SpoolBackend`` methods only. Each backend is one ``connect`` parameter: a factory that
opens another connection to the test's (fresh, empty) store, on the test's fake clock.
SQLite's own properties (file, durability, migration) are in ``test_spool_sqlite.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from relay.delivery.spool import PostgresSpool, SpoolBackend, SqliteSpool
from relay.errors import SpoolUnavailable
from tests.fakes import FakeTime
from tests.postgres import PgCluster

Connect = Callable[[], Awaitable[SpoolBackend]]


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture(params=["sqlite", "postgres"])
def connect(request: pytest.FixtureRequest, tmp_path: Path, time: FakeTime) -> Connect:
    """Opens a connection to this test's store; a new backend adds its parameter here.

    PostgreSQL: a fresh database of the private cluster (``tests.postgres``) per test.
    """

    async def sqlite() -> SpoolBackend:
        return SqliteSpool(tmp_path / "spool", clock=time.clock)

    if request.param == "sqlite":
        return sqlite
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    url = cluster.database()

    async def postgres() -> SpoolBackend:
        spool = PostgresSpool(url, clock=time.clock)
        await spool.open()
        return spool

    return postgres


@pytest.fixture
async def spool(connect: Connect) -> AsyncIterator[SpoolBackend]:
    s = await connect()
    yield s
    await s.close()


async def add(
    spool: SpoolBackend, key: str = "k1", body: bytes = b'{"subject":"hi"}', **kw: float
) -> int:
    return await spool.add(
        body,
        key,
        mail_from="app@example.com",
        rcpt_tos=["a@example.org", "b@example.org"],
        error="UpstreamServerError: 503",
        first_retry=kw.get("first_retry", 30.0),
        max_age=kw.get("max_age", 3600.0),
    )


async def test_an_added_entry_is_visible_to_another_connection(
    spool: SpoolBackend, connect: Connect, time: FakeTime
) -> None:
    entry_id = await add(spool)
    other = await connect()
    try:
        entry = await other.get(entry_id)
    finally:
        await other.close()
    assert entry is not None
    assert entry.body == b'{"subject":"hi"}'
    assert entry.idempotency_key == "k1"
    assert entry.rcpt_tos == ("a@example.org", "b@example.org")
    assert (entry.state, entry.attempts, entry.last_error) == (
        "queued",
        0,
        "UpstreamServerError: 503",
    )
    assert entry.next_attempt == time.now + 30
    assert entry.expires == time.now + 3600


async def test_the_same_key_is_stored_once(spool: SpoolBackend) -> None:
    assert await add(spool, "k1") == await add(spool, "k1")
    assert await add(spool, "k2") != await add(spool, "k1")
    assert len(await spool.entries()) == 2


async def test_due_returns_entries_whose_time_has_come_oldest_first(
    spool: SpoolBackend, time: FakeTime
) -> None:
    late = await add(spool, "late", first_retry=20)
    early = await add(spool, "early", first_retry=10)
    assert await spool.claim(10, lease=0) == []
    assert await spool.next_due() == time.now + 10
    time.now += 15
    assert [e.id for e in await spool.claim(10, lease=0)] == [early]
    time.now += 10
    assert [e.id for e in await spool.claim(10, lease=0)] == [early, late]
    assert [e.id for e in await spool.claim(1, lease=0)] == [early]


async def test_state_machine(spool: SpoolBackend, time: FakeTime) -> None:
    entry_id = await add(spool)
    await spool.defer(entry_id, "UpstreamTimeout", time.now + 99)
    entry = await spool.get(entry_id)
    assert entry is not None
    assert (entry.attempts, entry.last_error, entry.next_attempt) == (
        1,
        "UpstreamTimeout",
        time.now + 99,
    )
    await spool.mark_delivered(entry_id, ["m-1", "m-2"])
    entry = await spool.get(entry_id)
    assert entry is not None
    assert (entry.state, entry.attempts, entry.body, entry.message_ids) == (
        "delivered",
        2,
        None,
        ("m-1", "m-2"),
    )
    assert await spool.next_due() is None


async def test_dead_entries_keep_their_reason_and_can_be_requeued(
    spool: SpoolBackend, time: FakeTime
) -> None:
    entry_id = await add(spool, max_age=100)
    await spool.kill(entry_id, "422 invalid from")
    dead = await spool.get(entry_id)
    assert dead is not None
    assert (dead.state, dead.last_error, dead.attempts) == ("dead", "422 invalid from", 1)
    time.now += 500
    assert await spool.retry(entry_id, max_age=1000) == 1
    again = await spool.get(entry_id)
    assert again is not None
    assert (again.state, again.next_attempt, again.expires) == ("queued", time.now, time.now + 1000)


async def test_retry_all_skips_delivered(spool: SpoolBackend, time: FakeTime) -> None:
    a, b, c = await add(spool, "a"), await add(spool, "b"), await add(spool, "c")
    await spool.mark_delivered(a, [])
    await spool.kill(b, "x")
    assert await spool.retry(None, max_age=10) == 2
    assert [e.id for e in await spool.claim(10, lease=0)] == [b, c]
    assert await spool.retry(a, max_age=10) == 0
    assert await spool.retry(999, max_age=10) == 0


async def test_delete(spool: SpoolBackend) -> None:
    entry_id = await add(spool)
    assert await spool.delete(entry_id)
    assert not await spool.delete(entry_id)
    assert await spool.get(entry_id) is None


async def test_stats_and_purge(spool: SpoolBackend, time: FakeTime) -> None:
    assert (await spool.stats()).queued == 0
    a = await add(spool, "a")
    time.now += 60
    b, c = await add(spool, "b"), await add(spool, "c")
    await spool.defer(b, "e", time.now)
    await spool.defer(b, "e", time.now)
    await spool.kill(c, "x")
    stats = await spool.stats()
    assert (stats.queued, stats.dead, stats.delivered) == (2, 1, 0)
    assert stats.oldest_age == 60
    assert stats.max_attempts == 2
    await spool.mark_delivered(a, [])
    time.now += 100
    assert await spool.purge_delivered(time.now - 50) == 1
    assert await spool.get(a) is None


async def test_a_dead_entry_spooled_again_is_requeued(spool: SpoolBackend, time: FakeTime) -> None:
    entry_id = await add(spool, "k1")
    await spool.kill(entry_id, "expired")
    time.now += 10
    assert await add(spool, "k1") == entry_id
    entry = await spool.get(entry_id)
    assert entry is not None
    assert (entry.state, entry.next_attempt) == ("queued", time.now + 30)


async def test_a_delivered_entry_spooled_again_stays_delivered(spool: SpoolBackend) -> None:
    entry_id = await add(spool, "k1")
    await spool.mark_delivered(entry_id, ["m"], "recipients refused by the API: x@y.z: bounced")
    assert await add(spool, "k1") == entry_id
    entry = await spool.get(entry_id)
    assert entry is not None
    assert entry.state == "delivered"
    assert entry.last_error == "recipients refused by the API: x@y.z: bounced"


async def test_a_claimed_entry_is_not_handed_out_again_until_its_lease_ends(
    spool: SpoolBackend, time: FakeTime
) -> None:
    a, b = await add(spool, "a", first_retry=0), await add(spool, "b", first_retry=0)
    [first] = await spool.claim(1, lease=60)
    assert (first.id, first.claimed_until, first.body) == (a, time.now + 60, b'{"subject":"hi"}')
    assert [e.id for e in await spool.claim(10, lease=60)] == [b]
    assert await spool.claim(10, lease=60) == []
    assert await spool.next_due() == time.now + 60  # claimable again when the lease ends
    time.now += 59
    assert await spool.claim(10, lease=60) == []
    time.now += 1
    assert [e.id for e in await spool.claim(10, lease=60)] == [a, b]  # the worker died


async def test_every_outcome_ends_the_claim(spool: SpoolBackend, time: FakeTime) -> None:
    a, b, c = [await add(spool, key, first_retry=0) for key in "abc"]
    assert len(await spool.claim(10, lease=600)) == 3
    await spool.defer(a, "UpstreamTimeout", time.now)
    await spool.mark_delivered(b, ["m"])
    await spool.kill(c, "422")
    assert [e.id for e in await spool.claim(10, lease=600)] == [a]  # deferred: due again
    claims = {e.id: e.claimed_until for e in await spool.entries()}
    assert claims == {a: time.now + 600, b: None, c: None}


async def test_retry_keeps_a_running_claim(spool: SpoolBackend, time: FakeTime) -> None:
    entry_id = await add(spool, first_retry=0)
    await spool.claim(10, lease=60)
    assert await spool.retry(entry_id, max_age=10) == 1
    assert await spool.claim(10, lease=60) == []
    entry = await spool.get(entry_id)
    assert entry is not None
    assert (entry.next_attempt, entry.claimed_until) == (time.now, time.now + 60)


async def test_concurrent_claims_from_two_connections_never_overlap(
    spool: SpoolBackend, connect: Connect
) -> None:
    ids = [await add(spool, f"k{i}", first_retry=0) for i in range(50)]
    other = await connect()
    try:
        rounds = await asyncio.gather(
            *(s.claim(7, lease=60) for _ in range(5) for s in (spool, other))
        )
    finally:
        await other.close()
    claimed = [e.id for entries in rounds for e in entries]
    assert sorted(claimed) == ids  # each exactly once


async def test_a_spool_that_fails_after_opening_says_so(spool: SpoolBackend) -> None:
    await spool.close()
    with pytest.raises(SpoolUnavailable):
        await spool.stats()
