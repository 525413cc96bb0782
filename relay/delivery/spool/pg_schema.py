"""The shared spool's PostgreSQL schema: versioned migrations, applied once under a lock.

``MIGRATIONS[n - 1]`` brings a database from version ``n - 1`` to ``n``; the versions
applied are rows of ``relay_schema_version``. ``migrate`` runs in one transaction that
first takes a transaction-scoped advisory lock (``ADVISORY_LOCK``): replicas starting
together queue on the lock, the first applies what is missing, the others then find
nothing to do. A database already newer than this relay knows is left alone (an older
replica during a rolling upgrade keeps working on the columns it knows).

Append a migration to change the schema; never edit one that has shipped.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ADVISORY_LOCK", "MIGRATIONS", "SCHEMA_VERSION", "migrate"]

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
