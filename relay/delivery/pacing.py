"""Outbound pacing: stay under AhaSend's rate limit and bound the calls in flight.

AhaSend allows 100 requests/s per account with bursts of 200. A bulk job pushing mail
through the relay as fast as it can would otherwise collect 429s. ``TokenBucket`` hands
out send slots at ``RELAY_API_RATE`` per second with bursts of ``RELAY_API_BURST``; a
caller that finds the bucket empty reserves the next free slot and waits for it (the
in-transaction retry deadline bounds that wait; past it the message is spooled).
``PacedSender`` also caps concurrent API calls (``RELAY_API_CONCURRENCY``) so memory and
sockets stay bounded whatever the number of SMTP sessions.

Waiters wake on ticks (``PACING_TICK``, 200 ms of the bucket's clock), not each at its own
slot: a paced relay then works in batches, like a busy one, instead of waking its event
loop for every single message (one loop wake-up, cold caches and one lone write per
request, per SMTP reply and per next command). Measured at the default 90/s with 50
sessions, waking each waiter at its own slot cost 1.7-1.8x the CPU per message of the
unpaced relay. On 100 ms ticks (about 9 messages a batch) it still cost 1.2-1.5x on a
quiet machine, where every batch meets cold caches; 200-500 ms ticks (18-45 a batch) cost
less in side-by-side runs (bench/README.md). Waking on the tick *after* a slot never sends
earlier than the bucket allows; a send is at most one tick late, so over any interval of
L seconds at most ``burst + rate * (L + tick)`` calls go out (``most_sent``): at the defaults (90/s,
burst 180) 198 + 90 L, inside AhaSend's 200 + 100 L for every L (a tick over 0.22 s
would not be). A waiting message waits at most
one tick longer.

The bucket is used from one event loop only, so it needs no lock. Its clock is injected.
``PacedSender`` takes any ``Pacer``: this process's ``TokenBucket``, or a bucket shared
by every replica through PostgreSQL (``relay.delivery.pacing_shared``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from relay.delivery.sender import Delivery, Sender
from relay.translate.wire import Body

__all__ = [
    "PACING_TICK",
    "PacedSender",
    "Pacer",
    "Slot",
    "TokenBucket",
    "most_sent",
    "until_tick",
]

PACING_TICK = 0.2
"""Seconds: waiters for a token wake together on multiples of this (see the module doc)."""


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

    def now(self) -> float:
        """The clock the waits are measured on (ticks are aligned to it)."""
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

    def now(self) -> float:
        """The bucket's clock."""
        return self._clock()

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
        tick: float = PACING_TICK,
    ) -> None:
        """``tick`` 0 wakes each waiter at its own slot (no batching)."""
        self._inner = inner
        self._tick = tick
        self._bucket = bucket
        self._slots = asyncio.Semaphore(max_concurrency)
        self._sleep = sleep

    async def send(self, body: Body, idempotency_key: str) -> Delivery:
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
            await self._sleep(until_tick(self._bucket.now(), slot.wait, self._tick))
        except asyncio.CancelledError:
            slot.give_back()
            raise


def most_sent(seconds: float, rate: float, burst: float, tick: float = PACING_TICK) -> float:
    """The most calls a ``PacedSender`` at ``rate``/``burst`` sends in any ``seconds``-long
    interval: each is at most one ``tick`` late, so ``burst + rate * (seconds + tick)``."""
    return burst + rate * (seconds + tick)


def until_tick(now: float, wait: float, tick: float) -> float:
    """``wait`` lengthened to end on the first multiple of ``tick`` at or after
    ``now + wait`` (unchanged when ``tick`` is 0): never shorter, less than ``tick`` longer."""
    if tick <= 0:
        return wait
    due = now + wait
    return max(wait, math.ceil(due / tick) * tick - now)
