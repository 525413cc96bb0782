"""When to try again: the one backoff rule, and the spool's timing, built once from Settings.

``Backoff`` is the formula every retry of the relay uses: after the n-th failed attempt,
wait ``min(cap, base * 2**(n-1))`` seconds scaled by a random factor drawn from ``jitter``
(so clients that failed together do not retry in lockstep). Two instances exist:

- ``TRANSACTION_BACKOFF`` (``relay.delivery.retry``): 0.25 s doubling to 8 s, jitter
  [0.5, 1.0], inside the SMTP transaction's short deadline. A ``Retry-After`` from the API
  is waited for *instead*: with seconds to spare, the API's own estimate is the best one.
- ``SpoolPolicy.backoff`` (``relay.delivery.worker``): ``RELAY_SPOOL_RETRY_MIN`` doubling
  to ``RELAY_SPOOL_RETRY_MAX``, jitter [0.8, 1.2]. ``Retry-After`` is a *floor*: a long
  outage must not be polled at whatever pace the API last suggested.

``SpoolPolicy`` is everything about spooled mail's timing: when a newly spooled request
is first due (the dispatcher), the backoff between attempts, when to give up, how often
to look, how much to claim per round and for how long (the worker): the claim lasts
``RELAY_SPOOL_LEASE`` and a round claims no more than it can finish within it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

from relay.config import Settings
from relay.errors import RelayError, UpstreamThrottled

__all__ = [
    "TRANSACTION_BACKOFF",
    "Backoff",
    "SpoolPolicy",
    "batch_for",
    "retry_after_of",
    "round_time",
]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter; ``retry_after`` says how the API's hint counts."""

    base: float
    cap: float
    jitter: tuple[float, float] = (0.5, 1.0)
    retry_after: Literal["instead", "floor"] = "instead"

    def delay(self, failures: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait after ``failures`` failed attempts (1 after the first).

        ``retry_after`` (the API's ``Retry-After``, if any) replaces the computed wait or
        is its lower bound, as ``self.retry_after`` says.
        """
        if retry_after is not None and self.retry_after == "instead":
            return retry_after
        ceiling = min(self.cap, self.base * 2.0 ** min(failures - 1, 32))
        return max(ceiling * rng.uniform(*self.jitter), retry_after or 0.0)


TRANSACTION_BACKOFF = Backoff(base=0.25, cap=8.0)


def retry_after_of(error: RelayError) -> float | None:
    """The ``Retry-After`` seconds the API sent with ``error``, if any."""
    return error.retry_after if isinstance(error, UpstreamThrottled) else None


BATCH = 100


def _spool_backoff(retry_min: float = 30.0, retry_max: float = 900.0) -> Backoff:
    return Backoff(
        base=retry_min, cap=max(retry_max, retry_min), jitter=(0.8, 1.2), retry_after="floor"
    )


@dataclass(frozen=True, slots=True)
class SpoolPolicy:
    """The timing of spooled mail (seconds); ``from_settings`` is the relay's."""

    backoff: Backoff = field(default_factory=_spool_backoff)
    """Between attempts from the spool; its ``base`` is also the first attempt's delay."""
    max_age: float = 5 * 86400.0
    """A spooled request still failing this long after it was spooled dies ("expired")."""
    poll_interval: float = 1.0
    """Longest sleep between worker rounds (so ``queue retry`` takes effect soon)."""
    batch: int = BATCH
    """Entries claimed per worker round."""
    lease: float = 300.0
    """How long a round's claim lasts (``RELAY_SPOOL_LEASE``): longer than a round takes."""

    @property
    def first_retry(self) -> float:
        """Delay from spooling a request to its first attempt from the spool."""
        return self.backoff.base

    @classmethod
    def from_settings(cls, settings: Settings) -> SpoolPolicy:
        """``RELAY_SPOOL_RETRY_MIN``/``_MAX``, ``RELAY_SPOOL_MAX_AGE``, ``RELAY_SPOOL_LEASE``
        and a batch whose round fits in that lease (``batch_for``)."""
        return cls(
            backoff=_spool_backoff(settings.relay_spool_retry_min, settings.relay_spool_retry_max),
            max_age=settings.relay_spool_max_age,
            poll_interval=min(1.0, settings.relay_spool_retry_min),
            batch=batch_for(settings, settings.relay_spool_lease),
            lease=settings.relay_spool_lease,
        )


def round_time(settings: Settings, batch: int) -> float:
    """The longest one worker round of ``batch`` entries can take.

    The worst round: every send times out, ``RELAY_API_CONCURRENCY`` at a time
    (``batch / concurrency`` waves of ``AHASEND_API_TIMEOUT``), after waiting for the
    pacing of the whole batch (``batch / RELAY_API_RATE``).
    """
    waves = math.ceil(batch / settings.relay_api_concurrency)
    return waves * settings.ahasend_api_timeout + batch / settings.relay_api_rate


def batch_for(settings: Settings, lease: float) -> int:
    """The most entries (up to ``BATCH``, at least 1) one round can claim for ``lease``.

    The round must end with half an ``AHASEND_API_TIMEOUT`` to spare, so that no other
    replica can claim an entry while this one may still be sending it. (Settings refuse
    a lease under twice the timeout, so at least one wave always fits.)
    """
    spare = settings.ahasend_api_timeout / 2
    for batch in range(BATCH, 0, -1):
        if round_time(settings, batch) + spare <= lease:
            return batch
    return 1
