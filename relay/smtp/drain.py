"""Shutdown: the refusal new connections get, and the wait for the sessions in progress.

A ``RelaySession`` drains itself (``RelaySession.drain``: ``421 4.3.2`` between
transactions, or after the one in progress); ``finish_sessions`` waits for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import cast

from relay.smtp.replies import SERVICE_NOT_AVAILABLE
from relay.smtp.session import RelaySession

__all__ = ["Refuser", "finish_sessions"]


class Refuser(asyncio.Protocol):
    """A connection that arrives while the relay shuts down: ``421 4.3.2``, then close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports are not asyncio.WriteTransport subclasses.
        writer = cast(asyncio.WriteTransport, transport)
        writer.write(f"{SERVICE_NOT_AVAILABLE}\r\n".encode("ascii"))
        writer.close()


async def finish_sessions(sessions: Iterable[RelaySession], grace: float) -> int:
    """Wait up to ``grace`` seconds for ``sessions`` to end; cancel the rest and count them."""
    tasks = [t for s in sessions if (t := s.task) is not None]
    if not tasks:
        return 0
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)
