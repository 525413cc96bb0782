"""What the delivery side reports as it works: spool flow, in-transaction retries, the breaker.

The dispatcher, the spool worker and the retrier call these hooks; the server passes its
metrics (``relay.ops.metrics.RelayMetrics``), tests a recorder. ``NO_EVENTS`` ignores all.
"""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = ["NO_EVENTS", "DeliveryEvents", "SpoolEvent"]

SpoolEvent = Literal["spooled", "delivered", "deferred", "dead"]


class DeliveryEvents(Protocol):
    def spool_event(self, event: SpoolEvent) -> None:
        """A request was spooled, delivered from the spool, deferred again or given up."""

    def retried(self, error: str) -> None:
        """A request is retried inside the transaction after ``error`` (its class name)."""

    def circuit_changed(self, is_open: bool) -> None:
        """The upstream circuit breaker opened (True) or closed (False)."""


class _NoEvents:
    def spool_event(self, event: SpoolEvent) -> None:
        return None

    def retried(self, error: str) -> None:
        return None

    def circuit_changed(self, is_open: bool) -> None:
        return None


NO_EVENTS: DeliveryEvents = _NoEvents()
