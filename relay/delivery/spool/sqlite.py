"""The SQLite spool backend: one file, ``RELAY_SPOOL_DIR/spool.sqlite3``.

The file is in WAL mode with ``synchronous=FULL``. Why SQLite rather than one file per
message:

- every change is one atomic transaction, fsync'd to the WAL before ``commit`` returns,
  so "written" really means "survives SIGKILL and power loss" without hand-rolled
  write-temp/fsync/rename/fsync-directory sequences;
- WAL lets the ``queue`` tools read and change the spool while the daemon runs;
- the due-message scan, depth and oldest-age are indexed queries, not directory walks.

Each row is one API request (see ``relay.delivery.spool.base`` for the contract). The
work is synchronous, on one connection behind a lock, run in a worker thread
(``asyncio.to_thread``) so the event loop never waits for a disk. A claim is one
``UPDATE ... RETURNING`` statement, hence atomic also against other processes.

Schema versions (``PRAGMA user_version``): 0/1 the first layout; 2 adds
``claimed_until``; 3 adds ``route`` (the tenant's name; ``default`` for older rows).
Opening an older file migrates it in place, once, under SQLite's write lock (two
processes opening it together migrate it once).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from relay.delivery.spool.base import SpoolEntry, SpoolStats, State
from relay.errors import SpoolUnavailable

__all__ = ["FILENAME", "SCHEMA_VERSION", "SqliteSpool"]

FILENAME = "spool.sqlite3"
SCHEMA_VERSION = 3
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'delivered', 'dead')),
    mail_from TEXT NOT NULL,
    rcpt_tos TEXT NOT NULL,
    body BLOB,
    size INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    next_attempt REAL NOT NULL,
    expires REAL NOT NULL,
    last_error TEXT,
    message_ids TEXT,
    bounced INTEGER NOT NULL DEFAULT 0,
    claimed_until REAL,
    route TEXT NOT NULL DEFAULT 'default'
);
CREATE INDEX IF NOT EXISTS messages_due ON messages (state, next_attempt);
"""
_COLUMNS = (
    "id, idempotency_key, state, mail_from, rcpt_tos, size, attempts, created, updated,"
    " next_attempt, expires, last_error, message_ids, bounced, claimed_until, route"
)
_RELEASE = "claimed_until = NULL"


class SqliteSpool:
    """The spool file in ``directory`` (created, mode 0700, if missing). A ``SpoolBackend``.

    Opening is synchronous and raises ``SpoolUnavailable`` when the directory or the file
    is unusable; ``clock`` is the wall clock every time is read from.
    """

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = directory / FILENAME
        self._clock = clock
        self._lock = threading.Lock()
        self._available = True
        try:
            self._db = _open(directory, self.path)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolUnavailable(f"cannot open spool {self.path}: {exc}") from exc

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def available(self) -> bool:
        return self._available

    async def close(self) -> None:
        await self._run(lambda db: db.close())

    async def durability(self) -> dict[str, Any]:
        """The connection's ``journal_mode`` and ``synchronous`` pragmas (2 is FULL)."""
        rows = await self._run(
            lambda db: [db.execute(f"PRAGMA {name}").fetchone()[0] for name in _DURABILITY]
        )
        return dict(zip(_DURABILITY, rows, strict=True))

    # -- the dispatcher's side ---------------------------------------------------------
    async def add(
        self,
        body: bytes,
        idempotency_key: str,
        *,
        mail_from: str,
        rcpt_tos: Sequence[str],
        error: str,
        first_retry: float,
        max_age: float,
        route: str = "default",
    ) -> int:
        now = self._clock()
        values = (idempotency_key, mail_from, json.dumps(list(rcpt_tos)), body, len(body),
                  now, now, now + first_retry, now + max_age, error, route)  # fmt: skip

        def insert(db: sqlite3.Connection) -> int:
            db.execute(
                "INSERT INTO messages (idempotency_key, mail_from, rcpt_tos, body, size,"
                " created, updated, next_attempt, expires, last_error, route)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (idempotency_key) DO UPDATE SET state = 'queued',"
                " body = excluded.body, updated = excluded.updated,"
                " next_attempt = excluded.next_attempt, expires = excluded.expires,"
                " last_error = excluded.last_error, claimed_until = NULL"
                " WHERE messages.state = 'dead'",
                values,
            )
            row = db.execute(
                "SELECT id FROM messages WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
            return int(row[0])

        return await self._run(insert)

    # -- the worker's side -------------------------------------------------------------
    async def claim(self, limit: int, lease: float) -> list[SpoolEntry]:
        now = self._clock()
        rows = await self._fetch(
            "UPDATE messages SET claimed_until = :until WHERE id IN (SELECT id FROM messages"  # noqa: S608
            " WHERE state = 'queued' AND next_attempt <= :now"
            " AND (claimed_until IS NULL OR claimed_until <= :now)"
            " ORDER BY next_attempt, id LIMIT :limit)"
            f" RETURNING {_COLUMNS}, body",
            {"until": now + lease, "now": now, "limit": limit},
        )
        entries = [_entry(row[:-1], body=row[-1]) for row in rows]
        return sorted(entries, key=lambda e: (e.next_attempt, e.id))

    async def next_due(self) -> float | None:
        [(due,)] = await self._fetch(
            "SELECT MIN(MAX(next_attempt, COALESCE(claimed_until, next_attempt)))"
            " FROM messages WHERE state = 'queued'"
        )
        return None if due is None else float(due)

    async def mark_delivered(
        self, entry_id: int, message_ids: Sequence[str], note: str | None = None
    ) -> None:
        await self._update(
            entry_id,
            f"state = 'delivered', body = NULL, attempts = attempts + 1, message_ids = ?,"
            f" last_error = ?, {_RELEASE}",
            json.dumps(list(message_ids)),
            note,
        )

    async def defer(self, entry_id: int, error: str, next_attempt: float) -> None:
        await self._update(
            entry_id,
            f"attempts = attempts + 1, last_error = ?, next_attempt = ?, {_RELEASE}",
            error,
            next_attempt,
        )

    async def kill(self, entry_id: int, reason: str, *, attempted: bool = True) -> None:
        step = 1 if attempted else 0
        await self._update(
            entry_id,
            f"state = 'dead', attempts = attempts + ?, last_error = ?, {_RELEASE}",
            step,
            reason,
        )

    async def mark_bounced(self, entry_id: int) -> None:
        await self._update(entry_id, "bounced = 1")

    async def purge_delivered(self, older_than: float) -> int:
        return await self._change(
            "DELETE FROM messages WHERE state = 'delivered' AND updated < ?", (older_than,)
        )

    # -- the operator's side (``ahasend-relay queue``) ---------------------------------
    async def entries(self, state: State | None = None) -> list[SpoolEntry]:
        where, args = ("WHERE state = ?", (state,)) if state else ("", ())
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM messages {where} ORDER BY id",  # noqa: S608
            args,
        )
        return [_entry(row) for row in rows]

    async def get(self, entry_id: int) -> SpoolEntry | None:
        rows = await self._fetch(
            f"SELECT {_COLUMNS}, body FROM messages WHERE id = ?",  # noqa: S608
            (entry_id,),
        )
        return _entry(rows[0][:-1], body=rows[0][-1]) if rows else None

    async def retry(self, entry_id: int | None, max_age: float) -> int:
        now = self._clock()
        return await self._change(
            "UPDATE messages SET next_attempt = ?, updated = ?,"
            " expires = CASE WHEN state = 'dead' THEN ? ELSE expires END,"
            " state = 'queued'"
            " WHERE state IN ('queued', 'dead') AND body IS NOT NULL"
            " AND (? IS NULL OR id = ?)",
            (now, now, now + max_age, entry_id, entry_id),
        )

    async def delete(self, entry_id: int) -> bool:
        return await self._change("DELETE FROM messages WHERE id = ?", (entry_id,)) > 0

    async def stats(self) -> SpoolStats:
        def query(db: sqlite3.Connection) -> tuple[dict[str, int], Any, Any]:
            counts = dict(db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state"))
            oldest, attempts = db.execute(
                "SELECT MIN(created), MAX(attempts) FROM messages WHERE state = 'queued'"
            ).fetchone()
            return counts, oldest, attempts

        counts, oldest, attempts = await self._run(query)
        age = max(self._clock() - oldest, 0.0) if oldest is not None else 0.0
        return SpoolStats(
            queued=counts.get("queued", 0),
            dead=counts.get("dead", 0),
            delivered=counts.get("delivered", 0),
            oldest_age=age,
            max_attempts=attempts or 0,
        )

    # -- plumbing ------------------------------------------------------------------------
    async def _update(self, entry_id: int, assignments: str, *args: Any) -> None:
        await self._change(
            f"UPDATE messages SET {assignments}, updated = ? WHERE id = ?",  # noqa: S608
            (*args, self._clock(), entry_id),
        )

    async def _change(self, sql: str, args: Sequence[Any]) -> int:
        """Run one changing statement; how many rows it changed."""
        return await self._run(lambda db: db.execute(sql, args).rowcount)

    async def _fetch(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        return await self._run(lambda db: db.execute(sql, args).fetchall())

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` in a worker thread, under the lock; sqlite errors reported."""
        return await asyncio.to_thread(self._locked, work)

    def _locked(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                result = work(self._db)
            except sqlite3.Error as exc:
                self._available = False
                raise SpoolUnavailable(f"spool {self.path}: {exc}") from exc
            self._available = True
            return result


_DURABILITY = ("journal_mode", "synchronous")


def _entry(row: Sequence[Any], body: bytes | None = None) -> SpoolEntry:
    """The entry for a row of ``_COLUMNS`` (and its body when selected)."""
    (entry_id, key, state, mail_from, rcpt_tos, size, attempts, created, updated,
     next_attempt, expires, last_error, message_ids, bounced, claimed_until,
     route) = row  # fmt: skip
    return SpoolEntry(
        entry_id, key, state, mail_from, tuple(json.loads(rcpt_tos)), size, attempts,
        created, updated, next_attempt, expires, last_error,
        tuple(json.loads(message_ids or "[]")), bool(bounced), claimed_until, body, route,
    )  # fmt: skip


def _open(directory: Path, path: Path) -> sqlite3.Connection:
    """The connection, in WAL mode with full fsync, schema in place (migrated if older)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = not path.exists()
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        _migrate(db)
    except sqlite3.Error:
        db.close()
        raise
    if fresh:
        _fsync_directory(directory)
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a file written by an older relay to ``SCHEMA_VERSION`` (one transaction)."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")  # the write lock: a concurrent opener waits, then skips
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
        if "claimed_until" not in columns:
            db.execute("ALTER TABLE messages ADD COLUMN claimed_until REAL")
        if "route" not in columns:
            db.execute("ALTER TABLE messages ADD COLUMN route TEXT NOT NULL DEFAULT 'default'")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _fsync_directory(directory: Path) -> None:
    """Persist the new file's directory entry (a crash must not lose the spool itself)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
