"""Retries inside the SMTP transaction, so a brief API hiccup never reaches the client.

``RetryingSender`` wraps any ``Sender``. A transient failure that a retry can cure (429,
409 in progress, 5xx, timeout, connection error) is retried with the relay's one backoff
rule (``relay.delivery.policy.TRANSACTION_BACKOFF``: exponential with jitter, waiting a
``Retry-After`` instead when the API sends one), always with the same
Idempotency-Key, so AhaSend delivers at most once however many attempts reach it.

Everything happens within one deadline (``RELAY_RETRY_DEADLINE``), kept well under the
SMTP client's own timeout: each attempt is cut at the deadline, and a retry whose wait
would overrun it is not made. The last error is then raised for the caller (the spool or
a 4xx reply). ``stop_retrying`` (shutdown) ends every wait at once and makes each send
raise its last error after the attempt in progress, so that a transaction still in
flight is answered (spooled or 4xx) within the shutdown grace period. An open circuit
breaker (``relay.delivery.circuit``) does the same for an outage: no attempt for new
sends (only a rare probe when the breaker allows one), and no more waiting for sends
between retries.

Clock, sleep and randomness are injected so tests need no real waiting.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from relay.delivery.events import NO_EVENTS, DeliveryEvents
from relay.delivery.policy import TRANSACTION_BACKOFF, Backoff, retry_after_of
from relay.delivery.sender import Delivery, Sender
from relay.errors import (
    RelayError,
    UpstreamServerError,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from relay.ops.log import get_logger
from relay.translate.wire import Body

if TYPE_CHECKING:
    from relay.delivery.circuit import CircuitBreaker

__all__ = ["RETRYABLE", "RetryingSender"]

log = get_logger("relay.delivery.retry")

RETRYABLE: tuple[type[RelayError], ...] = (
    UpstreamUnreachable,
    UpstreamTimeout,
    UpstreamThrottled,  # includes UpstreamBusy (409 in progress)
    UpstreamServerError,
)
"""Failures a later identical request can cure. 401/404 and unknown statuses are not."""

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class _DeadlineCut(UpstreamTimeout):
    """An attempt cut off by the retry deadline rather than by the API's own timeout."""


class RetryingSender:
    """A ``Sender`` that retries ``inner`` within ``deadline`` seconds per message.

    ``deadline <= 0`` disables retries: one attempt, exactly like ``inner``. Senders given
    one ``stopping`` event (one per route) all stop retrying once it is set.
    """

    def __init__(
        self,
        inner: Sender,
        *,
        deadline: float,
        backoff: Backoff | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        stopping: asyncio.Event | None = None,
        events: DeliveryEvents = NO_EVENTS,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._events = events
        self._inner = inner
        self._deadline = deadline
        self._backoff = backoff or TRANSACTION_BACKOFF
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._stopping = stopping if stopping is not None else asyncio.Event()
        self._breaker = breaker

    def stop_retrying(self) -> None:
        """Shutdown: no more retries; waiting sends raise their last error now."""
        self._stopping.set()

    async def send(self, body: Body, idempotency_key: str) -> Delivery:
        """Deliver ``body``, retrying transient failures; raises the last error at the end.

        With the breaker open: ``UpstreamUnreachable`` at once, or one probe attempt.
        """
        if self._breaker is not None and self._breaker.is_open:
            if not self._breaker.allow_probe():
                raise UpstreamUnreachable("circuit open")
            return await self._inner.send(body, idempotency_key)
        if self._deadline <= 0:
            return await self._inner.send(body, idempotency_key)
        deadline = self._clock() + self._deadline
        attempt, last = 0, None
        while True:
            try:
                return await self._attempt(body, idempotency_key, deadline)
            except _DeadlineCut as exc:
                # Our own deadline is no news to the client: report what the API last said.
                raise (last or exc) from exc
            except RETRYABLE as exc:
                last = exc
                delay = self._backoff.delay(attempt + 1, self._rng, retry_after_of(exc))
                if self._halted() or self._clock() + delay >= deadline:
                    raise
                self._events.retried(type(exc).__name__)
                log.info(
                    "retrying",
                    idempotency_key=idempotency_key,
                    attempt=attempt + 1,
                    error=type(exc).__name__,
                    delay_s=round(delay, 3),
                )
                if not await self._pause(delay):
                    raise
                attempt += 1

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def _attempt(self, body: Body, key: str, deadline: float) -> Delivery:
        """One call of ``inner``, cut off at ``deadline``."""
        try:
            async with asyncio.timeout(max(deadline - self._clock(), 0.0)):
                return await self._inner.send(body, key)
        except TimeoutError as exc:
            raise _DeadlineCut("retry deadline reached") from exc

    def _halted(self) -> bool:
        """Shutdown, or an open breaker: no more retries."""
        return self._stopping.is_set() or (self._breaker is not None and self._breaker.is_open)

    async def _pause(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; False when shutdown or an open breaker cut it short."""
        waits: list[asyncio.Future[object]] = [asyncio.ensure_future(self._sleep(delay))]
        waits.append(asyncio.ensure_future(self._stopping.wait()))
        if self._breaker is not None:
            waits.append(asyncio.ensure_future(self._breaker.wait_open()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        return not self._halted()
