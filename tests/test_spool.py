"""The SQLite spool: durability settings, the state machine, operator actions, stats."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.delivery.spool import FILENAME, Spool
from relay.errors import SpoolUnavailable
from tests.fakes import FakeTime


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def spool(tmp_path: Path, time: FakeTime) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", clock=time.clock)
    yield s
    s.close()


def add(spool: Spool, key: str = "k1", body: bytes = b'{"subject":"hi"}', **kw: float) -> int:
    return spool.add(
        body,
        key,
        mail_from="app@example.com",
        rcpt_tos=["a@example.org", "b@example.org"],
        error="UpstreamServerError: 503",
        first_retry=kw.get("first_retry", 30.0),
        max_age=kw.get("max_age", 3600.0),
    )


def test_file_is_wal_with_full_fsync_and_private(spool: Spool, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "spool" / FILENAME)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
    assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert (tmp_path / "spool").stat().st_mode & 0o777 == 0o700


def test_an_added_entry_is_visible_to_another_connection(
    spool: Spool, tmp_path: Path, time: FakeTime
) -> None:
    entry_id = add(spool)
    other = Spool(tmp_path / "spool", clock=time.clock)
    try:
        entry = other.get(entry_id)
    finally:
        other.close()
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


def test_the_same_key_is_stored_once(spool: Spool) -> None:
    assert add(spool, "k1") == add(spool, "k1")
    assert add(spool, "k2") != add(spool, "k1")
    assert len(spool.entries()) == 2


def test_due_returns_entries_whose_time_has_come_oldest_first(spool: Spool, time: FakeTime) -> None:
    late = add(spool, "late", first_retry=20)
    early = add(spool, "early", first_retry=10)
    assert spool.due(10) == []
    assert spool.next_due() == time.now + 10
    time.now += 15
    assert [e.id for e in spool.due(10)] == [early]
    time.now += 10
    assert [e.id for e in spool.due(10)] == [early, late]
    assert [e.id for e in spool.due(1)] == [early]


def test_state_machine(spool: Spool, time: FakeTime) -> None:
    entry_id = add(spool)
    spool.defer(entry_id, "UpstreamTimeout", time.now + 99)
    entry = spool.get(entry_id)
    assert entry is not None
    assert (entry.attempts, entry.last_error, entry.next_attempt) == (
        1,
        "UpstreamTimeout",
        time.now + 99,
    )
    spool.mark_delivered(entry_id, ["m-1", "m-2"])
    entry = spool.get(entry_id)
    assert entry is not None
    assert (entry.state, entry.attempts, entry.body, entry.message_ids) == (
        "delivered",
        2,
        None,
        ("m-1", "m-2"),
    )
    assert spool.next_due() is None


def test_dead_entries_keep_their_reason_and_can_be_requeued(spool: Spool, time: FakeTime) -> None:
    entry_id = add(spool, max_age=100)
    spool.kill(entry_id, "422 invalid from")
    dead = spool.get(entry_id)
    assert dead is not None
    assert (dead.state, dead.last_error, dead.attempts) == ("dead", "422 invalid from", 1)
    time.now += 500
    assert spool.retry(entry_id, max_age=1000) == 1
    again = spool.get(entry_id)
    assert again is not None
    assert (again.state, again.next_attempt, again.expires) == ("queued", time.now, time.now + 1000)


def test_retry_all_skips_delivered(spool: Spool, time: FakeTime) -> None:
    a, b, c = add(spool, "a"), add(spool, "b"), add(spool, "c")
    spool.mark_delivered(a, [])
    spool.kill(b, "x")
    assert spool.retry(None, max_age=10) == 2
    assert [e.id for e in spool.due(10)] == [b, c]
    assert spool.retry(a, max_age=10) == 0
    assert spool.retry(999, max_age=10) == 0


def test_delete(spool: Spool) -> None:
    entry_id = add(spool)
    assert spool.delete(entry_id)
    assert not spool.delete(entry_id)
    assert spool.get(entry_id) is None


def test_stats_and_purge(spool: Spool, time: FakeTime) -> None:
    assert spool.stats().queued == 0
    a = add(spool, "a")
    time.now += 60
    b, c = add(spool, "b"), add(spool, "c")
    spool.defer(b, "e", time.now)
    spool.defer(b, "e", time.now)
    spool.kill(c, "x")
    stats = spool.stats()
    assert (stats.queued, stats.dead, stats.delivered) == (2, 1, 0)
    assert stats.oldest_age == 60
    assert stats.max_attempts == 2
    spool.mark_delivered(a, [])
    time.now += 100
    assert spool.purge_delivered(time.now - 50) == 1
    assert spool.get(a) is None


def test_an_unusable_directory_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolUnavailable, match="cannot open spool"):
        Spool(blocker)


def test_a_file_that_is_not_a_database_is_reported(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(b"garbage" * 100)
    with pytest.raises(SpoolUnavailable):
        Spool(tmp_path)


def test_a_dead_entry_spooled_again_is_requeued(spool: Spool, time: FakeTime) -> None:
    entry_id = add(spool, "k1")
    spool.kill(entry_id, "expired")
    time.now += 10
    assert add(spool, "k1") == entry_id
    entry = spool.get(entry_id)
    assert entry is not None
    assert (entry.state, entry.next_attempt) == ("queued", time.now + 30)


def test_a_delivered_entry_spooled_again_stays_delivered(spool: Spool) -> None:
    entry_id = add(spool, "k1")
    spool.mark_delivered(entry_id, ["m"], "recipients refused by the API: x@y.z: bounced")
    assert add(spool, "k1") == entry_id
    entry = spool.get(entry_id)
    assert entry is not None
    assert entry.state == "delivered"
    assert entry.last_error == "recipients refused by the API: x@y.z: bounced"
