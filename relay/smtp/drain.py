"""Shutdown: the refusal new connections get, and the wait for the sessions in progress.

A ``RelaySession`` drains itself (``RelaySession.drain``: ``421 4.3.2`` between
transactions, or after the one in progress); ``finish_sessions`` waits for them. When the
grace period ends it sets ``grace_over``: an API call still running is abandoned
(``relay.delivery.dispatch``), and a session delivering gets ``ANSWER_GRACE`` seconds more to
spool the message and answer it (250, or 421 without a spool); a session still open then
(a client still uploading its DATA) is answered ``421 4.3.2`` and closed.
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
    """Wait up to ``grace`` seconds for ``sessions`` to end; cut the rest and count them.

    With ``grace_over``: set when ``grace`` has passed, then the sessions still delivering
    a message get ``answer_grace`` seconds more to answer it. Every other session still
    open gets ``421 4.3.2`` before it is closed and its task cancelled.
    """
    serving = {t: s for s in sessions if (t := s.task) is not None}
    if not serving:
        return 0
    _, pending = await asyncio.wait(serving, timeout=grace)
    delivering = {t for t in pending if serving[t].delivering}
    if delivering and grace_over is not None:
        grace_over.set()
        _, still = await asyncio.wait(delivering, timeout=answer_grace)
        pending = (pending - delivering) | still
    for task in pending:
        serving[task].cut()
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)
