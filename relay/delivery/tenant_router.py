"""The multi-tenant router: each transaction goes with its tenant's key, account and bucket.

``TenantRouter`` holds one ``Route`` per tenant (named after the tenant) and, when the
global ``AHASEND_API_KEY``/``AHASEND_ACCOUNT_ID`` are set, the default route for clients
no tenant claims. Without a global key such clients get ``NO_TENANT``: a route whose
sender raises ``NoTenant`` (550 5.7.1) before any API call.

Pacing is per AhaSend account: ``AccountBuckets`` hands every route of one account the
same ``TokenBucket``, so tenants sharing an account share its rate limit.
"""

from __future__ import annotations

from collections.abc import Callable

from relay.delivery.pacing import TokenBucket
from relay.delivery.route import DEFAULT_ROUTE, Route, Submission
from relay.delivery.sender import Delivery
from relay.delivery.spool.base import SpoolEntry
from relay.delivery.tenants import Tenant, Tenants
from relay.errors import NoTenant

__all__ = ["NO_TENANT", "AccountBuckets", "TenantRouter"]


class _Refusing:
    """A sender that refuses every request: the client belongs to no tenant."""

    async def send(self, body: bytes, idempotency_key: str) -> Delivery:
        raise NoTenant()

    async def aclose(self) -> None:
        return None


NO_TENANT = Route("no-tenant", "", sender=_Refusing(), retrying=_Refusing())


class _Removed:
    """A sender for the spooled mail of a tenant no longer in the file: refuses it."""

    def __init__(self, name: str) -> None:
        self._detail = f"tenant {name!r} is no longer in RELAY_TENANTS_FILE"

    async def send(self, body: bytes, idempotency_key: str) -> Delivery:
        raise NoTenant(self._detail)

    async def aclose(self) -> None:
        return None


def _removed(name: str) -> Route:
    return Route(name, "", sender=_Removed(name), retrying=_Removed(name))


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
        self._routes = {t.name: route_for(t) for t in tenants.tenants}
        self._fallback = fallback
        self._retired: list[Route] = []

    def reload(self, tenants: Tenants) -> None:
        """Switch to ``tenants`` (SIGHUP): a tenant whose key or account changed, or a new
        one, gets a new route; an unchanged one keeps its route. Replaced routes' clients
        are closed at shutdown (requests in flight on them finish)."""
        old = {t.name: t for t in self.tenants.tenants}
        routes: dict[str, Route] = {}
        for tenant in tenants.tenants:
            before = old.get(tenant.name)
            if before is not None and _same_route(before, tenant):
                routes[tenant.name] = self._routes[tenant.name]
            else:
                routes[tenant.name] = self._route_for(tenant)
        kept = {id(r) for r in routes.values()}
        self._retired += [r for r in self._routes.values() if id(r) not in kept]
        self.tenants, self._routes = tenants, routes

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
        return self._routes[tenant.name] if tenant is not None else self.default

    def spooled(self, entry: SpoolEntry) -> Route:
        """The entry's tenant's current route (its key as of now); a tenant removed since
        gets a refusing route, so the entry dies with the reason."""
        if entry.route == DEFAULT_ROUTE:
            return self.default
        route = self._routes.get(entry.route)
        return route if route is not None else _removed(entry.route)

    async def aclose(self) -> None:
        for route in [*self._routes.values(), *self._retired]:
            await route.sender.aclose()
        if self._fallback is not None:
            await self._fallback.sender.aclose()


def _same_route(before: Tenant, after: Tenant) -> bool:
    return (before.api_key, before.account_id) == (after.api_key, after.account_id)
