"""The PostgreSQL spool's own properties, on a real private cluster (``tests.postgres``).

The shared contract runs in ``test_spool.py`` (both backends). Here: migrations under
concurrent start, claims across several replicas' pools, the lease across replicas, an
unreachable database (not fatal; ``SpoolUnavailable`` within the timeout; recovery by
itself; the events and the ``available`` flag), and the password never in a message.
"""

from __future__ import annotations

import asyncio
import time as wall
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import psycopg
import pytest
import structlog

from relay.delivery.spool import PostgresSpool
from relay.delivery.spool.pg_schema import ADVISORY_LOCK, SCHEMA_VERSION
from relay.errors import SpoolUnavailable
from tests.fakes import FakeTime
from tests.harness import free_port
from tests.postgres import PASSWORD, PgCluster, running_cluster


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def url(pg_cluster: PgCluster) -> str:
    return pg_cluster.database()


@pytest.fixture(scope="module")
def outage_cluster() -> Iterator[PgCluster]:
    """A cluster of its own, stopped and restarted by the tests (the shared one stays up)."""
    with running_cluster() as cluster:
        yield cluster


async def opened(url: str, time: FakeTime, **kw: float) -> PostgresSpool:
    spool = PostgresSpool(url, clock=time.clock, **kw)  # type: ignore[arg-type]
    await spool.open()
    return spool


@pytest.fixture
async def replicas(url: str, time: FakeTime) -> AsyncIterator[list[PostgresSpool]]:
    """Four spools on one database, each with its own pool: four replicas."""
    spools = [await opened(url, time) for _ in range(4)]
    yield spools
    for spool in spools:
        await spool.close()


async def add(spool: PostgresSpool, key: str, first_retry: float = 0.0) -> int:
    return await spool.add(
        b"{}", key, mail_from="app@example.com", rcpt_tos=["a@example.org"],
        error="UpstreamServerError: 503", first_retry=first_retry, max_age=3600,
    )  # fmt: skip


async def test_replicas_starting_together_migrate_once(
    pg_cluster: PgCluster, url: str, time: FakeTime
) -> None:
    spools = [PostgresSpool(url, clock=time.clock) for _ in range(8)]
    await asyncio.gather(*(s.open() for s in spools))
    try:
        assert all(s.available for s in spools)
        ids = await asyncio.gather(*(add(s, f"k{i}") for i, s in enumerate(spools)))
        assert len(set(ids)) == 8
    finally:
        await asyncio.gather(*(s.close() for s in spools))
    name = url.rsplit("/", 1)[1]
    versions = pg_cluster.psql("SELECT version FROM relay_schema_version ORDER BY 1", name)
    assert versions.splitlines() == [str(v) for v in range(1, SCHEMA_VERSION + 1)]


async def test_migration_waits_for_the_advisory_lock(
    pg_cluster: PgCluster, url: str, time: FakeTime
) -> None:
    """While another session holds the lock, a starting replica neither migrates nor fails."""
    holder = await psycopg.AsyncConnection.connect(url)
    await holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK,))
    spool = PostgresSpool(url, clock=time.clock, timeout=30.0)
    opening = asyncio.create_task(spool.open())
    await asyncio.sleep(1.0)
    assert not opening.done()  # queued behind the lock
    await holder.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK,))
    await asyncio.wait_for(opening, 10)
    await holder.close()
    assert spool.available
    assert await add(spool, "k") == 1
    await spool.close()


async def test_a_database_newer_than_this_relay_is_left_alone(
    pg_cluster: PgCluster, url: str, time: FakeTime
) -> None:
    first = await opened(url, time)
    await first.close()
    name = url.rsplit("/", 1)[1]
    pg_cluster.psql(
        f"INSERT INTO relay_schema_version (version) VALUES ({SCHEMA_VERSION + 1})", name
    )
    spool = await opened(url, time)
    assert await add(spool, "k") == 1
    await spool.close()


async def test_replicas_claiming_at_once_never_share_a_row(
    replicas: list[PostgresSpool],
) -> None:
    ids = [await add(replicas[0], f"k{i}") for i in range(200)]
    rounds = await asyncio.gather(*(s.claim(9, lease=60) for _ in range(8) for s in replicas))
    claimed = [e.id for entries in rounds for e in entries]
    assert len(claimed) == len(set(claimed)) == 200
    assert sorted(claimed) == ids


async def test_a_dead_replicas_claims_pass_to_another_when_the_lease_ends(
    replicas: list[PostgresSpool], time: FakeTime
) -> None:
    dying, survivor = replicas[0], replicas[1]
    entry_id = await add(dying, "k")
    assert [e.id for e in await dying.claim(10, lease=60)] == [entry_id]
    await dying.close()  # it holds the claim and is gone
    assert await survivor.claim(10, lease=60) == []
    time.now += 59.9
    assert await survivor.claim(10, lease=60) == []
    time.now += 0.1
    [entry] = await survivor.claim(10, lease=60)
    assert (entry.id, entry.claimed_until, entry.attempts) == (entry_id, time.now + 60, 0)


async def test_the_same_transaction_from_two_replicas_is_one_row(
    replicas: list[PostgresSpool],
) -> None:
    ids = await asyncio.gather(*(add(s, "same-key") for s in replicas))
    assert len(set(ids)) == 1
    assert len(await replicas[2].entries()) == 1


async def test_an_unreachable_database_at_start_is_waited_for(time: FakeTime) -> None:
    url = f"postgresql://relay:{PASSWORD}@127.0.0.1:{free_port()}/nowhere"
    with structlog.testing.capture_logs() as logs:
        spool = await opened(url, time, timeout=1.0)
        assert not spool.available
        started = wall.monotonic()
        with pytest.raises(SpoolUnavailable) as refused:
            await add(spool, "k")
        assert wall.monotonic() - started < 3.0  # within the timeout, not a hang
        await spool.close()
    message = str(refused.value)
    port = url.rsplit(":", 1)[1].split("/", 1)[0]
    # libpq's reason for the pool's failed attempts, not the pool's "timed out"
    reason = f'connection failed: connection to server at "127.0.0.1", port {port} failed: '
    reason += "Connection refused"
    assert message == f"spool postgresql://relay:***@127.0.0.1:{port}/nowhere: {reason}"
    assert spool.location == url.replace(PASSWORD, "***")
    assert [(e["event"], e["error"]) for e in logs] == [("spool_unavailable", reason)]
    assert PASSWORD not in repr(logs)


async def test_an_outage_is_survived_and_recovered_without_reopening(
    outage_cluster: PgCluster, time: FakeTime
) -> None:
    url = outage_cluster.database()
    changes: list[bool] = []
    spool = PostgresSpool(url, clock=time.clock, timeout=2.0, on_change=changes.append)
    await spool.open()
    first = await add(spool, "before")
    with structlog.testing.capture_logs() as logs:
        outage_cluster.stop()
        try:
            with pytest.raises(SpoolUnavailable):
                await add(spool, "during")
            assert not spool.available
        finally:
            outage_cluster.start()
        second = await eventually(lambda: add(spool, "after"))
    assert spool.available
    assert changes == [False, True]
    assert [e["event"] for e in logs if e["event"].startswith("spool_")] == [
        "spool_unavailable",
        "spool_recovered",
    ]
    assert [e.idempotency_key for e in await spool.entries()] == ["before", "after"]
    assert second > first
    await spool.close()


async def test_a_database_that_appears_later_is_migrated_then(
    outage_cluster: PgCluster, time: FakeTime
) -> None:
    url = outage_cluster.database()
    outage_cluster.stop()
    try:
        spool = await opened(url, time, timeout=1.0)
        assert not spool.available
    finally:
        outage_cluster.start()
    assert await eventually(lambda: add(spool, "k")) == 1
    name = url.rsplit("/", 1)[1]
    assert outage_cluster.psql("SELECT count(*) FROM relay_spool", name) == "1"
    await spool.close()


async def eventually(call: Callable[[], Awaitable[int]], within: float = 30.0) -> int:
    """``call()`` retried until it stops raising SpoolUnavailable (the pool reconnecting)."""
    deadline = wall.monotonic() + within
    while True:
        try:
            result: int = await call()
            return result
        except SpoolUnavailable:
            if wall.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
