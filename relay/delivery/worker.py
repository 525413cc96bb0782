"""The spool worker: a background loop that delivers spooled messages.

Each round claims the due entries (oldest first, a batch at a time, each for ``lease``
seconds: no other worker gets them meanwhile) and sends each with its own stable
Idempotency-Key through its route's paced sender (``Router.spooled``; one attempt per
round; the spacing between rounds is the backoff). Outcomes:

- accepted (202, replayed or not) → ``delivered`` (recipients the API refused inside
  the 202 are logged and noted on the record);
- permanent rejection → ``dead`` with the API's reason, and a bounce notice if enabled;
- transient failure → attempt counted, next attempt after the policy's backoff
  (``relay.delivery.policy.SpoolPolicy``: exponential with jitter between
  ``RELAY_SPOOL_RETRY_MIN`` and ``RELAY_SPOOL_RETRY_MAX``, never sooner than the API's
  ``Retry-After``); past ``RELAY_SPOOL_MAX_AGE`` → ``dead`` ("expired").

The spool row is updated only after the API answered. A crash in between leaves the row
queued, and the resend after restart carries the same key, so AhaSend replays its stored
answer instead of sending twice. ``stop`` lets the round in progress finish (a safe
point); cancelling mid-send is safe for the same reason.

Spool depth, oldest age and attempts are logged as a ``spool`` event after rounds that
did something (at most every ``STATUS_MIN_INTERVAL`` seconds, and always when the spool
has just become empty), and at least every ``STATUS_INTERVAL`` seconds while mail is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

from relay.delivery.bounce import Bouncer
from relay.delivery.events import NO_EVENTS, DeliveryEvents
from relay.delivery.policy import SpoolPolicy, retry_after_of
from relay.delivery.route import Router
from relay.delivery.sender import Delivery
from relay.delivery.spool import SpoolBackend, SpoolEntry, SpoolStats
from relay.errors import PermanentError, RelayError, SpoolUnavailable, TransientError
from relay.ops.log import get_logger

__all__ = ["SpoolWorker"]

log = get_logger("relay.delivery.worker")
STATUS_INTERVAL = 60.0
STATUS_MIN_INTERVAL = 10.0


class SpoolWorker:
    """Delivers ``spool`` by ``router``'s routes; ``run`` until ``stop``."""

    def __init__(
        self,
        spool: SpoolBackend,
        router: Router,
        policy: SpoolPolicy,
        *,
        bouncer: Bouncer | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        events: DeliveryEvents = NO_EVENTS,
    ) -> None:
        self._events = events
        self._spool = spool
        self._router = router
        self._policy = policy
        self._bouncer = bouncer
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter
        self._stopping = asyncio.Event()
        self._last_status = 0.0

    async def run(self) -> None:
        """Deliver rounds until ``stop`` is called; a failing round is logged, not fatal."""
        log.info("worker_started", spool=self._spool.location)
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except SpoolUnavailable as exc:  # an outage, already logged by the spool: no trace
                log.warning("worker_round_failed", error=str(exc))
            except Exception:
                log.exception("worker_round_failed")
            await self._pause()
        log.info("worker_stopped")

    def stop(self) -> None:
        """Ask ``run`` to return after the round in progress."""
        self._stopping.set()

    async def run_once(self) -> int:
        """One round over the due entries; how many were attempted."""
        entries = await self._spool.claim(self._policy.batch, self._policy.lease)
        await asyncio.gather(*(self._deliver(entry) for entry in entries))
        await self._log_status(bool(entries))
        return len(entries)

    async def _deliver(self, entry: SpoolEntry) -> None:
        assert entry.body is not None
        try:
            sender = self._router.spooled(entry).sender
            delivery = await sender.send(entry.body, entry.idempotency_key)
        except PermanentError as exc:
            await self._give_up(entry, exc.detail or type(exc).__name__, attempted=True)
        except TransientError as exc:
            await self._failed(entry, exc)
        else:
            await self._delivered(entry, delivery)

    async def _delivered(self, entry: SpoolEntry, delivery: Delivery) -> None:
        refused = "; ".join(f"{rcpt}: {why}" for rcpt, why in delivery.failures)
        note = f"recipients refused by the API: {refused}" if refused else None
        await self._spool.mark_delivered(entry.id, delivery.message_ids, note)
        self._events.spool_event("delivered")
        log.info(
            "spool_delivered",
            spool_id=entry.id,
            attempts=entry.attempts + 1,
            message_ids=list(delivery.message_ids),
            replayed=delivery.replayed,
        )
        if note:
            log.warning("recipients_refused", spool_id=entry.id, refused=refused)

    async def _failed(self, entry: SpoolEntry, error: TransientError) -> None:
        reason = f"{type(error).__name__}: {error.detail}".rstrip(": ")
        now = self._clock()
        if now >= entry.expires:
            await self._give_up(
                entry,
                f"expired after {entry.attempts + 1} attempts; last error {reason}",
                attempted=True,
            )
            return
        delay = self._policy.backoff.delay(entry.attempts + 1, self._rng, retry_after_of(error))
        await self._spool.defer(entry.id, reason, now + delay)
        self._events.spool_event("deferred")
        log.info(
            "spool_deferred",
            spool_id=entry.id,
            attempts=entry.attempts + 1,
            error=reason,
            retry_in_s=round(delay, 1),
        )

    async def _give_up(self, entry: SpoolEntry, reason: str, *, attempted: bool) -> None:
        await self._spool.kill(entry.id, reason, attempted=attempted)
        self._events.spool_event("dead")
        log.warning(
            "spool_dead",
            spool_id=entry.id,
            mail_from=entry.mail_from,
            rcpt_tos=list(entry.rcpt_tos),
            reason=reason,
        )
        if self._bouncer is not None and self._bouncer.wants(entry):
            await self._bounce(entry, reason)

    async def _bounce(self, entry: SpoolEntry, reason: str) -> None:
        assert self._bouncer is not None
        try:
            await self._bouncer.notify(entry, reason)
        except RelayError as exc:
            log.warning(
                "bounce_failed", spool_id=entry.id, error=type(exc).__name__, detail=exc.detail
            )
            return
        await self._spool.mark_bounced(entry.id)
        log.info("bounce_sent", spool_id=entry.id, to=entry.mail_from)

    async def _pause(self) -> None:
        """Sleep until the next entry is due, at most ``poll_interval``, or ``stop``.

        A spool that cannot say (the shared database down) means a full ``poll_interval``:
        the worker outlives the outage and carries on by itself.
        """
        try:
            next_due = await self._spool.next_due()
        except SpoolUnavailable:
            next_due = None
        wait = self._policy.poll_interval
        if next_due is not None:
            wait = min(wait, max(next_due - self._clock(), 0.0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=max(wait, 0.01))

    async def _log_status(self, worked: bool) -> None:
        now = self._clock()
        if not worked and now - self._last_status < STATUS_INTERVAL:
            return
        stats = await self._spool.stats()
        if not _status_due(worked, now - self._last_status, stats):
            return
        self._last_status = now
        await self._spool.purge_delivered(now - self._policy.max_age)
        log.info(
            "spool",
            depth=stats.queued,
            dead=stats.dead,
            oldest_age_s=round(stats.oldest_age, 1),
            max_attempts=stats.max_attempts,
        )


def _status_due(worked: bool, since: float, stats: SpoolStats) -> bool:
    """Whether to log the ``spool`` status now (see the module docstring)."""
    if worked:
        return stats.queued == 0 or since >= STATUS_MIN_INTERVAL
    return stats.queued > 0 and since >= STATUS_INTERVAL
