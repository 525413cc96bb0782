"""How every bench server process runs: announce its port, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import signal


async def serve_until_signalled(server: asyncio.Server) -> None:
    """Print ``{"port": N}`` on stdout (the bench reads it), then serve until signalled."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await stop.wait()
    server.close()
