"""The durable spool: messages the API could not take right now, kept until delivered.

Store: one SQLite file (``RELAY_SPOOL_DIR/spool.sqlite3``) in WAL mode with
``synchronous=FULL``. Why SQLite rather than one file per message:

- every change is one atomic transaction, fsync'd to the WAL before ``commit`` returns,
  so "written" really means "survives SIGKILL and power loss" without hand-rolled
  write-temp/fsync/rename/fsync-directory sequences;
- WAL lets the ``queue`` tools read and change the spool while the daemon runs;
- the due-message scan, depth and oldest-age are indexed queries, not directory walks.

Each row is one API request: the serialised body, its Idempotency-Key (kept for the
row's whole life, so a resend after a crash is deduplicated by AhaSend), the envelope
(for bounce notices), attempts, timestamps and the last error. States::

    queued ──(202)──────────────────────────▶ delivered   (body dropped)
       └──(permanent error, or expired)──▶ dead   (reason kept; ``queue retry`` requeues)

Methods are synchronous and thread-safe (one connection behind a lock); async code calls
them through ``asyncio.to_thread``. Times are wall-clock seconds (they outlive restarts).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from relay.errors import SpoolUnavailable

__all__ = ["FILENAME", "Spool", "SpoolEntry", "SpoolStats", "SpoolUnavailable"]

FILENAME = "spool.sqlite3"
State = Literal["queued", "delivered", "dead"]

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
    bounced INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_due ON messages (state, next_attempt);
"""
_COLUMNS = (
    "id, idempotency_key, state, mail_from, rcpt_tos, size, attempts, created, updated,"
    " next_attempt, expires, last_error, message_ids, bounced"
)


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One spooled request. ``body`` is None in listings and once delivered."""

    id: int
    idempotency_key: str
    state: State
    mail_from: str
    rcpt_tos: tuple[str, ...]
    size: int
    attempts: int
    created: float
    updated: float
    next_attempt: float
    expires: float
    last_error: str | None
    message_ids: tuple[str, ...]
    bounced: bool
    body: bytes | None = None

    @classmethod
    def from_row(cls, row: Sequence[Any], body: bytes | None = None) -> SpoolEntry:
        values = list(row)
        values[4] = tuple(json.loads(values[4]))
        values[12] = tuple(json.loads(values[12] or "[]"))
        values[13] = bool(values[13])
        values.append(body)
        return cls(*values)


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """How the spool looks now: what the logs (and metrics) report."""

    queued: int
    dead: int
    delivered: int
    oldest_age: float
    """Seconds since the oldest queued message was spooled (0 when none)."""
    max_attempts: int
    """The most attempts any queued message has had."""


class Spool:
    """The spool file in ``directory`` (created, mode 0700, if missing)."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = directory / FILENAME
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = _open(directory, self.path)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolUnavailable(f"cannot open spool {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- the daemon's side ------------------------------------------------------------
    def add(
        self,
        body: bytes,
        idempotency_key: str,
        *,
        mail_from: str,
        rcpt_tos: Sequence[str],
        error: str,
        first_retry: float,
        max_age: float,
    ) -> int:
        """Store a request durably (committed and fsync'd on return); its id.

        A request whose key is already spooled is not stored twice: the existing id is
        returned (the same transaction resent while its first copy waits, or after it was
        delivered). A dead one is requeued: its sender is trying again.
        """
        now = self._clock()
        with self._lock:
            self._db.execute(
                "INSERT INTO messages (idempotency_key, mail_from, rcpt_tos, body, size,"
                " created, updated, next_attempt, expires, last_error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (idempotency_key) DO UPDATE SET state = 'queued',"
                " body = excluded.body, updated = excluded.updated,"
                " next_attempt = excluded.next_attempt, expires = excluded.expires,"
                " last_error = excluded.last_error WHERE messages.state = 'dead'",
                (
                    idempotency_key,
                    mail_from,
                    json.dumps(list(rcpt_tos)),
                    body,
                    len(body),
                    now,
                    now,
                    now + first_retry,
                    now + max_age,
                    error,
                ),
            )
            row = self._db.execute(
                "SELECT id FROM messages WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
        return int(row[0])

    def due(self, limit: int) -> list[SpoolEntry]:
        """Queued entries whose next attempt is due, oldest first, with their bodies."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS}, body FROM messages"  # noqa: S608 - constant columns
                " WHERE state = 'queued' AND next_attempt <= ? ORDER BY next_attempt LIMIT ?",
                (self._clock(), limit),
            ).fetchall()
        return [SpoolEntry.from_row(row[:-1], body=row[-1]) for row in rows]

    def next_due(self) -> float | None:
        """When the earliest queued entry is due (wall-clock), or None when none is queued."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_attempt) FROM messages WHERE state = 'queued'"
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def mark_delivered(
        self, entry_id: int, message_ids: Sequence[str], note: str | None = None
    ) -> None:
        """The API accepted the entry: keep its record (and ``note``), drop its body."""
        self._update(
            entry_id,
            "state = 'delivered', body = NULL, attempts = attempts + 1, message_ids = ?,"
            " last_error = ?",
            json.dumps(list(message_ids)),
            note,
        )

    def defer(self, entry_id: int, error: str, next_attempt: float) -> None:
        """A transient failure: count the attempt, try again at ``next_attempt``."""
        self._update(
            entry_id,
            "attempts = attempts + 1, last_error = ?, next_attempt = ?",
            error,
            next_attempt,
        )

    def kill(self, entry_id: int, reason: str, *, attempted: bool = True) -> None:
        """Give up on the entry (dead letter); ``reason`` is kept for the operator."""
        step = 1 if attempted else 0
        self._update(
            entry_id, "state = 'dead', attempts = attempts + ?, last_error = ?", step, reason
        )

    def mark_bounced(self, entry_id: int) -> None:
        """A bounce notice for the entry was accepted by the API."""
        self._update(entry_id, "bounced = 1")

    def purge_delivered(self, older_than: float) -> int:
        """Forget delivered entries last updated before ``older_than``; how many."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM messages WHERE state = 'delivered' AND updated < ?", (older_than,)
            )
        return cursor.rowcount

    # -- the operator's side (``ahasend-relay queue``) --------------------------------
    def entries(self, state: State | None = None) -> list[SpoolEntry]:
        """Entries (without bodies), oldest first; all states unless ``state`` is given."""
        where, args = ("WHERE state = ?", (state,)) if state else ("", ())
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages {where} ORDER BY id",  # noqa: S608
                args,
            ).fetchall()
        return [SpoolEntry.from_row(row) for row in rows]

    def get(self, entry_id: int) -> SpoolEntry | None:
        """One entry with its body (None once delivered), or None if there is no such id."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS}, body FROM messages WHERE id = ?",  # noqa: S608
                (entry_id,),
            ).fetchone()
        return None if row is None else SpoolEntry.from_row(row[:-1], body=row[-1])

    def retry(self, entry_id: int | None, max_age: float) -> int:
        """Make queued entries due now and requeue dead ones (with a fresh ``max_age``).

        ``entry_id`` None means every queued or dead entry. Delivered entries and dead
        ones whose body is gone are left alone. Returns how many entries changed.
        """
        now = self._clock()
        with self._lock:
            cursor = self._db.execute(
                "UPDATE messages SET next_attempt = ?, updated = ?,"
                " expires = CASE WHEN state = 'dead' THEN ? ELSE expires END,"
                " state = 'queued'"
                " WHERE state IN ('queued', 'dead') AND body IS NOT NULL"
                " AND (? IS NULL OR id = ?)",
                (now, now, now + max_age, entry_id, entry_id),
            )
        return cursor.rowcount

    def delete(self, entry_id: int) -> bool:
        """Remove an entry for good; False when there was none."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM messages WHERE id = ?", (entry_id,))
        return cursor.rowcount > 0

    def stats(self) -> SpoolStats:
        """Depth, dead letters, oldest queued age and the highest attempt count."""
        with self._lock:
            counts = dict(
                self._db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state").fetchall()
            )
            oldest, attempts = self._db.execute(
                "SELECT MIN(created), MAX(attempts) FROM messages WHERE state = 'queued'"
            ).fetchone()
        age = max(self._clock() - oldest, 0.0) if oldest is not None else 0.0
        return SpoolStats(
            queued=counts.get("queued", 0),
            dead=counts.get("dead", 0),
            delivered=counts.get("delivered", 0),
            oldest_age=age,
            max_attempts=attempts or 0,
        )

    def _update(self, entry_id: int, assignments: str, *args: Any) -> None:
        with self._lock:
            self._db.execute(
                f"UPDATE messages SET {assignments}, updated = ? WHERE id = ?",  # noqa: S608
                (*args, self._clock(), entry_id),
            )


def _open(directory: Path, path: Path) -> sqlite3.Connection:
    """The connection, in WAL mode with full fsync, schema in place."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = not path.exists()
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
    except sqlite3.Error:
        db.close()
        raise
    if fresh:
        _fsync_directory(directory)
    return db


def _fsync_directory(directory: Path) -> None:
    """Persist the new file's directory entry (a crash must not lose the spool itself)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
