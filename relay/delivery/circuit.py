"""A circuit breaker in front of the API: in an outage, stop holding SMTP clients.

``CircuitBreaker`` counts consecutive transient failures of one route's API calls (those
``relay.delivery.retry.RETRYABLE`` names: refused/reset connections, timeouts, 5xx, 429).
After ``threshold`` (3) in a row it *opens*: ``RetryingSender`` then makes no attempt and
no retry for new transactions (the dispatcher spools them at once, or the client gets the
4xx at once), and a transaction already waiting between retries stops waiting. Any
successful call closes it again: the spool worker's next attempt does, and without a
spool a single probe attempt is let through every ``probe_interval`` seconds.

A ``Retry-After`` of at most ``short_retry_after`` seconds on a 429 is ordinary pacing,
not an outage, and does not count. ``circuit_open`` / ``circuit_closed`` are logged;
``on_change(open)`` lets a gauge follow the state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from relay.delivery.policy import retry_after_of
from relay.delivery.retry import RETRYABLE
from relay.delivery.sender import Delivery, Sender
from relay.errors import RelayError
from relay.ops.log import get_logger
from relay.translate.wire import Body

__all__ = ["BreakerSender", "CircuitBreaker"]

log = get_logger("relay.delivery.circuit")


class CircuitBreaker:
    """Open after ``threshold`` consecutive transient failures; closed by one success."""

    def __init__(
        self,
        *,
        threshold: int = 3,
        probe_interval: float = 5.0,
        short_retry_after: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._threshold = threshold
        self._probe_interval = probe_interval
        self._short_retry_after = short_retry_after
        self._clock = clock
        self._on_change = on_change
        self._failures = 0
        self._opened = asyncio.Event()
        self._next_probe = 0.0

    @property
    def is_open(self) -> bool:
        return self._opened.is_set()

    async def wait_open(self) -> None:
        """Return once the breaker is open (at once if it already is)."""
        await self._opened.wait()

    def allow_probe(self) -> bool:
        """While open: True at most once per ``probe_interval`` (one trial attempt)."""
        now = self._clock()
        if now < self._next_probe:
            return False
        self._next_probe = now + self._probe_interval
        return True

    def counts(self, error: RelayError) -> bool:
        """Whether ``error`` says the API is down (not a short 429 pacing hint)."""
        if not isinstance(error, RETRYABLE):
            return False
        hint = retry_after_of(error)
        return hint is None or hint > self._short_retry_after

    def record_success(self) -> None:
        self._failures = 0
        if self.is_open:
            self._opened.clear()
            log.info("circuit_closed")
            self._notify(False)

    def record_failure(self, error: RelayError) -> None:
        if not self.counts(error):
            return
        self._failures += 1
        if self._failures >= self._threshold and not self.is_open:
            self._opened.set()
            self._next_probe = self._clock() + self._probe_interval
            log.warning("circuit_open", failures=self._failures, error=type(error).__name__)
            self._notify(True)

    def _notify(self, opened: bool) -> None:
        if self._on_change is not None:
            self._on_change(opened)


class BreakerSender:
    """``inner`` whose every outcome is recorded on ``breaker`` (the route's one sender)."""

    def __init__(self, inner: Sender, breaker: CircuitBreaker) -> None:
        self._inner = inner
        self.breaker = breaker

    async def send(self, body: Body, idempotency_key: str) -> Delivery:
        try:
            delivery = await self._inner.send(body, idempotency_key)
        except RelayError as exc:
            self.breaker.record_failure(exc)
            raise
        self.breaker.record_success()
        return delivery

    async def aclose(self) -> None:
        await self._inner.aclose()
