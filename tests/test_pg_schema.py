"""One schema version for everything the relay keeps in PostgreSQL (``pg_schema``).

The shared spool and the shared pacing bucket (``relay.delivery.pacing_shared``) use one
database and one list of migrations. On the real cluster (``tests.postgres``):

- in a relay, whichever of the two reaches a database first migrates it, once per
  process, logged once as ``spool_migrated`` (the spool's, even when the bucket came first);
- a bucket used alone (no spool in the process) migrates the database itself;
- a database an older relay left at version 1, with the ``relay_api_bucket`` table that
  relay created itself, migrates cleanly and keeps its rows, whichever part comes first;
- the migration that adds the bucket waits for an older relay creating the table at the
  same moment (under that relay's own advisory lock) instead of failing on it.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import psycopg
import pytest
import structlog.testing

from relay.assembly import pacing_buckets
from relay.config import load_settings
from relay.delivery.pacing_shared import TokenStore
from relay.delivery.spool import PostgresSpool
from relay.delivery.spool.pg_schema import MIGRATIONS, SCHEMA_VERSION
from tests.postgres import PASSWORD, PgCluster

ACCOUNT = "5d2c6c1e-7a0a-4b8a-9d5e-3f1b2a4c6e80"
OLDER_RELAYS_LOCK = 0x72656C6179_0B
"""The advisory lock relays before migration 2 took to create the bucket table."""
OLDER_RELAYS_BUCKET = """
CREATE TABLE IF NOT EXISTS relay_api_bucket (
    account     text PRIMARY KEY,
    tokens      double precision NOT NULL,
    refilled_at timestamptz NOT NULL
)"""
"""What those relays ran, on each connection, to create it."""
VERSION_1 = f"""
CREATE TABLE relay_schema_version (
    version integer PRIMARY KEY,
    applied timestamptz NOT NULL DEFAULT now()
);
{MIGRATIONS[0]}
INSERT INTO relay_schema_version (version) VALUES (1);
INSERT INTO relay_spool (idempotency_key, mail_from, rcpt_tos, body, size, created, updated,
    next_attempt, expires) VALUES ('old-key', 'app@example.com', '{{a@example.org}}', '\\x7b7d',
    2, 1.0, 2.0, 3.0, 9999999999.0);
"""
"""A database as an older relay (schema version 1) left it, with one spooled entry."""


def database(cluster: PgCluster, sql: str = "") -> tuple[str, str]:
    """A fresh database with ``sql`` run in it; its URL and name."""
    url = cluster.database()
    name = url.rsplit("/", 1)[1]
    if sql:
        cluster.psql(sql, name)
    return url, name


def versions(cluster: PgCluster, name: str) -> list[int]:
    found = cluster.psql("SELECT version FROM relay_schema_version ORDER BY 1", name)
    return [int(v) for v in found.splitlines()]


def migrated(logs: list[dict[str, Any]]) -> list[tuple[str, list[int]]]:
    return [(e["event"], e["versions"]) for e in logs if e["event"].endswith("_migrated")]


async def add(spool: PostgresSpool, key: str) -> int:
    return await spool.add(
        b"{}", key, mail_from="app@example.com", rcpt_tos=["a@example.org"],
        error="UpstreamServerError: 503", first_retry=0.0, max_age=3600,
    )  # fmt: skip


async def test_in_a_relay_the_bucket_migrates_a_database_the_spool_has_not_yet(
    pg_cluster: PgCluster,
) -> None:
    """The spool could not migrate at its start (the database came up later) and the first
    message takes a token before the spool is used: the bucket migrates, with the spool's
    migrator, so the spool then finds it done and the migration is logged once."""
    url, name = database(pg_cluster)
    settings = load_settings(environ={"RELAY_DRY_RUN": "true", "RELAY_SPOOL_URL": url})
    spool = PostgresSpool(url)  # not opened yet: it has not reached the database
    with structlog.testing.capture_logs() as logs:
        async with AsyncExitStack() as resources:
            buckets = pacing_buckets(settings, resources, spool)
            assert (await buckets.for_account(ACCOUNT).take()).wait == 0.0
            assert versions(pg_cluster, name) == list(range(1, SCHEMA_VERSION + 1))
            await spool.open()
            assert await add(spool, "k") == 1
            await spool.close()
    assert migrated(logs) == [("spool_migrated", list(range(1, SCHEMA_VERSION + 1)))]
    assert PASSWORD not in repr(logs)


async def test_a_bucket_alone_migrates_a_fresh_database(pg_cluster: PgCluster) -> None:
    url, name = database(pg_cluster)
    store = TokenStore(url)
    with structlog.testing.capture_logs() as logs:
        try:
            assert await store.take(ACCOUNT, 1.0, 5) == 0.0
        finally:
            await store.aclose()
    assert versions(pg_cluster, name) == list(range(1, SCHEMA_VERSION + 1))
    assert migrated(logs) == [("pacing_shared_migrated", list(range(1, SCHEMA_VERSION + 1)))]
    with structlog.testing.capture_logs() as later:
        spool = PostgresSpool(url)
        await spool.open()
        assert await add(spool, "k") == 1
        await spool.close()
    assert migrated(later) == []  # nothing left to do


@pytest.mark.parametrize("first", ["spool", "bucket"])
async def test_a_database_an_older_relay_left_migrates_keeping_its_rows(
    pg_cluster: PgCluster, first: str
) -> None:
    """Version 1, the bucket table the older relay made, a bucket row of 3.5 tokens whose
    refill time is an hour ahead (no refill meanwhile) and a spooled entry: both stay."""
    url, name = database(pg_cluster, VERSION_1 + OLDER_RELAYS_BUCKET + ";"
        f" INSERT INTO relay_api_bucket VALUES ('{ACCOUNT}', 3.5, now() + interval '1 hour')"
    )  # fmt: skip
    spool = PostgresSpool(url)
    store = TokenStore(url, migrator=spool.migrator)
    with structlog.testing.capture_logs() as logs:
        try:
            if first == "spool":
                await spool.open()
            assert await store.take(ACCOUNT, 1.0, 10) == 0.0
            await spool.open()
            assert [e.idempotency_key for e in await spool.entries()] == ["old-key"]
        finally:
            await store.aclose()
            await spool.close()
    assert versions(pg_cluster, name) == list(range(1, SCHEMA_VERSION + 1))
    assert migrated(logs) == [("spool_migrated", list(range(2, SCHEMA_VERSION + 1)))]
    assert float(pg_cluster.psql("SELECT tokens FROM relay_api_bucket", name)) == 2.5


async def test_adding_the_bucket_waits_for_an_older_relay_creating_it(
    pg_cluster: PgCluster,
) -> None:
    """An older replica creates the table under its own lock while this one migrates: the
    migration waits for it, then finds the table there, rather than failing on a duplicate
    (two concurrent CREATE TABLE IF NOT EXISTS of one name collide in the catalog)."""
    url, name = database(pg_cluster, VERSION_1)
    older = await psycopg.AsyncConnection.connect(url, autocommit=True)
    spool = PostgresSpool(url, timeout=30.0)
    try:
        async with older.transaction():  # as the older relay did on each connection
            await older.execute("SELECT pg_advisory_xact_lock(%s)", (OLDER_RELAYS_LOCK,))
            await older.execute(OLDER_RELAYS_BUCKET)
            opening = asyncio.create_task(spool.open())
            await asyncio.sleep(1.0)
            assert not opening.done()  # queued behind the older relay's lock
        await asyncio.wait_for(opening, 10)
        assert spool.available
        assert await add(spool, "k") == 2
    finally:
        await older.close()
        await spool.close()
    assert versions(pg_cluster, name) == list(range(1, SCHEMA_VERSION + 1))
