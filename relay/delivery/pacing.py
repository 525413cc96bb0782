"""Outbound pacing: stay under AhaSend's rate limit and bound the calls in flight.

AhaSend allows 100 requests/s per account with bursts of 200. A bulk job pushing mail
through the relay as fast as it can would otherwise collect 429s. ``TokenBucket`` hands
out send slots at ``RELAY_API_RATE`` per second with bursts of ``RELAY_API_BURST``; a
caller that finds the bucket empty reserves the next free slot and waits for it (the
in-transaction retry deadline bounds that wait; past it the message is spooled).
``PacedSender`` also caps concurrent API calls (``RELAY_API_CONCURRENCY``) so memory and
sockets stay bounded whatever the number of SMTP sessions.

The bucket is used from one event loop only, so it needs no lock. Its clock is injected.
``PacedSender`` takes any ``Pacer``: this process's ``TokenBucket``, or a bucket shared
by every replica through PostgreSQL (``relay.delivery.pacing_shared``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from relay.delivery.sender import Delivery, Sender

__all__ = ["PacedSender", "Pacer", "Slot", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class Slot:
    """One reserved send slot: usable after ``wait`` seconds; ``give_back`` if unused."""

    wait: float
    give_back: Callable[[], None]


class Pacer(Protocol):
    """Hands out send slots at the account's rate."""

    async def take(self) -> Slot:
        """Reserve the next slot (the caller sleeps ``wait`` seconds before using it)."""
        ...


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored; reservations may go into debt."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def reserve(self) -> float:
        """Take one token; return how many seconds to wait before using it (0: now)."""
        self._refill()
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    async def take(self) -> Slot:
        """``reserve`` as a ``Pacer``: the slot and how to give it back."""
        return Slot(self.reserve(), self.cancel)

    def cancel(self) -> None:
        """Give back a reserved token that will not be used."""
        self._tokens = min(self._burst, self._tokens + 1.0)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now


class PacedSender:
    """A ``Sender`` that waits for a token and a concurrency slot before each call."""

    def __init__(
        self,
        inner: Sender,
        bucket: Pacer,
        *,
        max_concurrency: int,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._inner = inner
        self._bucket = bucket
        self._slots = asyncio.Semaphore(max_concurrency)
        self._sleep = sleep

    async def send(self, body: bytes, idempotency_key: str) -> Delivery:
        async with self._slots:
            await self._wait_for_token()
            return await self._inner.send(body, idempotency_key)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def _wait_for_token(self) -> None:
        slot = await self._bucket.take()
        if slot.wait <= 0:
            return
        try:
            await self._sleep(slot.wait)
        except asyncio.CancelledError:
            slot.give_back()
            raise
