"""The SQLite spool backend: one file, ``RELAY_SPOOL_DIR/spool.sqlite3``.

The file is in WAL mode with ``synchronous=FULL``. Why SQLite rather than one file per
message:

- every change is one atomic transaction, fsync'd to the WAL before ``commit`` returns,
  so "written" really means "survives SIGKILL and power loss" without hand-rolled
  write-temp/fsync/rename/fsync-directory sequences;
- WAL lets the ``queue`` tools read and change the spool while the daemon runs;
- the due-message scan, depth and oldest-age are indexed queries, not directory walks.

Each row is one API request (see ``relay.delivery.spool.base`` for the contract); the
statements and the methods that run them are shared with PostgreSQL
(``relay.delivery.spool.sql``), in this file's dialect (JSON text for address lists). The
work is synchronous, on one connection behind a lock, run in a worker thread
(``asyncio.to_thread``) so the event loop never waits for a disk. A claim is one
``UPDATE ... RETURNING`` statement, hence atomic also against other processes: SQLite has
one writer at a time, so it needs no row locks.

Permissions: the directory is made 0700 and the file (with its ``-wal`` and ``-shm``, which
SQLite creates with the database file's mode) 0600, whatever umask or earlier mode they
had: the spool holds whole messages. Like ``postfix set-permissions`` the relay fixes what
it owns (logging ``spool_permissions_tightened`` with the mode it found) and, when it
cannot (the directory or a file belongs to another user), refuses to open the spool with
``SpoolUnavailable`` naming the path and its mode (``serve`` exits 73): it never runs with
a spool that other users can read.

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
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from relay.delivery.spool.sql import Dialect, Params, SqlSpool, Statements
from relay.errors import SpoolUnavailable
from relay.ops.log import get_logger

__all__ = ["DIRECTORY_MODE", "FILENAME", "FILE_MODE", "SCHEMA_VERSION", "SqliteSpool"]

log = get_logger("relay.delivery.spool")
FILENAME = "spool.sqlite3"
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
_SIDE_FILES = ("-wal", "-shm", "-journal")
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
_SQL = Statements(
    Dialect(
        table="messages",
        parameter=":{}",
        greatest="MAX",
        # No row locks: SQLite has one writer at a time, so the claim's one
        # UPDATE ... RETURNING is atomic against every other connection and process.
        claim_lock="",
        encode_list=lambda items: json.dumps(list(items)),
        decode_list=lambda text: json.loads(text or "[]"),
    )
)


class SqliteSpool(SqlSpool):
    """The spool file in ``directory`` (created if missing). A ``SpoolBackend``.

    Opening is synchronous and raises ``SpoolUnavailable`` when the directory or the file
    is unusable, or open to other users and not the relay's to close (the module docstring
    has the permission rules); ``clock`` is the wall clock every time is read from.
    """

    _sql = _SQL

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

    # -- the primitives (``SqlSpool``) ----------------------------------------------
    async def _insert(self, values: Params) -> int:
        """The upsert, then the key's id: two statements on the one connection."""

        def insert(db: sqlite3.Connection) -> int:
            db.execute(_SQL.insert, values)
            row = db.execute(_SQL.id_of_key, values).fetchone()
            return int(row[0])

        return await self._run(insert)

    async def _fetch_each(self, statements: Sequence[tuple[str, Params]]) -> list[list[Any]]:
        return await self._run(
            lambda db: [db.execute(sql, params).fetchall() for sql, params in statements]
        )

    async def _change(self, sql: str, params: Params) -> int:
        return await self._run(lambda db: db.execute(sql, params).rowcount)

    # -- plumbing ------------------------------------------------------------------------
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


def _open(directory: Path, path: Path) -> sqlite3.Connection:
    """The connection, in WAL mode with full fsync, schema in place (migrated if older)."""
    directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    _make_private(directory, DIRECTORY_MODE)
    fresh = not path.exists()
    if fresh:  # created 0600 here: SQLite would create it 0666 minus the umask
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE))
    for name in (path, *(path.with_name(path.name + side) for side in _SIDE_FILES)):
        if name.exists():
            _make_private(name, FILE_MODE)
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


def _make_private(path: Path, wanted: int) -> None:
    """Give ``path`` mode ``wanted`` if group or others have any access to it; when that is
    not allowed (another user's), SpoolUnavailable naming the path and the mode it has."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return
    try:
        path.chmod(wanted)
    except OSError as exc:
        raise SpoolUnavailable(
            f"spool {path} is mode {mode:04o}, open to other users, and cannot be made "
            f"{wanted:04o}: {exc.strerror or exc}; chmod it, or point RELAY_SPOOL_DIR at a "
            "directory of the relay's own"
        ) from None
    log.warning("spool_permissions_tightened", path=str(path), was=f"{mode:04o}",
                now=f"{wanted:04o}")  # fmt: skip


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
