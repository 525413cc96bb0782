"""The shared token bucket's cost: latency of one take and takes per second.

    python -m bench.pacing_shared                 # a private cluster (tests/postgres.py)
    python -m bench.pacing_shared --url postgresql://relay:pw@db:5432/relay

``--stores`` TokenStores (one per replica, each its own connection) take tokens of one
account at once, ``--takers`` concurrent takers each, with a rate so high that nobody
waits: what is measured is the statement, not the pacing. Prints p50/p95/p99 of one
take (ms) and the takes per second of all stores together, for 1 and ``--stores``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

from relay.delivery.pacing_shared import TokenStore

ACCOUNT = "bench-account"


async def measure(url: str, stores: int, takers: int, takes: int) -> dict[str, float]:
    """``takes`` takes per taker; latencies (ms) and the aggregate rate."""
    opened = [TokenStore(url, timeout=5.0) for _ in range(stores)]
    latencies: list[float] = []

    async def taker(store: TokenStore) -> None:
        for _ in range(takes):
            began = time.perf_counter()
            wait = await store.take(ACCOUNT, 1e9, 1_000_000)
            latencies.append((time.perf_counter() - began) * 1000)
            assert wait is not None, "the database did not answer"

    try:
        for store in opened:  # connect (and create the table) outside the measurement
            await store.take(ACCOUNT, 1e9, 1_000_000)
        began = time.perf_counter()
        await asyncio.gather(*(taker(s) for s in opened for _ in range(takers)))
        elapsed = time.perf_counter() - began
    finally:
        for store in opened:
            await store.aclose()
    cuts = statistics.quantiles(latencies, n=100)
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "per_s": len(latencies) / elapsed}


@contextmanager
def private_cluster() -> Iterator[str]:
    """A throwaway cluster from the tests' helper; its fresh database's URL."""
    from tests.postgres import PgCluster  # noqa: PLC0415 - only without --url

    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster.database()
    finally:
        cluster.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="libpq URL of a database to use (default: private)")
    parser.add_argument("--stores", type=int, default=3)
    parser.add_argument("--takers", type=int, default=8)
    parser.add_argument("--takes", type=int, default=250)
    args = parser.parse_args()

    def run(url: str) -> None:
        print("| stores | takers each | p50 ms | p95 ms | p99 ms | takes/s |")
        print("|---|---|---|---|---|---|")
        for stores in sorted({1, args.stores}):
            row = asyncio.run(measure(url, stores, args.takers, args.takes))
            print(f"| {stores} | {args.takers} | {row['p50']:.2f} | {row['p95']:.2f} "
                  f"| {row['p99']:.2f} | {row['per_s']:.0f} |")  # fmt: skip

    if args.url:
        run(args.url)
    else:
        with private_cluster() as url:
            run(url)


if __name__ == "__main__":
    main()
