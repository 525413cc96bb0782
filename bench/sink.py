"""The SMTP ingest limit: a bare aiosmtpd server that accepts every message and drops it.

It does what every aiosmtpd-based gateway must do (SMTP dialogue, DATA de-dotting,
``250`` reply) and nothing else: no parsing, no HTTP. The relay's throughput is read
against it. Run as its own process: ``python -m bench.sink --port 0`` prints
``{"port": N}`` once it listens, then serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from aiosmtpd.smtp import SMTP

from bench.loops import new_event_loop
from bench.serving import serve_until_signalled


class _Discard:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        envelope.content = envelope.original_content = None
        return "250 2.0.0 OK discarded"


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = _Discard()

    def session() -> SMTP:
        return SMTP(
            handler,
            data_size_limit=64 * 1024 * 1024,
            decode_data=False,
            hostname="sink.bench",
            ident="bench sink",
        )

    server = await loop.create_server(session, host, port, backlog=1024)
    await serve_until_signalled(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", default="asyncio", choices=["auto", "asyncio", "uvloop"])
    args = parser.parse_args(argv)
    loop = new_event_loop(args.loop)
    try:
        loop.run_until_complete(serve(args.host, args.port))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
