"""Connection admission: a cap on concurrent sessions, per client and in all, and a per-peer rate.

Trusted clients (inside RELAY_ALLOWED_NETWORKS) may take every slot; others only
``max_connections - reserved``, so the reserved slots stay free for trusted clients when
outsiders hold the rest. Each client address holds at most ``per_client`` sessions
(``per_trusted_client`` when trusted; 0: no cap), as Postfix's
``smtpd_client_connection_count_limit``.

``ConnectionLimiter.admit`` is asked once per connection (after the PROXY header when
the PROXY protocol is on, so the limit applies to the real client) and answers with the
refusal reply or None; every admitted connection must be ``release``d exactly once.

Stress (as Postfix's ``${stress?...}``): from ``STRESS_FRACTION`` of ``max_connections``
open on, ``stressed`` is true and the sessions shorten their idle timeout
(RELAY_STRESS_SMTP_TIMEOUT), so idle clients give their slots back.

The per-peer rate is a sliding window of one minute. Memory is bounded: at most
``max_peers`` addresses are remembered, the least recently seen forgotten first.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable

from relay.smtp.replies import (
    CLIENT_CONNECTIONS_EXCEEDED,
    PEER_RATE_EXCEEDED,
    TOO_MANY_CONNECTIONS,
    Reply,
)

__all__ = ["STRESS_FRACTION", "ConnectionLimiter"]

WINDOW = 60.0
STRESS_FRACTION = 0.8


class ConnectionLimiter:
    """``max_connections`` concurrent sessions; ``per_peer_rate`` connections a minute (0: off)."""

    def __init__(
        self,
        max_connections: int,
        per_peer_rate: int,
        *,
        per_client: int = 0,
        per_trusted_client: int = 0,
        reserved: int = 0,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_connections = max_connections
        self.per_peer_rate = per_peer_rate
        self.per_client, self.per_trusted_client = per_client, per_trusted_client
        self.reserved = reserved
        self.active = 0
        self._open: Counter[str] = Counter()  # sessions per client address (active ones only)
        self._max_peers = max_peers
        self._clock = clock
        self._recent: OrderedDict[str, deque[float]] = OrderedDict()

    def admit(self, peer: str, *, rate_limited: bool = True) -> Reply | None:
        """None and one more active connection, or the reply that refuses this one.

        ``rate_limited=False`` exempts ``peer`` from the per-peer rate (trusted networks,
        like Postfix's ``smtpd_client_event_limit_exceptions = $mynetworks``).
        """
        trusted = not rate_limited
        if self.active >= self.max_connections - (0 if trusted else self.reserved):
            return TOO_MANY_CONNECTIONS
        cap = self.per_trusted_client if trusted else self.per_client
        if cap and self._open[peer] >= cap:
            return CLIENT_CONNECTIONS_EXCEEDED
        if rate_limited and self.per_peer_rate and not self._within_rate(peer):
            return PEER_RATE_EXCEEDED
        self.active += 1
        self._open[peer] += 1
        return None

    @property
    def stressed(self) -> bool:
        """True while ``STRESS_FRACTION`` of the slots (or more) are taken."""
        return self.active >= max(1, math.ceil(self.max_connections * STRESS_FRACTION))

    @property
    def peers_remembered(self) -> int:
        """How many peer addresses the per-peer rate remembers (at most ``max_peers``)."""
        return len(self._recent)

    def release(self, peer: str = "") -> None:
        """An admitted connection of ``peer`` ended."""
        self.active = max(0, self.active - 1)
        if self._open[peer] > 1:
            self._open[peer] -= 1
        else:
            self._open.pop(peer, None)

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
