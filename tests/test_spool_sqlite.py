"""The SQLite spool backend's own properties: the file, its durability, schema migration."""

from __future__ import annotations

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


async def test_file_is_wal_with_full_fsync_and_private(spool: SqliteSpool, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "spool" / FILENAME)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
    assert (await spool.durability())["synchronous"] == 2  # FULL
    assert (tmp_path / "spool").stat().st_mode & 0o777 == 0o700


async def test_an_unusable_directory_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolUnavailable, match="cannot open spool"):
        SqliteSpool(blocker)


async def test_a_file_that_is_not_a_database_is_reported(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(b"garbage" * 100)
    with pytest.raises(SpoolUnavailable):
        SqliteSpool(tmp_path)


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
        assert entry.route == "default"
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


async def test_errors_name_the_file(spool: SqliteSpool) -> None:
    await spool.close()
    with pytest.raises(SpoolUnavailable, match=r"spool .*spool\.sqlite3"):
        await spool.stats()
