"""The upstream limit: the relay's own request bodies POSTed straight to the stand-in.

The bodies are what the relay would send for the benchmark's messages (``relay.translate.message
.translate`` then ``relay.translate.wire.serialise``, computed once up front), POSTed with an
``httpx.AsyncClient`` on the transport the relay would use (``--transport``, the same
choice as ``AHASEND_API_TRANSPORT``; ``httpx`` is plain httpx), with the relay's headers,
keep-alive and at most C connections, by C concurrent workers. Latency is per request,
send → response.

``python -m bench.direct --base-url URL --conns C --count N --kinds small|mix`` follows
the ready/go handshake of ``bench.worker`` and prints one JSON result line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections import Counter
from typing import Any

import httpx

from bench import messages
from bench.loops import new_event_loop
from bench.worker import emit, own_cpu, percentiles, wait_for_go
from relay.delivery.transport import build_transport
from relay.translate.message import translate
from relay.translate.wire import as_bytes, serialise

ACCOUNT_ID = "6a3c1f0e-0000-4000-8000-00000000bec4"
API_KEY = "aha-sk-bench-" + "0" * 51
RCPT = "someone@recipient.example"


def request_bodies(kinds: str, count: int) -> list[bytes]:
    """``count`` request bodies, in the order the load generator would send messages."""
    names = messages.MIX if kinds == "mix" else (kinds,)
    bodies = {}
    for name in set(names):
        translated = translate(messages.render(name, RCPT), messages.SENDER, [RCPT])
        bodies[name] = as_bytes(serialise(translated.payloads[0]))  # a large one in memory too
    return [bodies[names[i % len(names)]] for i in range(count)]


async def _worker(
    client: httpx.AsyncClient,
    bodies: list[bytes],
    counter: itertools.count[int],
    latencies: list[float],
    errors: Counter[str],
) -> None:
    path = f"/v2/accounts/{ACCOUNT_ID}/messages/conversation"
    while (index := next(counter)) < len(bodies):
        started = time.perf_counter()
        try:
            response = await client.post(
                path, content=bodies[index], headers={"Idempotency-Key": f"bench-{index}"}
            )
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] += 1
            continue
        if response.is_success:
            latencies.append(time.perf_counter() - started)
        else:
            errors[f"HTTP {response.status_code}"] += 1


async def run(base_url: str, conns: int, bodies: list[bytes], transport: str) -> dict[str, Any]:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    counter = itertools.count()
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": "ahasend-relay-bench",
    }
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        limits=limits,
        timeout=30.0,
        transport=build_transport(transport, conns),
    ) as client:
        cpu0, started = own_cpu(), time.perf_counter()
        await asyncio.gather(
            *(_worker(client, bodies, counter, latencies, errors) for _ in range(conns))
        )
        elapsed = time.perf_counter() - started
    return {
        "sent": len(latencies),
        "errors": sum(errors.values()),
        "error_samples": dict(errors.most_common(5)),
        "elapsed_s": round(elapsed, 4),
        "msgs_per_s": round(len(latencies) / elapsed, 1) if elapsed else None,
        "generator_cpu_s": round(own_cpu() - cpu0, 3),
        **percentiles(latencies),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.direct", description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--kinds", default="small", choices=["small", "html", "attach1m", "mix"])
    parser.add_argument("--transport", default="auto", choices=["auto", "httpx", "aiohttp"])
    parser.add_argument("--loop", default="asyncio", choices=["auto", "asyncio", "uvloop"])
    args = parser.parse_args(argv)
    bodies = request_bodies(args.kinds, args.count)
    loop = new_event_loop(args.loop)
    try:
        wait_for_go()
        emit(
            loop.run_until_complete(
                run(args.base_url, min(args.conns, args.count), bodies, args.transport)
            )
        )
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
