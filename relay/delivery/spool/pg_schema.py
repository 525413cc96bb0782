"""The relay's PostgreSQL schema: versioned migrations, applied once under a lock.

One schema version covers every table the relay creates in the database
``RELAY_SPOOL_URL`` names: the shared spool's ``relay_spool`` (migration 1) and the shared
pacing bucket's ``relay_api_bucket`` (migration 2, ``relay.delivery.pacing_shared``).

``MIGRATIONS[n - 1]`` brings a database from version ``n - 1`` to ``n``; the versions
applied are rows of ``relay_schema_version``. ``migrate`` runs in one transaction that
first takes a transaction-scoped advisory lock (``ADVISORY_LOCK``): replicas starting
together queue on the lock, the first applies what is missing, the others then find
nothing to do. A database already newer than this relay knows is left alone (an older
replica during a rolling upgrade keeps working on the columns it knows).

Within one process the spool and the bucket share one ``Migrator``: whichever reaches the
database first migrates it (at start the spool, which opens first; after an outage at
start, possibly the bucket, when a message takes a token before the spool is used), and
the other then finds it done without asking the database.

Append a migration to change the schema; never edit one that has shipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

__all__ = ["ADVISORY_LOCK", "MIGRATIONS", "SCHEMA_VERSION", "Migrator", "migrate"]

ADVISORY_LOCK = 0x61686173656E6431  # "ahasend1": the key every replica locks to migrate

MIGRATIONS: tuple[str, ...] = (
    # 1: the spool (relay.delivery.spool.postgres), the same columns as the SQLite file's.
    """
    CREATE TABLE relay_spool (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        idempotency_key text NOT NULL UNIQUE,
        state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'delivered', 'dead')),
        mail_from text NOT NULL,
        rcpt_tos text[] NOT NULL,
        body bytea,
        size integer NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        created double precision NOT NULL,
        updated double precision NOT NULL,
        next_attempt double precision NOT NULL,
        expires double precision NOT NULL,
        last_error text,
        message_ids text[] NOT NULL DEFAULT '{}',
        bounced boolean NOT NULL DEFAULT false,
        claimed_until double precision,
        route text NOT NULL DEFAULT 'default'
    );
    CREATE INDEX relay_spool_due ON relay_spool (next_attempt, id) WHERE state = 'queued';
    CREATE INDEX relay_spool_delivered ON relay_spool (updated) WHERE state = 'delivered';
    """,
    # 2: the shared pacing bucket (relay.delivery.pacing_shared). Relays before this
    # migration created the table themselves, on each connection, with this same
    # CREATE TABLE IF NOT EXISTS under advisory lock 0x72656C61790B (125779935590667):
    # IF NOT EXISTS keeps a table such a relay made, rows and all, and taking its lock
    # makes this wait for one creating it right now (two concurrent CREATEs of one name
    # collide in the catalog) rather than fail.
    """
    SELECT pg_advisory_xact_lock(125779935590667);
    CREATE TABLE IF NOT EXISTS relay_api_bucket (
        account     text PRIMARY KEY,
        tokens      double precision NOT NULL,
        refilled_at timestamptz NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS relay_schema_version (
    version integer PRIMARY KEY,
    applied timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(connection: Any) -> list[int]:
    """Apply the missing migrations to ``connection``'s database; the versions applied.

    ``connection`` is a psycopg ``AsyncConnection`` (not in a transaction); the whole
    migration, lock included, is one transaction, so a failure leaves the database as it
    was.
    """
    applied: list[int] = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
        await connection.execute(_VERSION_TABLE)
        cursor = await connection.execute(
            "SELECT COALESCE(MAX(version), 0) FROM relay_schema_version"
        )
        row = await cursor.fetchone()
        current = int(row[0])
        for version in range(current + 1, SCHEMA_VERSION + 1):
            await connection.execute(MIGRATIONS[version - 1])
            await connection.execute(
                "INSERT INTO relay_schema_version (version) VALUES (%s)", (version,)
            )
            applied.append(version)
    return applied


class Migrator:
    """Migrates one database at most once per process, for every part that uses it.

    ``ensure`` is awaited before a part's first statement; ``on_applied(versions)`` hears
    the versions this process applied (for the log), once.
    """

    def __init__(self, on_applied: Callable[[list[int]], None] | None = None) -> None:
        self._on_applied = on_applied
        self._done = False
        self._lock = asyncio.Lock()

    async def ensure(self, connect: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        """Unless done: ``migrate`` on the connection ``connect()`` yields (async context).

        Callers in this process queue here, so only the first one connects and migrates;
        on failure nothing is done and the next caller tries again.
        """
        if self._done:
            return
        async with self._lock:
            if self._done:
                return
            async with connect() as connection:
                applied = await migrate(connection)
            self._done = True
        if applied and self._on_applied is not None:
            self._on_applied(applied)
