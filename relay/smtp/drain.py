"""Sessions a server can drain at shutdown, and the refusal new connections get meanwhile."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from relay.smtp.guard import GuardedSMTP
from relay.smtp.replies import SERVICE_NOT_AVAILABLE

__all__ = ["Refuser", "TrackedSMTP", "finish_sessions"]


class Refuser(asyncio.Protocol):
    """A connection that arrives while the relay shuts down: ``421 4.3.2``, then close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports are not asyncio.WriteTransport subclasses.
        writer = cast(asyncio.WriteTransport, transport)
        writer.write(f"{SERVICE_NOT_AVAILABLE}\r\n".encode("ascii"))
        writer.close()


async def finish_sessions(sessions: set[TrackedSMTP], grace: float) -> int:
    """Wait up to ``grace`` seconds for ``sessions`` to end; cancel the rest and count them."""
    tasks = [t for s in sessions if (t := s._handler_coroutine) is not None]
    if not tasks:
        return 0
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)


class TrackedSMTP(GuardedSMTP):
    """A session that leaves its server's registry when its connection closes.

    ``drain`` (shutdown) closes it with 421 at once if it is between transactions, or
    right after the transaction in progress ends (DATA answered, or RSET).
    """

    def __init__(self, handler: Any, registry: set[TrackedSMTP], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._registry = registry
        self._draining = False

    def drain(self) -> None:
        self._draining = True
        if self.envelope is None or self.envelope.mail_from is None:
            self._refuse()

    async def smtp_DATA(self, arg: str) -> None:
        await super().smtp_DATA(arg)
        if self._draining:
            self._refuse()

    async def smtp_RSET(self, arg: str) -> None:
        await super().smtp_RSET(arg)
        if self._draining:
            self._refuse()

    def _refuse(self) -> None:
        """Send ``421 4.3.2`` and close (the write is flushed before the close)."""
        transport = cast(asyncio.WriteTransport | None, self.transport)  # uvloop's too
        if transport is not None and not transport.is_closing():
            transport.write(f"{SERVICE_NOT_AVAILABLE}\r\n".encode("ascii"))
            transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._registry.discard(self)
