"""The spool backend contract: what the dispatcher, the worker and ``queue`` ask of a spool.

A spool keeps API requests the relay acknowledged (``250``) but could not hand to AhaSend
yet, until they are delivered or given up on. ``SpoolBackend`` is the contract every store
implements (``relay.delivery.spool.sqlite``, the embedded default, and
``relay.delivery.spool.postgres``, shared by replicas); its docstrings are the spec.

Entry life cycle (``State``)::

    queued ──(mark_delivered)──────────────────▶ delivered   (body dropped)
       │  ▲
       │  └─(defer: attempt counted, due again later)
       └──(kill: permanent error, or expired)──▶ dead   (reason kept; retry requeues)

Claims (leases): a worker takes due entries with ``claim(limit, lease)``. Until
``claimed_until`` (claim time + ``lease``) has passed, no other ``claim`` returns that
entry, whichever process or host asks; ``mark_delivered``, ``defer`` and ``kill`` end the
claim. A worker that dies while holding claims needs no clean-up: its entries become due
again when their lease ends. The lease is therefore sized to outlast one delivery round
(``relay.delivery.policy.SpoolPolicy.lease``); should a worker still answer after its
lease ended, its outcome is applied anyway (last write wins), which is safe because every
resend carries the entry's Idempotency-Key and AhaSend replays its first answer.

Common rules for every method:

- Times are wall-clock seconds since the epoch (floats), read from the backend's clock
  (an injected seam); they outlive restarts. "Now" below is that clock.
- Every change is durable when the awaited call returns (committed; for ``add``, on
  stable storage), and visible to every other connection to the same store at once.
- Changing methods called with an id that does not exist (deleted meanwhile) do nothing.
- A store that cannot do what is asked raises ``relay.errors.SpoolUnavailable``.
- Methods are safe to call concurrently from one event loop, and several processes may
  use one store at once (the daemon's worker and the ``queue`` tools).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["STATES", "SpoolBackend", "SpoolEntry", "SpoolStats", "State"]

State = Literal["queued", "delivered", "dead"]
STATES: tuple[State, ...] = ("queued", "delivered", "dead")


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One spooled request. ``body`` is None in listings and once delivered."""

    id: int
    """Positive, unique in the store, never reused for another request, increasing."""
    idempotency_key: str
    """Unique in the store; kept for the entry's whole life (every resend carries it)."""
    state: State
    mail_from: str
    """The SMTP envelope sender (``""`` for the null sender): where bounces go."""
    rcpt_tos: tuple[str, ...]
    """The SMTP envelope recipients, in order."""
    size: int
    """Length of the body in bytes (kept after the body is dropped)."""
    attempts: int
    """Delivery attempts made from the spool (the in-transaction ones do not count)."""
    created: float
    updated: float
    """When the entry last changed state, attempts or outcome (claims do not count)."""
    next_attempt: float
    """When the entry is due (meaningful while queued)."""
    expires: float
    """After this time a transient failure kills the entry instead of deferring it."""
    last_error: str | None
    """Why the last attempt failed, why the entry died, or a note on its delivery."""
    message_ids: tuple[str, ...]
    """AhaSend's message ids, once delivered."""
    bounced: bool
    """A bounce notice about this entry was accepted by the API."""
    claimed_until: float | None = None
    """While later than now, a worker holds the entry (``claim``); None when unclaimed."""
    body: bytes | None = None
    """The serialised API request (only from ``claim`` and ``get``, and while not delivered)."""
    route: str = "default"
    """The name of the route (``relay.delivery.route``: a tenant, or ``default``) the
    request was sent by: never its key, which is looked up again at each attempt."""


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """How the spool looks now: what the logs (and metrics) report."""

    queued: int
    """Entries in state queued (claimed ones included)."""
    dead: int
    delivered: int
    oldest_age: float
    """Seconds since the oldest queued message was spooled (0 when none)."""
    max_attempts: int
    """The most attempts any queued message has had (0 when none)."""


class SpoolBackend(Protocol):
    """A durable store of spooled requests; see the module docstring for the shared rules."""

    @property
    def location(self) -> str:
        """Where the store lives, for logs and messages: a path, or a URL without password."""
        ...

    @property
    def available(self) -> bool:
        """False from a call that could not reach the store until one succeeds (no I/O).

        The dispatcher reads it to know, before a transaction, that spooling would fail.
        """
        ...

    # -- the dispatcher's side ---------------------------------------------------------
    async def add(
        self,
        body: bytes,
        idempotency_key: str,
        *,
        mail_from: str,
        rcpt_tos: Sequence[str],
        error: str,
        first_retry: float,
        max_age: float,
        route: str = "default",
    ) -> int:
        """Store a request durably (on stable storage when this returns); its entry id.

        The new entry is queued, unclaimed, with 0 attempts, ``last_error = error``,
        ``created = updated = now``, due at ``now + first_retry``, expiring at
        ``now + max_age``. A request whose ``idempotency_key`` is already stored is not
        stored twice: the existing entry's id is returned and a queued or delivered entry
        is left as it is (the same transaction resent while its first copy waits, or after
        it was delivered). A dead one is requeued as if new (body, ``updated``,
        ``next_attempt``, ``expires`` and ``last_error`` replaced; attempts and
        ``created`` kept): its sender is trying again. ``route`` is kept as the entry's.
        """
        ...

    # -- the worker's side -------------------------------------------------------------
    async def claim(self, limit: int, lease: float) -> list[SpoolEntry]:
        """Claim up to ``limit`` due entries for ``lease`` seconds; them, with their bodies.

        Due means: queued, ``next_attempt <= now``, and not claimed (``claimed_until`` is
        None or ``<= now``). They come earliest ``next_attempt`` first (then lowest id),
        each with ``claimed_until = now + lease``. Atomic: concurrent claims, from any
        process, never return the same entry while its lease runs. ``updated`` and
        ``attempts`` do not change. An empty list when nothing is due.
        """
        ...

    async def next_due(self) -> float | None:
        """When the earliest queued entry can next be claimed, or None when none is queued.

        That is the smallest ``max(next_attempt, claimed_until)`` over queued entries (a
        time in the past when something is due now).
        """
        ...

    async def mark_delivered(
        self, entry_id: int, message_ids: Sequence[str], note: str | None = None
    ) -> None:
        """The API accepted the entry: state delivered, body dropped, claim ended.

        Counts the attempt, stores ``message_ids``, sets ``last_error = note`` (None
        clears it) and ``updated = now``.
        """
        ...

    async def defer(self, entry_id: int, error: str, next_attempt: float) -> None:
        """A transient failure: count the attempt, due again at ``next_attempt``.

        Sets ``last_error = error``, ``updated = now`` and ends the claim. The state stays.
        """
        ...

    async def kill(self, entry_id: int, reason: str, *, attempted: bool = True) -> None:
        """Give up on the entry (state dead); ``reason`` is kept in ``last_error``.

        Counts one attempt when ``attempted``; keeps the body (so ``retry`` can requeue
        it); sets ``updated = now``; ends the claim.
        """
        ...

    async def mark_bounced(self, entry_id: int) -> None:
        """A bounce notice about the entry was accepted by the API (``bounced`` true).

        Also sets ``updated = now``; nothing else changes.
        """
        ...

    async def purge_delivered(self, older_than: float) -> int:
        """Forget delivered entries whose ``updated`` is before ``older_than``; how many.

        Queued and dead entries are never purged.
        """
        ...

    # -- the operator's side (``ahasend-relay queue``) ----------------------------------
    async def entries(self, state: State | None = None) -> list[SpoolEntry]:
        """Entries without their bodies, lowest id first; only ``state`` ones if given."""
        ...

    async def get(self, entry_id: int) -> SpoolEntry | None:
        """One entry with its body (None once delivered), or None if there is no such id."""
        ...

    async def retry(self, entry_id: int | None, max_age: float) -> int:
        """Make entries due now; how many changed (``entry_id`` None: every one that can).

        Queued entries get ``next_attempt = now``; dead ones are requeued (state queued,
        ``next_attempt = now``, ``expires = now + max_age``). Both get ``updated = now``.
        Delivered entries and entries whose body is gone are left alone. Claims are kept:
        an entry a worker is sending right now is not handed to another one before its
        lease ends.
        """
        ...

    async def delete(self, entry_id: int) -> bool:
        """Remove an entry for good, whatever its state or claim; False when there was none."""
        ...

    async def stats(self) -> SpoolStats:
        """Counts per state, oldest queued age and highest attempt count, as of now."""
        ...

    async def close(self) -> None:
        """Release the store's connections; call once, after the last use. Idempotent."""
        ...
