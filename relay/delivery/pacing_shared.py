"""Aggregate pacing: one token bucket per AhaSend account, shared through PostgreSQL.

With a shared spool (``RELAY_SPOOL_URL``) several replicas send for the same account, and
AhaSend's limit is the account's, not a replica's: ``RELAY_API_RATE`` / ``RELAY_API_BURST``
are then the limits of all replicas together. The bucket is one row per account in table
``relay_api_bucket`` (created by the relay's migrations, ``relay.delivery.spool.pg_schema``,
like the spool's tables), refilled and taken in one statement (``TAKE``): an upsert whose
``UPDATE`` holds the row lock for the length of one statement, so concurrent replicas
serialise on the row and none can see a stale count. The refill uses the database's clock
(``now()``), so the replicas' clocks do not matter. As in ``TokenBucket``, a taker that
finds the bucket empty goes into debt and waits its turn (``-tokens / rate`` seconds); a
slot given back (the wait was cancelled) is returned with ``GIVE_BACK``.

A replica that cannot reach the database (``timeout`` seconds per statement, connection
refused, server shut down) does not fall back to the full rate, which N replicas would
multiply: it paces with a local ``TokenBucket`` at ``rate / replicas`` (``RELAY_REPLICAS``)
and ``burst / replicas``, tries the database again every ``retry_interval`` seconds, and
logs ``pacing_shared_unavailable`` / ``pacing_shared_restored`` on each change.

Every call through ``PacedSender`` takes a slot, the circuit breaker's probes included
(``BreakerSender`` wraps the paced sender), so probes count against the shared bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import psycopg

from relay.delivery.pacing import Slot, TokenBucket
from relay.delivery.spool.pg_schema import Migrator
from relay.delivery.spool.postgres import describe_failure
from relay.ops.log import get_logger

__all__ = ["SharedBucket", "SharedBuckets", "TokenStore"]

log = get_logger("relay.delivery.pacing_shared")

TAKE = """
INSERT INTO relay_api_bucket AS b (account, tokens, refilled_at)
VALUES (%(account)s, %(burst)s::float8 - 1, now())
ON CONFLICT (account) DO UPDATE SET
    tokens = LEAST(%(burst)s::float8, b.tokens + %(rate)s::float8
                   * GREATEST(0, EXTRACT(EPOCH FROM now() - b.refilled_at))) - 1,
    refilled_at = GREATEST(b.refilled_at, now())
RETURNING tokens"""
GIVE_BACK = """
UPDATE relay_api_bucket SET tokens = LEAST(%(burst)s::float8, tokens + 1)
WHERE account = %(account)s"""
DATABASE_ERRORS = (psycopg.Error, OSError, TimeoutError)


class TokenStore:
    """The ``relay_api_bucket`` table over one autocommit connection, reconnected on demand.

    ``take`` returns the seconds to wait for the slot it took, or None when the database
    cannot answer within ``timeout`` (then it is not asked again for ``retry_interval``
    seconds). The table is the relay's migration 2 (``relay.delivery.spool.pg_schema``):
    on its first connection the store has ``migrator`` bring the database up to date, if
    nobody in this process has yet. In a relay that is the spool's migrator (the spool and
    the bucket share the database, and whichever comes first migrates it); without one,
    the store's own, which logs ``pacing_shared_migrated``.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 1.0,
        retry_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        migrator: Migrator | None = None,
    ) -> None:
        self._url = url
        self._migrator = Migrator(on_applied=_log_migrated) if migrator is None else migrator
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._clock = clock
        self._connection: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._down_until = 0.0
        self._down = False
        self._background: set[asyncio.Task[None]] = set()

    @property
    def reachable(self) -> bool:
        """False while the last attempt to use the database failed."""
        return not self._down

    async def take(self, account: str, rate: float, burst: int) -> float | None:
        """Refill ``account``'s bucket and take one token; the wait, or None when down."""
        row = await self._execute(TAKE, {"account": account, "rate": rate, "burst": burst})
        if row is None:
            return None
        tokens = float(row[0])
        return 0.0 if tokens >= 0 else -tokens / rate

    def give_back(self, account: str, burst: int) -> None:
        """Return one token to ``account``'s bucket, in the background (best effort)."""
        task = asyncio.create_task(self._give_back(account, burst))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _give_back(self, account: str, burst: int) -> None:
        await self._execute(GIVE_BACK, {"account": account, "burst": burst}, fetch=False)

    async def aclose(self) -> None:
        """Wait for pending give-backs, then close the connection."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        async with self._lock:
            await self._disconnect()

    async def _execute(
        self, sql: str, params: dict[str, Any], *, fetch: bool = True
    ) -> tuple[Any, ...] | None:
        """Run one statement; its first row (``fetch``), or None when the database is down."""
        async with self._lock:
            if self._down and self._clock() < self._down_until:
                return None
            try:
                row = await asyncio.wait_for(self._run(sql, params, fetch), self._timeout)
            except DATABASE_ERRORS as exc:
                await self._failed(exc)
                return None
            if self._down:
                self._down = False
                log.info("pacing_shared_restored")
            return row if fetch else ()

    async def _run(self, sql: str, params: dict[str, Any], fetch: bool) -> tuple[Any, ...] | None:
        connection = await self._connected()
        cursor = await connection.execute(sql, params, prepare=True)
        return await cursor.fetchone() if fetch else None

    async def _connected(self) -> psycopg.AsyncConnection[Any]:
        if self._connection is None or self._connection.closed:
            connection = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            try:
                await self._migrator.ensure(lambda: contextlib.nullcontext(connection))
            except BaseException:
                await connection.close()
                raise
            self._connection = connection
        return self._connection

    async def _failed(self, exc: BaseException) -> None:
        """Forget the connection; stay down ``retry_interval`` seconds; log the change."""
        await self._disconnect()
        self._down_until = self._clock() + self._retry_interval
        if not self._down:
            self._down = True
            log.warning(
                "pacing_shared_unavailable",
                error=type(exc).__name__,
                reason=describe_failure(exc),
                retry_in=self._retry_interval,
            )

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(*DATABASE_ERRORS):
                await connection.close()


def _log_migrated(versions: list[int]) -> None:
    log.info("pacing_shared_migrated", versions=versions)


class SharedBucket:
    """One account's shared bucket (a ``Pacer``), with this replica's share as fallback."""

    def __init__(
        self, store: TokenStore, account: str, rate: float, burst: int, fallback: TokenBucket
    ) -> None:
        self._store = store
        self._account = account
        self._rate = rate
        self._burst = burst
        self.fallback = fallback

    async def take(self) -> Slot:
        wait = await self._store.take(self._account, self._rate, self._burst)
        if wait is None:
            return await self.fallback.take()
        return Slot(wait, self._give_back)

    def now(self) -> float:
        """This replica's clock (the fallback bucket's), which the ticks align to."""
        return self.fallback.now()

    def _give_back(self) -> None:
        self._store.give_back(self._account, self._burst)


class SharedBuckets:
    """Every account's ``SharedBucket`` on one ``TokenStore`` (``AccountBuckets``' role).

    ``replicas`` (``RELAY_REPLICAS``) divides the rate and burst of the fallback buckets.
    """

    def __init__(self, store: TokenStore, rate: float, burst: int, replicas: int) -> None:
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        self.store = store
        self._rate, self._burst, self._replicas = rate, burst, replicas
        self._buckets: dict[str, SharedBucket] = {}

    def for_account(self, account_id: str) -> SharedBucket:
        key = account_id.lower()
        if key not in self._buckets:
            fallback = TokenBucket(self._rate / self._replicas,
                                   max(1, self._burst // self._replicas))  # fmt: skip
            self._buckets[key] = SharedBucket(self.store, key, self._rate, self._burst, fallback)
        return self._buckets[key]

    async def aclose(self) -> None:
        await self.store.aclose()
