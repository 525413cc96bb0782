"""Shutdown: the refusal new connections get, and the wait for the sessions in progress.

A ``RelaySession`` drains itself (``RelaySession.drain``: ``421 4.3.2`` between
transactions, or after the one in progress); ``finish_sessions`` waits for them. When the
grace period ends it sets ``grace_over``: an API call still running is abandoned
(``relay.delivery.dispatch``), and its session gets ``ANSWER_GRACE`` seconds more to
spool the message and answer it (250, or 421 without a spool) before it is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final, cast

from relay.smtp.replies import SERVICE_NOT_AVAILABLE
from relay.smtp.session import RelaySession

__all__ = ["ANSWER_GRACE", "Refuser", "finish_sessions"]

ANSWER_GRACE: Final = 5.0
"""Seconds past the grace period for abandoned API calls to be spooled and answered."""


class Refuser(asyncio.Protocol):
    """A connection that arrives while the relay shuts down: ``421 4.3.2``, then close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports are not asyncio.WriteTransport subclasses.
        writer = cast(asyncio.WriteTransport, transport)
        writer.write(f"{SERVICE_NOT_AVAILABLE}\r\n".encode("ascii"))
        writer.close()


async def finish_sessions(
    sessions: Iterable[RelaySession],
    grace: float,
    grace_over: asyncio.Event | None = None,
    answer_grace: float = ANSWER_GRACE,
) -> int:
    """Wait up to ``grace`` seconds for ``sessions`` to end; cancel the rest and count them.

    With ``grace_over``: set when ``grace`` has passed, then the sessions still open get
    ``answer_grace`` seconds more to answer the transaction in progress.
    """
    tasks = [t for s in sessions if (t := s.task) is not None]
    if not tasks:
        return 0
    _, pending = await asyncio.wait(tasks, timeout=grace)
    if pending and grace_over is not None:
        grace_over.set()
        _, pending = await asyncio.wait(pending, timeout=answer_grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)
