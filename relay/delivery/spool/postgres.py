"""The PostgreSQL spool backend: one table shared by every replica (``RELAY_SPOOL_URL``).

Same contract as the SQLite store (``relay.delivery.spool.base``), for several relays at
once: any replica delivers any spooled message. The statements and the methods that run
them are shared with SQLite (``relay.delivery.spool.sql``), in this database's dialect
(``text[]`` arrays for address lists). Driver: psycopg 3 (async) with its connection
pool (``psycopg_pool``), chosen by measurement (``bench/README.md``).

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
  first statement that needs it, under an advisory lock, by ``migrator``, which the
  shared pacing bucket on the same database uses too (whichever comes first migrates).
  A database that cannot be reached is not fatal: each call then raises
  ``SpoolUnavailable`` within ``timeout`` seconds, the pool keeps reconnecting in the
  background, and the first call after the database is back migrates and proceeds. The
  switch is logged once each way (``spool_unavailable`` / ``spool_recovered``) and
  reported to ``on_change``. A call that found no connection in time gives libpq's reason
  for the pool's last failed attempt (``certificate verify failed``, ``Connection
  refused``), not just "timed out": the pool connects in the background and would
  otherwise keep it to its own log line.
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
from relay.delivery.spool.pg_schema import Migrator
from relay.delivery.spool.sql import Dialect, Params, SqlSpool, Statements
from relay.errors import SpoolUnavailable
from relay.ops.log import get_logger

__all__ = ["PostgresSpool", "describe_failure"]

log = get_logger("relay.delivery.spool")
T = TypeVar("T")
Connection = psycopg.AsyncConnection[TupleRow]
Work = Callable[[Connection], Awaitable[T]]

_SQL = Statements(
    Dialect(
        table="relay_spool",
        parameter="%({})s",
        greatest="GREATEST",
        # Replicas claiming at once lock disjoint rows: a row another claim has locked is
        # skipped, not waited for, and once its claimed_until is set it is not due.
        claim_lock="FOR UPDATE SKIP LOCKED",
        encode_list=list,
        decode_list=lambda array: array or (),
    )
)
_INSERT_RETURNING_ID = _SQL.insert + " RETURNING id"
"""New or requeued: the id in the same round trip (a live entry's key returns no row)."""
CONNECT_TIMEOUT = 5
"""libpq's ``connect_timeout`` (seconds) unless the URL sets its own."""
RECONNECT_ROUND = 10.0
"""Seconds the pool retries (1, 2, 4 s apart) before the next call starts over."""


class PostgresSpool(SqlSpool):
    """The spool in the database ``url`` names (a libpq URL). A ``SpoolBackend``.

    Construct, then ``await open()``; neither fails when the database is down. ``clock``
    is the wall clock every time is read from; ``timeout`` bounds each call (waiting for
    a connection included); ``on_change(available)`` hears each switch between reachable
    and not; ``pool_size`` is the most connections this process opens; ``log_events``
    False keeps the ``spool_*`` events out of the log (the ``queue`` tools, whose output
    is stdout, report failures themselves).
    """

    _sql = _SQL

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
        self.migrator = Migrator(on_applied=self._log_migrated)
        """Migrates this spool's database once; the shared bucket (``pacing_shared``) on the
        same database uses it too, so whichever comes first migrates, logged here."""
        self._connect_error = ""  # why the last connection attempt failed ("": it did not)
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

    # -- the primitives (``SqlSpool``) ----------------------------------------------
    async def _insert(self, values: Params) -> int:
        """The upsert returning the id; for a key stored already and not dead, a second
        statement reads its id; if that entry was deleted in between, store it afresh."""

        async def insert(db: Connection) -> int:
            cursor = await db.execute(_INSERT_RETURNING_ID, values)
            row = await cursor.fetchone()
            if row is None:  # stored already and not dead: left as it is
                cursor = await db.execute(_SQL.id_of_key, values)
                row = await cursor.fetchone()
            if row is None:  # deleted between the two statements: store it afresh
                return await insert(db)
            return int(row[0])

        return await self._run(insert)

    async def _fetch_each(self, statements: Sequence[tuple[str, Params]]) -> list[list[Any]]:
        async def fetch(db: Connection) -> list[list[Any]]:
            results = []
            for sql, params in statements:
                cursor = await db.execute(sql, params)
                results.append(await cursor.fetchall())
            return results

        return await self._run(fetch)

    async def _change(self, sql: str, params: Params) -> int:
        async def change(db: Connection) -> int:
            cursor = await db.execute(sql, params)
            return cursor.rowcount

        return await self._run(change)

    # -- plumbing ------------------------------------------------------------------------
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
            why = (timed_out and self._connect_error) or describe_failure(exc)
            self._set_available(False, why)
            raise SpoolUnavailable(f"spool {self._location}: {why}") from exc
        self._set_available(True)
        return result

    async def _ensure_schema(self) -> None:
        await self.migrator.ensure(self._pool.connection)  # once done: no connection taken

    def _log_migrated(self, versions: list[int]) -> None:
        if self._log_events:
            log.info("spool_migrated", spool=self._location, versions=versions)

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
    (``describe_failure`` of the failure, "" for a connection) before it returns or raises."""

    class ReportingConnection(Connection):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Self:
            try:
                connection = await super().connect(*args, **kwargs)
            except psycopg.Error as exc:
                ended(describe_failure(exc))
                raise
            ended("")
            return connection

    return ReportingConnection


async def _nothing(db: Connection) -> None:
    """No work: ``_run`` of it reaches the database and migrates it."""


def describe_failure(exc: BaseException) -> str:
    """One line saying what went wrong with a PostgreSQL call (libpq's first line; never the
    URL's password): the spool's and the shared pacing bucket's log lines."""
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
