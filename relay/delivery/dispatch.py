"""Where a transaction's requests go: to the API now, or into the spool for later.

``Dispatcher.send_all`` asks the router for the transaction's route (``relay.delivery.
route``: which account, key and pacing), then sends each request of the transaction (one
per payload of ``Translated``, each with its own Idempotency-Key) through that route's
retrying sender (which retries within the transaction's deadline). A permanent error
propagates (5xx). A transient one propagates too (4xx, the client retries) unless a spool
is configured: then that request and every later one of the transaction are written to
the spool (committed and fsync'd) and come back as ``Delivery(spooled=True)``, so the
handler may answer 250 only once nothing acknowledged can be lost. Requests the API took
stay sent.

At shutdown, once the grace period is over (``grace_over`` set, by ``relay.server``), an
API call still running is abandoned: it counts as a transient ``ShuttingDown`` failure,
so the request is spooled with its own Idempotency-Key (AhaSend replays rather than
sends twice if the abandoned call did get through) and the client gets its 250, or,
without a spool, ``421 4.3.2``: a reply in every case, never a silent close.

When the spool reports itself unavailable (its ``available`` is False: the shared
database is unreachable), the API is the only place a message can go, so it is tried even
while the circuit breaker is open (``Route.past_breaker``); a request that still needs
the spool then gets ``SpoolRefused`` (``451 4.3.0``), never a 250 without a stored row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from relay.delivery.events import NO_EVENTS, DeliveryEvents
from relay.delivery.policy import SpoolPolicy
from relay.delivery.route import Router, Submission
from relay.delivery.sender import Delivery, Sender
from relay.delivery.spool import SpoolBackend
from relay.errors import (
    InternalError,
    ShuttingDown,
    SpoolRefused,
    SpoolUnavailable,
    TransientError,
)
from relay.ops.log import get_logger
from relay.translate.wire import Body, as_bytes

__all__ = ["Dispatcher", "GraceOver"]

log = get_logger("relay.delivery.dispatch")


class GraceOver(asyncio.Event):
    """Set (by ``relay.smtp.drain``) when the shutdown grace period ends; runs the callbacks
    registered with ``when_set`` then, so that a waiter costs nothing per API call (one
    pair of futures per call was ~4 % of the relay's CPU per small message)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def when_set(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (synchronously) when the event is set."""
        self._callbacks.append(callback)

    def set(self) -> None:
        if not self.is_set():
            super().set()
            for callback in self._callbacks:
                callback()


class Dispatcher:
    """Sends by ``router``'s routes; spools transient failures when ``spool`` is given.

    Once ``grace_over`` is set, a send in progress is abandoned (see the module docstring).
    """

    def __init__(
        self,
        router: Router,
        spool: SpoolBackend | None = None,
        policy: SpoolPolicy | None = None,
        events: DeliveryEvents = NO_EVENTS,
        grace_over: GraceOver | None = None,
    ) -> None:
        self._router = router
        self._spool = spool
        self._policy = policy or SpoolPolicy()
        self._events = events
        self._grace_over = grace_over if grace_over is not None else GraceOver()
        self._grace_over.when_set(self._abandon_calls)
        self._calls: set[asyncio.Task[Any]] = set()
        self._abandoned: set[asyncio.Task[Any]] = set()

    async def send_all(
        self, bodies: Sequence[Body], keys: Sequence[str], submission: Submission
    ) -> list[Delivery]:
        """One Delivery per request, in order; raises the RelayError the reply should show."""
        route = self._router.route(submission)
        sender = route.retrying
        if self._spool is not None and not self._spool.available and route.past_breaker:
            sender = route.past_breaker
        deliveries: list[Delivery] = []
        failure: TransientError | None = None
        for body, key in zip(bodies, keys, strict=True):
            if failure is None:
                try:
                    deliveries.append(await self._send_unless_over(sender, body, key))
                    continue
                except TransientError as exc:
                    if self._spool is None:
                        raise
                    failure = exc
            deliveries.append(await self._spool_one(body, key, submission, failure, route.name))
        return deliveries

    async def _send_unless_over(self, sender: Sender, body: Body, key: str) -> Delivery:
        """``sender.send`` in this task, abandoned with ``ShuttingDown`` if the grace period
        ends first (``GraceOver.set`` cancels the task; the cancellation is taken back)."""
        if self._grace_over.is_set():
            raise ShuttingDown("shutdown grace period over")
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        try:
            return await sender.send(body, key)
        except asyncio.CancelledError:
            if task not in self._abandoned or task.uncancel() > 0:
                raise  # cancelled for another reason too (the connection was lost)
            log.warning("api_call_abandoned", idempotency_key=key)
            raise ShuttingDown(
                "API call still running when the shutdown grace period ended"
            ) from None
        finally:
            self._calls.discard(task)
            self._abandoned.discard(task)

    def _abandon_calls(self) -> None:
        """The grace period is over: cancel every API call still running."""
        for task in self._calls - self._abandoned:
            self._abandoned.add(task)
            task.cancel()

    async def _spool_one(
        self, body: Body, key: str, submission: Submission, why: TransientError, route: str
    ) -> Delivery:
        """Write one request durably; InternalError (4xx) when the spool cannot take it.

        A streamed body (a large message) is materialised here, once: the spool stores bytes.
        """
        assert self._spool is not None
        error = f"{type(why).__name__}: {why.detail}".rstrip(": ")
        try:
            spool_id = await self._spool.add(
                as_bytes(body),
                key,
                mail_from=submission.mail_from,
                rcpt_tos=submission.rcpt_tos,
                error=error,
                first_retry=self._policy.first_retry,
                max_age=self._policy.max_age,
                route=route,
            )
        except SpoolUnavailable as exc:  # database down, disk full...: the client keeps it
            log.warning("spool_write_failed", idempotency_key=key, error=str(exc))
            raise SpoolRefused("spool unavailable") from exc
        except Exception as exc:  # a bug: the client must keep the message
            log.exception("spool_write_failed", idempotency_key=key)
            raise InternalError("spool write failed") from exc
        log.info("spooled", spool_id=spool_id, idempotency_key=key, error=error, route=route)
        self._events.spool_event("spooled")
        return Delivery(status=None, spooled=True, spool_id=spool_id)
