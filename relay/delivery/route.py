"""Delivery routes: which AhaSend account, API key and pacing a transaction is sent with.

A ``Route`` is one way to AhaSend: an API client (its key and account id in every request)
behind a pacing bucket (``TokenBucket``: the account's rate limit) and the relay-wide
concurrency cap, plus the same with the in-transaction retries on top. A ``Router``
picks the route:

- for each SMTP transaction, from its ``Submission`` (envelope sender, recipients, the
  client's address and AUTH user): the dispatcher asks before the first request;
- for each spooled entry the worker resends (``spooled``);
- ``default``: the operator's own route, which bounce notices go through.

Today ``SingleRouter`` sends everything one way, built from Settings (``AHASEND_API_KEY``,
``AHASEND_ACCOUNT_ID``, ``RELAY_API_RATE``/``_BURST``, ``RELAY_API_CONCURRENCY``). A
multi-tenant router maps each AUTH user or network to a tenant with its own key, account
id and bucket, and names its routes so the spool can record which one an entry takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from relay.delivery.sender import Sender
from relay.delivery.spool.base import SpoolEntry

__all__ = ["DEFAULT_ROUTE", "Route", "Router", "SingleRouter", "Submission"]

DEFAULT_ROUTE = "default"


@dataclass(frozen=True, slots=True)
class Submission:
    """What a router may choose a transaction's route by."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    client: str = ""
    """The client's IP address (the real one behind a PROXY header); "" when unknown."""
    user: str | None = None
    """The AUTH user name, when the client authenticated."""


@dataclass(frozen=True, slots=True)
class Route:
    """One way to AhaSend. ``name`` is stable across restarts (the spool may record it)."""

    name: str
    account_id: str
    """The AhaSend account the route's requests go to ("" in dry-run mode)."""
    sender: Sender
    """One attempt per call: the account's API client behind its pacing (the worker's)."""
    retrying: Sender
    """``sender`` with the in-transaction retries (``RetryingSender``): the dispatcher's."""
    past_breaker: Sender | None = None
    """``retrying`` that tries the API even while the circuit breaker is open: for a
    transaction the spool cannot take either (None: ``retrying`` is used)."""


class Router(Protocol):
    """Chooses the route of each transaction and spooled entry; owns its routes' clients."""

    @property
    def default(self) -> Route:
        """The operator's own route (bounce notices, anything no rule claims)."""
        ...

    def route(self, submission: Submission) -> Route:
        """The route for a new SMTP transaction. Never raises; cheap (no I/O)."""
        ...

    def spooled(self, entry: SpoolEntry) -> Route:
        """The route a spooled entry is (re)sent with. Never raises; cheap (no I/O)."""
        ...

    async def aclose(self) -> None:
        """Close every route's API client (once, at shutdown)."""
        ...


class SingleRouter:
    """Every transaction and every spooled entry takes ``route``."""

    def __init__(self, route: Route) -> None:
        self._route = route

    @property
    def default(self) -> Route:
        return self._route

    def route(self, submission: Submission) -> Route:
        return self._route

    def spooled(self, entry: SpoolEntry) -> Route:
        return self._route

    async def aclose(self) -> None:
        await self._route.sender.aclose()
