"""Spool writes side by side: SQLite, PostgreSQL through psycopg 3, PostgreSQL through asyncpg.

    python -m bench.spool            # 3 rounds of 2,000 adds, 16 writers at once
    python -m bench.spool --quick    # smoke test: tiny loads, figures meaningless

What one SMTP transaction that needs the spool waits for: ``add()`` of a 4 KiB request,
committed (and for SQLite fsync'd) before it returns. ``--writers`` adds run at once (the
concurrent transactions), for ``--adds`` adds per round; each backend's rounds are
interleaved with the others'. Printed: writes per second and the p50/p95/p99 ``add()``
latency (medians over rounds).

- ``sqlite``: the relay's ``SqliteSpool`` in a temporary directory (WAL, synchronous=FULL).
- ``psycopg``: the relay's ``PostgresSpool`` (psycopg 3 async, ``psycopg_pool``), with its
  connection check before each use, its timeout and its migration test.
- ``psycopg-raw``: the same statement on a bare ``psycopg_pool`` (the driver alone).

Every PostgreSQL row is one autocommitted statement per add (one round trip).
- ``asyncpg``: the same statement on an ``asyncpg`` pool of the same size, for the
  driver decision only; skipped when asyncpg is not installed (it is no dependency of the
  relay: ``pip install asyncpg`` into the venv to compare).

PostgreSQL is a private cluster (``tests.postgres``) on loopback started here with
``fsync=on`` and ``synchronous_commit=on``, so a commit is on disk as SQLite's is.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from relay.delivery.spool import PostgresSpool, SqliteSpool
from tests.postgres import PgCluster

BODY = b'{"subject":"bench","text":"' + b"x" * 4000 + b'"}'
POOL_SIZE = 10
Add = Callable[[str], Awaitable[Any]]


class DurableCluster(PgCluster):
    """The tests' private cluster, but every commit flushed to disk (as in production)."""

    SERVER_SETTINGS = "-c fsync=on -c synchronous_commit=on"


async def add_args(spool: SqliteSpool | PostgresSpool, key: str) -> int:
    return await spool.add(
        BODY, key, mail_from="app@example.com", rcpt_tos=["a@example.org"],
        error="UpstreamServerError: 503", first_retry=30, max_age=86400,
    )  # fmt: skip


async def measure(add: Add, adds: int, writers: int, prefix: str) -> tuple[float, list[float]]:
    """(writes per second, each add's latency in seconds) for ``adds`` adds."""
    keys = iter(range(adds))
    latencies: list[float] = []

    async def writer() -> None:
        for n in keys:
            started = time.perf_counter()
            await add(f"{prefix}-{n}")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    return adds / (time.perf_counter() - started), latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


_SQL = (
    "INSERT INTO relay_spool (idempotency_key, mail_from, rcpt_tos, body, size,"
    " created, updated, next_attempt, expires, last_error, route)"
    " VALUES ({0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, 'default')"
    " ON CONFLICT (idempotency_key) DO UPDATE SET state = 'queued'"
    " WHERE relay_spool.state = 'dead' RETURNING id"
)


def _values(key: str) -> tuple[Any, ...]:
    now = time.time()
    return (key, "app@example.com", ["a@example.org"], BODY, len(BODY), now, now, now + 30,
            now + 86400, "503")  # fmt: skip


async def psycopg_raw_add(url: str) -> tuple[Add, Callable[[], Awaitable[None]]]:
    """The same statement on a bare psycopg pool: no connection check, no timeout, no
    migration test; the driver's own cost, to compare with asyncpg's."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, min_size=1, max_size=POOL_SIZE, open=False, kwargs={"autocommit": True}
    )
    await pool.open(wait=True)
    sql = _SQL.format(*(["%s"] * 10))

    async def add(key: str) -> Any:
        async with pool.connection() as db:
            cursor = await db.execute(sql, _values(key))
            return await cursor.fetchone()

    return add, pool.close


async def asyncpg_add(url: str) -> tuple[Add, Callable[[], Awaitable[None]]] | None:
    """An ``add`` through asyncpg (same SQL as ``PostgresSpool.add``), or None without it."""
    try:
        import asyncpg  # type: ignore[import-not-found]  # noqa: PLC0415 (optional)
    except ImportError:
        return None
    pool = await asyncpg.create_pool(url, min_size=1, max_size=POOL_SIZE)
    sql = _SQL.format(*(f"${n}" for n in range(1, 11)))

    async def add(key: str) -> Any:
        async with pool.acquire() as db:  # autocommit: one statement, one round trip
            return await db.fetchval(sql, *_values(key))

    return add, pool.close


async def run(adds: int, writers: int, rounds: int) -> dict[str, dict[str, float]]:
    cluster = DurableCluster()
    cluster.init()
    cluster.start()
    try:
        return await _run_all(cluster, adds, writers, rounds)
    finally:
        cluster.destroy()


async def _run_all(
    cluster: PgCluster, adds: int, writers: int, rounds: int
) -> dict[str, dict[str, float]]:
    url = cluster.database()
    folder = Path(tempfile.mkdtemp(prefix="bench-spool-"))
    sqlite = SqliteSpool(folder)
    shared = PostgresSpool(url, pool_size=POOL_SIZE)
    await shared.open()
    backends: dict[str, Add] = {
        "sqlite": lambda key: add_args(sqlite, key),
        "psycopg": lambda key: add_args(shared, key),
    }
    closers = [sqlite.close, shared.close]
    raw_add, raw_close = await psycopg_raw_add(url)
    backends["psycopg-raw"] = raw_add
    closers.append(raw_close)
    other = await asyncpg_add(url)
    if other is not None:
        backends["asyncpg"] = other[0]
        closers.append(other[1])
    else:
        print("asyncpg not installed: its row is skipped (pip install asyncpg to compare)")
    raw: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in backends}
    try:
        for n in range(rounds):
            for name, add in backends.items():
                raw[name].append(await measure(add, adds, writers, f"{name}-{n}"))
    finally:
        for close in closers:
            await close()
    return {name: summarise(results) for name, results in raw.items()}


def summarise(results: list[tuple[float, list[float]]]) -> dict[str, float]:
    """Medians over rounds of writes/s and of the p50/p95/p99 latency (ms)."""
    return {
        "writes_per_s": statistics.median(rate for rate, _ in results),
        **{
            f"p{p}_ms": statistics.median(percentile(lat, p) for _, lat in results) * 1000
            for p in (50, 95, 99)
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spool", description=__doc__)
    parser.add_argument("--adds", type=int, default=2000, help="adds per round (2000)")
    parser.add_argument("--writers", type=int, default=16, help="adds at once (16)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per backend (3)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 50 adds, 1 round")
    args = parser.parse_args(argv)
    adds, rounds = (50, 1) if args.quick else (args.adds, args.rounds)
    table = asyncio.run(run(adds, args.writers, rounds))
    print(f"spool add(): {adds} adds x {rounds} rounds, {args.writers} writers at once")
    print("| backend | writes/s | p50 ms | p95 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, row in table.items():
        print(f"| {name} | {row['writes_per_s']:.0f} | {row['p50_ms']:.2f} | "
              f"{row['p95_ms']:.2f} | {row['p99_ms']:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
