"""The PostgreSQL spool backend: one table shared by every replica (``RELAY_SPOOL_URL``).

Same contract as the SQLite store (``relay.delivery.spool.base``), for several relays at
once: any replica delivers any spooled message. Driver: psycopg 3 (async) with its
connection pool (``psycopg_pool``), chosen by measurement (``bench/README.md``).

- Every change is one statement in autocommit mode, committed before the method returns
  (``add``: the ``250`` is only given once the row is committed; PostgreSQL's
  ``synchronous_commit`` decides how durable a commit is, by default flushed to its WAL).
  One statement per change is also one round trip (``bench/README.md``).
- A claim is one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``: two
  replicas claiming at once lock disjoint rows, and a row whose ``claimed_until`` is
  still ahead is not due, so a lease excludes every other claimer until it ends.
- Times are this process's injected clock, never the server's ``now()``: the lease is a
  wall-clock time compared by every replica, as with SQLite.
- The schema is created and migrated (``relay.delivery.spool.pg_schema``) before the
  first statement that needs it, under an advisory lock. A database that cannot be
  reached is not fatal: each call then raises ``SpoolUnavailable`` within ``timeout``
  seconds, the pool keeps reconnecting in the background, and the first call after the
  database is back migrates and proceeds. The switch is logged once each way
  (``spool_unavailable`` / ``spool_recovered``) and reported to ``on_change``. A call that
  found no connection in time gives libpq's reason for the pool's last failed attempt
  (``certificate verify failed``, ``Connection refused``), not just "timed out": the pool
  connects in the background and would otherwise keep it to its own log line.
- ``location`` and every message carry the URL with its password masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self, TypeVar

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from relay.config import mask_url_password
from relay.delivery.spool.base import SpoolEntry, SpoolStats, State
from relay.delivery.spool.pg_schema import migrate
from relay.errors import SpoolUnavailable
from relay.ops.log import get_logger

__all__ = ["PostgresSpool"]

log = get_logger("relay.delivery.spool")
T = TypeVar("T")
Connection = psycopg.AsyncConnection[TupleRow]
Work = Callable[[Connection], Awaitable[T]]

_COLUMNS = (
    "id, idempotency_key, state, mail_from, rcpt_tos, size, attempts, created, updated,"
    " next_attempt, expires, last_error, message_ids, bounced, claimed_until, route"
)
_RELEASE = "claimed_until = NULL"
CONNECT_TIMEOUT = 5
"""libpq's ``connect_timeout`` (seconds) unless the URL sets its own."""
RECONNECT_ROUND = 10.0
"""Seconds the pool retries (1, 2, 4 s apart) before the next call starts over."""


class PostgresSpool:
    """The spool in the database ``url`` names (a libpq URL). A ``SpoolBackend``.

    Construct, then ``await open()``; neither fails when the database is down. ``clock``
    is the wall clock every time is read from; ``timeout`` bounds each call (waiting for
    a connection included); ``on_change(available)`` hears each switch between reachable
    and not; ``pool_size`` is the most connections this process opens; ``log_events``
    False keeps the ``spool_*`` events out of the log (the ``queue`` tools, whose output
    is stdout, report failures themselves).
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 5.0,
        pool_size: int = 10,
        on_change: Callable[[bool], None] | None = None,
        log_events: bool = True,
    ) -> None:
        self._clock = clock
        self._log_events = log_events
        self._timeout = timeout
        self._on_change = on_change
        self._location = mask_url_password(url)
        self._available = True
        self._connect_error = ""  # why the last connection attempt failed ("": it did not)
        self._migrated = False
        self._migrating = asyncio.Lock()
        self._pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=timeout,
            kwargs=_connect_options(url),
            connection_class=_reporting(self._connected),
            check=AsyncConnectionPool.check_connection,
            # Give up a reconnection round after 10 s: the next call starts a fresh one, so
            # a long outage does not stretch the pool's backoff past the recovery.
            reconnect_timeout=RECONNECT_ROUND,
            name="relay-spool",
        )

    @property
    def location(self) -> str:
        return self._location

    @property
    def available(self) -> bool:
        """False since a call failed to reach the database, until one succeeds."""
        return self._available

    async def open(self) -> None:
        """Start the pool and try once to reach and migrate the database (never raises)."""
        await self._pool.open(wait=False)
        with contextlib.suppress(SpoolUnavailable):  # logged; each later call tries again
            await self._run(_nothing)

    async def close(self) -> None:
        await self._pool.close()

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
        values = (idempotency_key, mail_from, list(rcpt_tos), body, len(body), now, now,
                  now + first_retry, now + max_age, error, route)  # fmt: skip

        async def insert(db: Connection) -> int:
            cursor = await db.execute(
                "INSERT INTO relay_spool (idempotency_key, mail_from, rcpt_tos, body, size,"
                " created, updated, next_attempt, expires, last_error, route)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (idempotency_key) DO UPDATE SET state = 'queued',"
                " body = excluded.body, updated = excluded.updated,"
                " next_attempt = excluded.next_attempt, expires = excluded.expires,"
                " last_error = excluded.last_error, claimed_until = NULL"
                " WHERE relay_spool.state = 'dead' RETURNING id",
                values,
            )
            row = await cursor.fetchone()
            if row is None:  # stored already and not dead: left as it is
                cursor = await db.execute(
                    "SELECT id FROM relay_spool WHERE idempotency_key = %s", (idempotency_key,)
                )
                row = await cursor.fetchone()
            if row is None:  # deleted between the two statements: store it afresh
                return await insert(db)
            return int(row[0])

        return await self._run(insert)

    # -- the worker's side -------------------------------------------------------------
    async def claim(self, limit: int, lease: float) -> list[SpoolEntry]:
        now = self._clock()
        rows = await self._fetch(
            "UPDATE relay_spool SET claimed_until = %(until)s WHERE id IN ("  # noqa: S608
            " SELECT id FROM relay_spool WHERE state = 'queued' AND next_attempt <= %(now)s"
            " AND (claimed_until IS NULL OR claimed_until <= %(now)s)"
            " ORDER BY next_attempt, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
            f" RETURNING {_COLUMNS}, body",
            {"until": now + lease, "now": now, "limit": limit},
        )
        entries = [_entry(row[:-1], body=row[-1]) for row in rows]
        return sorted(entries, key=lambda e: (e.next_attempt, e.id))

    async def next_due(self) -> float | None:
        [(due,)] = await self._fetch(
            "SELECT MIN(GREATEST(next_attempt, COALESCE(claimed_until, next_attempt)))"
            " FROM relay_spool WHERE state = 'queued'"
        )
        return None if due is None else float(due)

    async def mark_delivered(
        self, entry_id: int, message_ids: Sequence[str], note: str | None = None
    ) -> None:
        await self._update(
            entry_id,
            f"state = 'delivered', body = NULL, attempts = attempts + 1, message_ids = %s,"
            f" last_error = %s, {_RELEASE}",
            list(message_ids),
            note,
        )

    async def defer(self, entry_id: int, error: str, next_attempt: float) -> None:
        await self._update(
            entry_id,
            f"attempts = attempts + 1, last_error = %s, next_attempt = %s, {_RELEASE}",
            error,
            next_attempt,
        )

    async def kill(self, entry_id: int, reason: str, *, attempted: bool = True) -> None:
        await self._update(
            entry_id,
            f"state = 'dead', attempts = attempts + %s, last_error = %s, {_RELEASE}",
            1 if attempted else 0,
            reason,
        )

    async def mark_bounced(self, entry_id: int) -> None:
        await self._update(entry_id, "bounced = true")

    async def purge_delivered(self, older_than: float) -> int:
        return await self._change(
            "DELETE FROM relay_spool WHERE state = 'delivered' AND updated < %s", (older_than,)
        )

    # -- the operator's side (``ahasend-relay queue``) ---------------------------------
    async def entries(self, state: State | None = None) -> list[SpoolEntry]:
        where, args = ("WHERE state = %s", (state,)) if state else ("", ())
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM relay_spool {where} ORDER BY id",  # noqa: S608
            args,
        )
        return [_entry(row) for row in rows]

    async def get(self, entry_id: int) -> SpoolEntry | None:
        rows = await self._fetch(
            f"SELECT {_COLUMNS}, body FROM relay_spool WHERE id = %s",  # noqa: S608
            (entry_id,),
        )
        return _entry(rows[0][:-1], body=rows[0][-1]) if rows else None

    async def retry(self, entry_id: int | None, max_age: float) -> int:
        now = self._clock()
        return await self._change(
            "UPDATE relay_spool SET next_attempt = %(now)s, updated = %(now)s,"
            " expires = CASE WHEN state = 'dead' THEN %(expires)s ELSE expires END,"
            " state = 'queued'"
            " WHERE state IN ('queued', 'dead') AND body IS NOT NULL"
            " AND (%(id)s::bigint IS NULL OR id = %(id)s::bigint)",
            {"now": now, "expires": now + max_age, "id": entry_id},
        )

    async def delete(self, entry_id: int) -> bool:
        return await self._change("DELETE FROM relay_spool WHERE id = %s", (entry_id,)) > 0

    async def stats(self) -> SpoolStats:
        async def query(db: Connection) -> tuple[dict[str, int], Any, Any]:
            cursor = await db.execute("SELECT state, COUNT(*) FROM relay_spool GROUP BY state")
            counts = {state: int(count) for state, count in await cursor.fetchall()}
            cursor = await db.execute(
                "SELECT MIN(created), MAX(attempts) FROM relay_spool WHERE state = 'queued'"
            )
            row = await cursor.fetchone()
            assert row is not None
            return counts, row[0], row[1]

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
            f"UPDATE relay_spool SET {assignments}, updated = %s WHERE id = %s",  # noqa: S608
            (*args, self._clock(), entry_id),
        )

    async def _change(self, sql: str, args: Sequence[Any] | dict[str, Any]) -> int:
        """Run one changing statement; how many rows it changed."""

        async def change(db: Connection) -> int:
            cursor = await db.execute(sql, args)
            return cursor.rowcount

        return await self._run(change)

    async def _fetch(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        async def fetch(db: Connection) -> list[Any]:
            cursor = await db.execute(sql, args)
            return await cursor.fetchall()

        return await self._run(fetch)

    async def _run(self, work: Work[T]) -> T:
        """``work(connection)`` on a pooled (autocommit) connection, within ``timeout``.

        The schema is migrated first if this process has not yet done so. Any database
        failure (unreachable, timed out, closed pool, SQL error) is ``SpoolUnavailable``.
        """
        try:
            async with asyncio.timeout(self._timeout):
                await self._ensure_schema()
                async with self._pool.connection() as db:
                    result = await work(db)
        except (psycopg.Error, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError | PoolTimeout)
            why = (timed_out and self._connect_error) or _describe(exc)
            self._set_available(False, why)
            raise SpoolUnavailable(f"spool {self._location}: {why}") from exc
        self._set_available(True)
        return result

    async def _ensure_schema(self) -> None:
        if self._migrated:
            return
        async with self._migrating:
            if self._migrated:
                return
            async with self._pool.connection() as db:
                applied = await migrate(db)
            if applied and self._log_events:
                log.info("spool_migrated", spool=self._location, versions=applied)
            self._migrated = True

    def _connected(self, error: str) -> None:
        """The pool's connection attempt ended: ``error`` is libpq's reason, "" on success."""
        self._connect_error = error

    def _set_available(self, available: bool, why: str = "") -> None:
        if available == self._available:
            return
        self._available = available
        if self._log_events and available:
            log.info("spool_recovered", spool=self._location)
        elif self._log_events:
            log.warning("spool_unavailable", spool=self._location, error=why)
        if self._on_change is not None:
            self._on_change(available)


def _reporting(ended: Callable[[str], None]) -> type[Connection]:
    """The pool's connection class: ``connect`` tells ``ended`` how each attempt ended
    (``_describe`` of the failure, "" for a connection) before it returns or raises."""

    class ReportingConnection(Connection):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Self:
            try:
                connection = await super().connect(*args, **kwargs)
            except psycopg.Error as exc:
                ended(_describe(exc))
                raise
            ended("")
            return connection

    return ReportingConnection


async def _nothing(db: Connection) -> None:
    """No work: ``_run`` of it reaches the database and migrates it."""


def _describe(exc: BaseException) -> str:
    """One line saying what went wrong (libpq's first line; never the URL's password)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _connect_options(url: str) -> dict[str, Any]:
    """Connection options: autocommit (each statement commits on its own: one round trip),
    and ``connect_timeout`` unless the URL sets its own."""
    given = psycopg.conninfo.conninfo_to_dict(url)
    options: dict[str, Any] = {"autocommit": True}
    if "connect_timeout" not in given:
        options["connect_timeout"] = CONNECT_TIMEOUT
    return options


def _entry(row: Sequence[Any], body: bytes | None = None) -> SpoolEntry:
    """The entry for a row of ``_COLUMNS`` (and its body when selected)."""
    (entry_id, key, state, mail_from, rcpt_tos, size, attempts, created, updated,
     next_attempt, expires, last_error, message_ids, bounced, claimed_until,
     route) = row  # fmt: skip
    return SpoolEntry(
        int(entry_id), key, state, mail_from, tuple(rcpt_tos), size, attempts,
        created, updated, next_attempt, expires, last_error,
        tuple(message_ids or ()), bool(bounced), claimed_until,
        bytes(body) if body is not None else None, route,
    )  # fmt: skip
