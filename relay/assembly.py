"""The one place a relay is put together: every part built once, wired at construction.

``assemble`` builds, in dependency order, what one relay is made of and returns it as a
frozen ``Relay``. Nothing is changed after construction: hooks and gauges are given to
the objects that call them when those are built. What holds a resource (the spool, the
API client behind the router) is registered on the caller's ``AsyncExitStack`` as soon as
it is opened, so one cleanup path closes whatever was opened, whichever later step fails.

Order (each step uses only what came before)::

    Guard.from_settings          networks, limits, AUTH users, TLS context (ConfigError)
    spool                        RELAY_SPOOL_URL → PostgresSpool (waits for the database),
                                 RELAY_SPOOL_DIR → SqliteSpool (SpoolUnavailable)    [close]
    pacing buckets               per account; shared in PostgreSQL with RELAY_SPOOL_URL,
                                 migrated by the spool's migrator (pg_schema)        [close]
    RelayMetrics                 the sessions gauge, the spool's stats at scrape time
    guard + metrics hook         failed AUTH attempts counted
    API client                   dry-run, or AhaSendClient with a metered transport
    router                       SingleRouter: the client paced, breaker, retrying [aclose]
    dispatcher, handler          send now or spool; the aiosmtpd hooks
    worker, bouncer              with a spool only (not started here)
    admin server                 with RELAY_METRICS_PORT only (not started here)

Starting and stopping (listeners, admin server, worker task) is ``relay.server``'s.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sized
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx

from relay.config import Settings, environment_variable
from relay.delivery.api import MAX_CONNECTIONS, AhaSendClient
from relay.delivery.bounce import Bouncer
from relay.delivery.circuit import BreakerSender, CircuitBreaker
from relay.delivery.dispatch import Dispatcher, GraceOver
from relay.delivery.events import NO_EVENTS, DeliveryEvents
from relay.delivery.pacing import PacedSender, Pacer, TokenBucket
from relay.delivery.pacing_shared import SharedBuckets, TokenStore
from relay.delivery.policy import SpoolPolicy
from relay.delivery.retry import RetryingSender
from relay.delivery.route import DEFAULT_ROUTE, Route, Router, SingleRouter
from relay.delivery.sender import DryRunSender, Sender
from relay.delivery.spool import PostgresSpool, SpoolBackend, SqliteSpool
from relay.delivery.tenant_router import AccountBuckets, TenantRouter
from relay.delivery.tenants import Tenant, Tenants, load_tenants
from relay.delivery.transport import build_transport
from relay.delivery.worker import SpoolWorker
from relay.ops.admin import AdminServer
from relay.ops.health import readiness
from relay.ops.metrics import MeteredTransport, RelayMetrics
from relay.smtp.guard import Guard
from relay.smtp.handler import RelayHandler
from relay.smtp.replies import DRY_RUN_ACCEPTED, QUEUED

__all__ = [
    "Relay",
    "assemble",
    "build_sender",
    "default_route",
    "open_spool",
    "pacing_buckets",
    "preflight",
    "reload_tenants",
]


@dataclass(frozen=True, slots=True)
class Relay:
    """Everything one relay is made of, as ``assemble`` built it."""

    settings: Settings
    guard: Guard
    metrics: RelayMetrics
    router: Router
    handler: RelayHandler
    spool: SpoolBackend | None
    worker: SpoolWorker | None
    admin: AdminServer | None
    stop_retrying: asyncio.Event
    """Set at shutdown: every route's in-transaction retries end (``RetryingSender``)."""
    client: Sender | None
    """The global key's API client (None without a global key); read at start-up."""
    grace_over: GraceOver
    """Set when the shutdown grace period ends: API calls still running are abandoned
    (spooled, or 421) by the ``Dispatcher``."""


async def assemble(
    settings: Settings,
    resources: AsyncExitStack,
    *,
    sessions: Sized,
    listening: Callable[[], bool],
    sender: Sender | None = None,
) -> Relay:
    """Build the relay ``settings`` describe; see the module docstring for the order.

    ``sessions`` is the server's registry of open sessions (the gauge counts it),
    ``listening`` tells ``/readyz`` whether the SMTP listener accepts connections, and
    ``sender`` replaces the API client (tests, the benchmark); it is then owned and closed
    like the built one. Resources are registered on ``resources``.
    """
    guard = Guard.from_settings(settings)
    spool = await open_spool(settings, resources)
    buckets = pacing_buckets(settings, resources, spool)
    metrics = RelayMetrics(
        sessions_open=lambda: len(sessions),
        spool_stats=spool.stats if spool is not None else None,
        spool_available=(lambda: spool.available) if spool is not None else None,
        pacing_shared=_shared_pacing_reachable(buckets),
    )
    guard = dataclasses.replace(
        guard, on_auth_failure=metrics.auth_failures.inc, on_refusal=metrics.refused
    )
    metrics.watch_readiness(lambda: readiness(listening(), settings.relay_dry_run, metrics)[0])
    stop_retrying, grace_over = asyncio.Event(), GraceOver()
    client = None if _global_key_unset(settings, sender) else _client(settings, sender, metrics)
    router = build_router(settings, guard, client, metrics, stop_retrying, buckets=buckets)
    guard = _with_tenant_networks(guard, router)
    resources.push_async_callback(router.aclose)
    policy = SpoolPolicy.from_settings(settings)
    handler = RelayHandler(
        Dispatcher(router, spool, policy, metrics, grace_over=grace_over),
        max_recipients=settings.relay_max_recipients,
        accepted_reply=DRY_RUN_ACCEPTED if settings.relay_dry_run else QUEUED,
        sender_policy=guard.senders,
        observer=metrics,
        tenant_of=_tenant_of(router),
    )
    return Relay(
        settings=settings, guard=guard, metrics=metrics, router=router, handler=handler,
        spool=spool, worker=_worker(settings, spool, router, policy, metrics),
        admin=_admin_server(settings, metrics, listening), stop_retrying=stop_retrying,
        grace_over=grace_over, client=client,
    )  # fmt: skip


async def preflight(settings: Settings) -> None:
    """Every check ``assemble`` makes before the relay listens, opening nothing for good.

    The users file and TLS files (``Guard.from_settings``), the tenants file and its key
    files, and the SQLite spool (opened, so created if missing, then closed). Raises what
    ``serve`` would fail with: ConfigError (exit 78) or SpoolUnavailable (exit 73). The
    settings' own cross-checks ran when ``settings`` was built. A shared spool
    (RELAY_SPOOL_URL) is not contacted: ``serve`` starts without its database too.
    """
    guard = Guard.from_settings(settings)
    if settings.relay_tenants_file is not None:
        load_tenants_of(settings, guard)
    if settings.spool_url is None:
        async with AsyncExitStack() as resources:
            await open_spool(settings, resources)


async def open_spool(settings: Settings, resources: AsyncExitStack) -> SpoolBackend | None:
    """The spool the settings name (closed with ``resources``), or None without one.

    ``RELAY_SPOOL_URL``: the shared PostgreSQL spool, which never fails to open (an
    unreachable database is waited for, see ``relay.delivery.spool.postgres``);
    ``RELAY_SPOOL_DIR``: the SQLite file (``SpoolUnavailable`` when unusable).
    """
    if settings.spool_url is not None:
        shared = PostgresSpool(settings.spool_url)
        resources.push_async_callback(shared.close)
        await shared.open()
        return shared
    if settings.relay_spool_dir is None:
        return None
    spool = await asyncio.to_thread(SqliteSpool, settings.relay_spool_dir)
    resources.push_async_callback(spool.close)
    return spool


def pacing_buckets(
    settings: Settings, resources: AsyncExitStack, spool: SpoolBackend | None
) -> AccountBuckets | SharedBuckets:
    """One bucket per account at RELAY_API_RATE / _BURST: this process's, or with the shared
    spool (RELAY_SPOOL_URL) one for all replicas, in the database (``pacing_shared``).

    The shared bucket migrates the database with ``spool``'s migrator: whichever of the
    two reaches it first (the bucket, when the database was down as the spool opened and a
    message takes a token before the spool is used) migrates it, once, logged by the spool.
    """
    rate, burst = settings.relay_api_rate, settings.relay_api_burst
    if settings.spool_url is None:
        return AccountBuckets(rate, burst)
    migrator = spool.migrator if isinstance(spool, PostgresSpool) else None
    store = TokenStore(settings.spool_url, migrator=migrator)
    resources.push_async_callback(store.aclose)
    return SharedBuckets(store, rate, burst, settings.relay_replicas)


def _shared_pacing_reachable(
    buckets: AccountBuckets | SharedBuckets,
) -> Callable[[], bool] | None:
    """For the gauge: whether the shared bucket answers (None: pacing is this process's)."""
    if not isinstance(buckets, SharedBuckets):
        return None
    store = buckets.store
    return lambda: store.reachable


def build_sender(settings: Settings, metrics: RelayMetrics | None = None) -> Sender:
    """The API client the settings ask for: dry-run, or AhaSend's (metered if asked)."""
    if settings.relay_dry_run:
        return DryRunSender()
    assert settings.ahasend_api_key is not None  # guaranteed by Settings' validator
    return AhaSendClient(
        base_url=settings.api_base_url,
        api_key=settings.ahasend_api_key.get_secret_value(),
        account_id=str(settings.ahasend_account_id),
        timeout=settings.ahasend_api_timeout,
        transport=_metered_transport(metrics, settings)
        if metrics is not None
        else api_transport(settings),
    )


def api_transport(settings: Settings) -> httpx.AsyncBaseTransport:
    """The transport AHASEND_API_TRANSPORT names, through the proxy the settings chose,
    trusting the CAs they name (SSL_CERT_FILE / SSL_CERT_DIR) for the API and the proxy."""
    return build_transport(
        settings.ahasend_api_transport, MAX_CONNECTIONS, proxy=settings.api_proxy,
        verify=settings.api_trust,
    )  # fmt: skip


def _metered_transport(
    metrics: RelayMetrics, settings: Settings, tenant: str = DEFAULT_ROUTE
) -> MeteredTransport:
    """``api_transport``, metered as ``tenant``'s."""
    return MeteredTransport(metrics, api_transport(settings), tenant=tenant)


def default_route(
    settings: Settings,
    client: Sender,
    stopping: asyncio.Event,
    bucket: Pacer | None = None,
    events: DeliveryEvents = NO_EVENTS,
) -> Route:
    """The settings' one route: ``client`` paced by RELAY_API_RATE/_BURST/_CONCURRENCY,
    behind a circuit breaker, retried within RELAY_RETRY_DEADLINE until ``stopping`` is set
    or the breaker opens."""
    account = "" if settings.relay_dry_run else str(settings.ahasend_account_id)
    if bucket is None:
        bucket = TokenBucket(settings.relay_api_rate, settings.relay_api_burst)
    return _route(
        settings, DEFAULT_ROUTE, account, client, bucket=bucket, stopping=stopping, events=events
    )


def _route(
    settings: Settings,
    name: str,
    account: str,
    client: Sender,
    *,
    bucket: Pacer,
    stopping: asyncio.Event,
    events: DeliveryEvents = NO_EVENTS,
) -> Route:
    paced = PacedSender(client, bucket, max_concurrency=settings.relay_api_concurrency)
    guarded = BreakerSender(paced, CircuitBreaker(on_change=events.circuit_changed))
    retrying = RetryingSender(
        guarded,
        deadline=settings.relay_retry_deadline,
        stopping=stopping,
        events=events,
        breaker=guarded.breaker,
    )
    past_breaker = RetryingSender(
        guarded, deadline=settings.relay_retry_deadline, stopping=stopping, events=events
    )
    return Route(name, account, sender=guarded, retrying=retrying, past_breaker=past_breaker)


def _global_key_unset(settings: Settings, sender: Sender | None) -> bool:
    """With a tenants file the global key is optional: no default route then."""
    return sender is None and not settings.relay_dry_run and settings.ahasend_api_key is None


def _client(settings: Settings, sender: Sender | None, metrics: RelayMetrics) -> Sender:
    return sender if sender is not None else build_sender(settings, metrics)


def load_tenants_of(settings: Settings, guard: Guard) -> Tenants:
    """The tenants RELAY_TENANTS_FILE names (ConfigError naming tenant and field)."""
    assert settings.relay_tenants_file is not None
    users = guard.authenticator.store.users if guard.authenticator is not None else None
    return load_tenants(settings.relay_tenants_file, users, environment_variable)


def build_router(
    settings: Settings,
    guard: Guard,
    client: Sender | None,
    metrics: RelayMetrics,
    stopping: asyncio.Event,
    *,
    buckets: AccountBuckets | SharedBuckets | None = None,
) -> Router:
    """SingleRouter on the global key, or a TenantRouter with RELAY_TENANTS_FILE; routes of
    one account share its bucket from ``buckets`` (default: this process's)."""
    if buckets is None:
        buckets = AccountBuckets(settings.relay_api_rate, settings.relay_api_burst)
    if settings.relay_tenants_file is None:
        assert client is not None
        account = "" if settings.relay_dry_run else str(settings.ahasend_account_id)
        bucket = buckets.for_account(account)
        return SingleRouter(default_route(settings, client, stopping, bucket, events=metrics))
    fallback = None
    if client is not None:
        account = str(settings.ahasend_account_id or "")
        fallback = default_route(
            settings, client, stopping, buckets.for_account(account), events=metrics
        )

    def route_for(tenant: Tenant) -> Route:
        tenant_client = tenant_sender(settings, tenant, metrics)
        bucket = buckets.for_account(tenant.account_id)
        return _route(
            settings,
            tenant.name,
            tenant.account_id,
            tenant_client,
            bucket=bucket,
            stopping=stopping,
            events=metrics,
        )

    return TenantRouter(load_tenants_of(settings, guard), route_for, fallback)


def reload_tenants(relay: Relay) -> int | None:
    """SIGHUP: re-read RELAY_TENANTS_FILE and its key files into the router; the number
    of tenants, or None without tenants. ConfigError (old tenants kept) when it does not load."""
    if not isinstance(relay.router, TenantRouter):
        return None
    tenants = load_tenants_of(relay.settings, relay.guard)
    relay.router.reload(tenants)
    return len(tenants.tenants)


def _with_tenant_networks(guard: Guard, router: Router) -> Guard:
    """``guard`` trusting, like RELAY_ALLOWED_NETWORKS, the router's tenants' networks."""
    if not isinstance(router, TenantRouter):
        return guard

    def in_tenant_network(address: str) -> bool:
        return router.tenants.by_network(address) is not None

    access = dataclasses.replace(guard.access, tenant_network=in_tenant_network)
    return dataclasses.replace(guard, access=access)


def _tenant_of(router: Router) -> Callable[[str | None, str], Tenant | None] | None:
    """The handler's tenant look-up: the router's current tenants (None without tenants)."""
    if not isinstance(router, TenantRouter):
        return None
    return router.tenant


def tenant_sender(settings: Settings, tenant: Tenant, metrics: RelayMetrics) -> Sender:
    """The API client of one tenant: its key and account (dry-run: the DryRunSender)."""
    if settings.relay_dry_run:
        return DryRunSender()
    return AhaSendClient(
        base_url=settings.api_base_url,
        api_key=tenant.api_key,
        account_id=tenant.account_id,
        timeout=settings.ahasend_api_timeout,
        transport=_metered_transport(metrics, settings, tenant.name),
    )


def _worker(
    settings: Settings,
    spool: SpoolBackend | None,
    router: Router,
    policy: SpoolPolicy,
    events: DeliveryEvents,
) -> SpoolWorker | None:
    """The spool worker (bounce notices through the default route), None without a spool."""
    if spool is None:
        return None
    bouncer = None
    if settings.relay_bounce_notices and settings.relay_bounce_from:
        bouncer = Bouncer(router.default.sender, settings.relay_bounce_from)
    return SpoolWorker(spool, router, policy, bouncer=bouncer, events=events)


def _admin_server(
    settings: Settings, metrics: RelayMetrics, listening: Callable[[], bool]
) -> AdminServer | None:
    """The /metrics, /healthz, /readyz server when RELAY_METRICS_PORT is set."""
    if settings.relay_metrics_port is None:
        return None

    def ready() -> tuple[bool, str]:
        return readiness(listening(), settings.relay_dry_run, metrics)

    return AdminServer(
        settings.relay_metrics_host, settings.relay_metrics_port,
        render=metrics.render, ready=ready, refresh=metrics.refresh,
    )  # fmt: skip
