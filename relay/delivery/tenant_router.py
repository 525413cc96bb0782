"""The multi-tenant router: each transaction goes with its tenant's key, account and bucket.

``TenantRouter`` holds one ``Route`` per tenant (named after the tenant) and, when the
global ``AHASEND_API_KEY``/``AHASEND_ACCOUNT_ID`` are set, the default route for clients
no tenant claims. Without a global key such clients get ``NO_TENANT``: a route whose
sender raises ``NoTenant`` (550 5.7.1) before any API call.

Pacing is per AhaSend account: ``AccountBuckets`` hands every route of one account the
same ``TokenBucket``, so tenants sharing an account share its rate limit.

A route replaced by a reload (a rotated key, a new account) is retired: its client is
closed as soon as no transaction or spool attempt that took it is still using it, so a
rotated key's old connections do not outlive the requests that began on them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from relay.delivery.pacing import TokenBucket
from relay.delivery.route import DEFAULT_ROUTE, Route, Submission
from relay.delivery.sender import Delivery, Sender
from relay.delivery.spool.base import SpoolEntry
from relay.delivery.tenants import Tenant, Tenants
from relay.errors import NoTenant
from relay.translate.wire import Body

__all__ = ["NO_TENANT", "AccountBuckets", "TenantRouter"]


class _Refusing:
    """A sender that refuses every request: the client belongs to no tenant."""

    async def send(self, body: Body, idempotency_key: str) -> Delivery:
        raise NoTenant()

    async def aclose(self) -> None:
        return None


NO_TENANT = Route("no-tenant", "", sender=_Refusing(), retrying=_Refusing())


class _Removed:
    """A sender for the spooled mail of a tenant no longer in the file: refuses it."""

    def __init__(self, name: str) -> None:
        self._detail = f"tenant {name!r} is no longer in RELAY_TENANTS_FILE"

    async def send(self, body: Body, idempotency_key: str) -> Delivery:
        raise NoTenant(self._detail)

    async def aclose(self) -> None:
        return None


def _removed(name: str) -> Route:
    return Route(name, "", sender=_Removed(name), retrying=_Removed(name))


class _InUse:
    """How many sends are running on one route's senders; ``idle`` is set at zero."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def wrap(self, sender: Sender) -> Sender:
        return _Counted(sender, self)


class _Counted:
    """``inner`` with each send counted in ``uses`` (a retried send counts as one)."""

    def __init__(self, inner: Sender, uses: _InUse) -> None:
        self._inner, self._uses = inner, uses

    async def send(self, body: Body, idempotency_key: str) -> Delivery:
        self._uses.count += 1
        self._uses.idle.clear()
        try:
            return await self._inner.send(body, idempotency_key)
        finally:
            self._uses.count -= 1
            if self._uses.count == 0:
                self._uses.idle.set()

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass(frozen=True, slots=True)
class _Tracked:
    """A tenant's route as the router hands it out, and the count of its sends."""

    route: Route
    uses: _InUse

    @classmethod
    def of(cls, route: Route) -> _Tracked:
        uses = _InUse()
        past_breaker = route.past_breaker
        counted = dataclasses.replace(
            route, sender=uses.wrap(route.sender), retrying=uses.wrap(route.retrying),
            past_breaker=uses.wrap(past_breaker) if past_breaker is not None else None,
        )  # fmt: skip
        return cls(counted, uses)


class AccountBuckets:
    """One ``TokenBucket`` per AhaSend account id, created on first use."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate, self._burst = rate, burst
        self._buckets: dict[str, TokenBucket] = {}

    def for_account(self, account_id: str) -> TokenBucket:
        key = account_id.lower()
        if key not in self._buckets:
            self._buckets[key] = TokenBucket(self._rate, self._burst)
        return self._buckets[key]


class TenantRouter:
    """Routes by ``tenants``; ``fallback`` (the global key's route) or ``NO_TENANT`` else."""

    def __init__(
        self,
        tenants: Tenants,
        route_for: Callable[[Tenant], Route],
        fallback: Route | None = None,
    ) -> None:
        self.tenants = tenants
        self._route_for = route_for
        self._routes = {t.name: _Tracked.of(route_for(t)) for t in tenants.tenants}
        self._fallback = fallback
        self._retiring: set[asyncio.Task[None]] = set()

    def reload(self, tenants: Tenants) -> None:
        """Switch to ``tenants`` (SIGHUP, on the event loop): a tenant whose key or account
        changed, or a new one, gets a new route; an unchanged one keeps its route. A
        replaced route's client is closed once the sends that took it have finished."""
        old = {t.name: t for t in self.tenants.tenants}
        routes: dict[str, _Tracked] = {}
        for tenant in tenants.tenants:
            before = old.get(tenant.name)
            if before is not None and _same_route(before, tenant):
                routes[tenant.name] = self._routes[tenant.name]
            else:
                routes[tenant.name] = _Tracked.of(self._route_for(tenant))
        kept = {id(r) for r in routes.values()}
        for replaced in [r for r in self._routes.values() if id(r) not in kept]:
            self._retire(replaced)
        self.tenants, self._routes = tenants, routes

    def _retire(self, tracked: _Tracked) -> None:
        task = asyncio.get_running_loop().create_task(_close_when_idle(tracked))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @property
    def default(self) -> Route:
        return self._fallback if self._fallback is not None else NO_TENANT

    def tenant(self, user: str | None, client: str) -> Tenant | None:
        """The tenant of an AUTH ``user`` or a ``client`` address in the current tenants."""
        return self.tenants.resolve(user, client)

    def tenant_of(self, submission: Submission) -> Tenant | None:
        """The tenant ``submission`` belongs to (AUTH user, then network), or None."""
        return self.tenant(submission.user, submission.client)

    def route(self, submission: Submission) -> Route:
        tenant = self.tenant_of(submission)
        return self._routes[tenant.name].route if tenant is not None else self.default

    def spooled(self, entry: SpoolEntry) -> Route:
        """The entry's tenant's current route (its key as of now); a tenant removed since
        gets a refusing route, so the entry dies with the reason."""
        if entry.route == DEFAULT_ROUTE:
            return self.default
        tracked = self._routes.get(entry.route)
        return tracked.route if tracked is not None else _removed(entry.route)

    @property
    def retiring(self) -> int:
        """Replaced routes whose client is not closed yet (sends still running on it)."""
        return len(self._retiring)

    async def aclose(self) -> None:
        """Close every client: the current routes', the fallback's and, at once, those
        of replaced routes still waiting for their sends (shutdown has drained them)."""
        for task in list(self._retiring):
            task.cancel()
        for tracked in self._routes.values():
            await tracked.route.sender.aclose()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._fallback is not None:
            await self._fallback.sender.aclose()


async def _close_when_idle(tracked: _Tracked) -> None:
    """Close a replaced route's client once no send runs on it (at once on cancel)."""
    try:
        await tracked.uses.idle.wait()
    finally:
        await tracked.route.sender.aclose()


def _same_route(before: Tenant, after: Tenant) -> bool:
    return (before.api_key, before.account_id) == (after.api_key, after.account_id)
