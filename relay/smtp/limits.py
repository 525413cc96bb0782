"""Connection admission: a cap on concurrent sessions and a per-peer connection rate.

``ConnectionLimiter.admit`` is asked once per connection (after the PROXY header when
the PROXY protocol is on, so the limit applies to the real client) and answers with the
refusal reply or None; every admitted connection must be ``release``d exactly once.

The per-peer rate is a sliding window of one minute. Memory is bounded: at most
``max_peers`` addresses are remembered, the least recently seen forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

from relay.smtp.replies import PEER_RATE_EXCEEDED, TOO_MANY_CONNECTIONS, Reply

__all__ = ["ConnectionLimiter"]

WINDOW = 60.0


class ConnectionLimiter:
    """``max_connections`` concurrent sessions; ``per_peer_rate`` connections a minute (0: off)."""

    def __init__(
        self,
        max_connections: int,
        per_peer_rate: int,
        *,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_connections = max_connections
        self.per_peer_rate = per_peer_rate
        self.active = 0
        self._max_peers = max_peers
        self._clock = clock
        self._recent: OrderedDict[str, deque[float]] = OrderedDict()

    def admit(self, peer: str, *, rate_limited: bool = True) -> Reply | None:
        """None and one more active connection, or the reply that refuses this one.

        ``rate_limited=False`` exempts ``peer`` from the per-peer rate (trusted networks,
        like Postfix's ``smtpd_client_event_limit_exceptions = $mynetworks``).
        """
        if self.active >= self.max_connections:
            return TOO_MANY_CONNECTIONS
        if rate_limited and self.per_peer_rate and not self._within_rate(peer):
            return PEER_RATE_EXCEEDED
        self.active += 1
        return None

    @property
    def peers_remembered(self) -> int:
        """How many peer addresses the per-peer rate remembers (at most ``max_peers``)."""
        return len(self._recent)

    def release(self) -> None:
        """An admitted connection ended."""
        self.active = max(0, self.active - 1)

    def _within_rate(self, peer: str) -> bool:
        now = self._clock()
        times = self._recent.pop(peer, deque())
        while times and times[0] <= now - WINDOW:
            times.popleft()
        allowed = len(times) < self.per_peer_rate
        if allowed:
            times.append(now)
        self._recent[peer] = times
        while len(self._recent) > self._max_peers:
            self._recent.popitem(last=False)
        return allowed
