"""The SQLite spool: durability settings, the state machine, claims, operator actions, stats,
the schema migration."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.delivery.spool import FILENAME, SqliteSpool
from relay.delivery.spool.sqlite import SCHEMA_VERSION
from relay.errors import SpoolUnavailable
from tests.fakes import FakeTime


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def spool(tmp_path: Path, time: FakeTime) -> AsyncIterator[SqliteSpool]:
    s = SqliteSpool(tmp_path / "spool", clock=time.clock)
    yield s
    await s.close()


async def add(
    spool: SqliteSpool, key: str = "k1", body: bytes = b'{"subject":"hi"}', **kw: float
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


async def test_file_is_wal_with_full_fsync_and_private(spool: SqliteSpool, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "spool" / FILENAME)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
    assert (await spool.durability())["synchronous"] == 2  # FULL
    assert (tmp_path / "spool").stat().st_mode & 0o777 == 0o700


async def test_an_added_entry_is_visible_to_another_connection(
    spool: SqliteSpool, tmp_path: Path, time: FakeTime
) -> None:
    entry_id = await add(spool)
    other = SqliteSpool(tmp_path / "spool", clock=time.clock)
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


async def test_the_same_key_is_stored_once(spool: SqliteSpool) -> None:
    assert await add(spool, "k1") == await add(spool, "k1")
    assert await add(spool, "k2") != await add(spool, "k1")
    assert len(await spool.entries()) == 2


async def test_due_returns_entries_whose_time_has_come_oldest_first(
    spool: SqliteSpool, time: FakeTime
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


async def test_state_machine(spool: SqliteSpool, time: FakeTime) -> None:
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
    spool: SqliteSpool, time: FakeTime
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


async def test_retry_all_skips_delivered(spool: SqliteSpool, time: FakeTime) -> None:
    a, b, c = await add(spool, "a"), await add(spool, "b"), await add(spool, "c")
    await spool.mark_delivered(a, [])
    await spool.kill(b, "x")
    assert await spool.retry(None, max_age=10) == 2
    assert [e.id for e in await spool.claim(10, lease=0)] == [b, c]
    assert await spool.retry(a, max_age=10) == 0
    assert await spool.retry(999, max_age=10) == 0


async def test_delete(spool: SqliteSpool) -> None:
    entry_id = await add(spool)
    assert await spool.delete(entry_id)
    assert not await spool.delete(entry_id)
    assert await spool.get(entry_id) is None


async def test_stats_and_purge(spool: SqliteSpool, time: FakeTime) -> None:
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


async def test_an_unusable_directory_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolUnavailable, match="cannot open spool"):
        SqliteSpool(blocker)


async def test_a_file_that_is_not_a_database_is_reported(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(b"garbage" * 100)
    with pytest.raises(SpoolUnavailable):
        SqliteSpool(tmp_path)


async def test_a_dead_entry_spooled_again_is_requeued(spool: SqliteSpool, time: FakeTime) -> None:
    entry_id = await add(spool, "k1")
    await spool.kill(entry_id, "expired")
    time.now += 10
    assert await add(spool, "k1") == entry_id
    entry = await spool.get(entry_id)
    assert entry is not None
    assert (entry.state, entry.next_attempt) == ("queued", time.now + 30)


async def test_a_delivered_entry_spooled_again_stays_delivered(spool: SqliteSpool) -> None:
    entry_id = await add(spool, "k1")
    await spool.mark_delivered(entry_id, ["m"], "recipients refused by the API: x@y.z: bounced")
    assert await add(spool, "k1") == entry_id
    entry = await spool.get(entry_id)
    assert entry is not None
    assert entry.state == "delivered"
    assert entry.last_error == "recipients refused by the API: x@y.z: bounced"


async def test_a_claimed_entry_is_not_handed_out_again_until_its_lease_ends(
    spool: SqliteSpool, time: FakeTime
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


async def test_every_outcome_ends_the_claim(spool: SqliteSpool, time: FakeTime) -> None:
    a, b, c = [await add(spool, key, first_retry=0) for key in "abc"]
    assert len(await spool.claim(10, lease=600)) == 3
    await spool.defer(a, "UpstreamTimeout", time.now)
    await spool.mark_delivered(b, ["m"])
    await spool.kill(c, "422")
    assert [e.id for e in await spool.claim(10, lease=600)] == [a]  # deferred: due again
    claims = {e.id: e.claimed_until for e in await spool.entries()}
    assert claims == {a: time.now + 600, b: None, c: None}


async def test_retry_keeps_a_running_claim(spool: SqliteSpool, time: FakeTime) -> None:
    entry_id = await add(spool, first_retry=0)
    await spool.claim(10, lease=60)
    assert await spool.retry(entry_id, max_age=10) == 1
    assert await spool.claim(10, lease=60) == []
    entry = await spool.get(entry_id)
    assert entry is not None
    assert (entry.next_attempt, entry.claimed_until) == (time.now, time.now + 60)


async def test_concurrent_claims_from_two_connections_never_overlap(
    spool: SqliteSpool, tmp_path: Path, time: FakeTime
) -> None:
    ids = [await add(spool, f"k{i}", first_retry=0) for i in range(50)]
    other = SqliteSpool(tmp_path / "spool", clock=time.clock)
    try:
        rounds = await asyncio.gather(
            *(s.claim(7, lease=60) for _ in range(5) for s in (spool, other))
        )
    finally:
        await other.close()
    claimed = [e.id for entries in rounds for e in entries]
    assert sorted(claimed) == ids  # each exactly once


OLD_SCHEMA = """
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'delivered', 'dead')),
    mail_from TEXT NOT NULL, rcpt_tos TEXT NOT NULL, body BLOB, size INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL, updated REAL NOT NULL,
    next_attempt REAL NOT NULL, expires REAL NOT NULL, last_error TEXT, message_ids TEXT,
    bounced INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX messages_due ON messages (state, next_attempt);
INSERT INTO messages (idempotency_key, mail_from, rcpt_tos, body, size, attempts, created,
    updated, next_attempt, expires, last_error)
    VALUES ('old-key', 'app@example.com', '["a@example.org"]', X'7B7D', 2, 3, 1.0, 2.0,
    5.0, 9999999999.0, 'UpstreamTimeout');
"""


async def test_a_spool_written_by_an_older_relay_is_migrated(
    tmp_path: Path, time: FakeTime
) -> None:
    old = sqlite3.connect(tmp_path / FILENAME)
    old.executescript(OLD_SCHEMA)
    old.close()
    spool = SqliteSpool(tmp_path, clock=time.clock)
    try:
        [entry] = await spool.claim(10, lease=30)
        assert (entry.idempotency_key, entry.attempts, entry.body) == ("old-key", 3, b"{}")
        assert entry.claimed_until == time.now + 30
        assert await spool.claim(10, lease=30) == []
    finally:
        await spool.close()
    db = sqlite3.connect(tmp_path / FILENAME)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()
    again = SqliteSpool(tmp_path, clock=time.clock)  # an up-to-date file opens as it is
    await again.close()


async def test_a_spool_that_fails_after_opening_says_so(spool: SqliteSpool) -> None:
    await spool.close()
    with pytest.raises(SpoolUnavailable, match=r"spool .*spool\.sqlite3"):
        await spool.stats()
