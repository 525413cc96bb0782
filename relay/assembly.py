"""The one place a relay is put together: every part built once, wired at construction.

``assemble`` builds, in dependency order, what one relay is made of and returns it as a
frozen ``Relay``. Nothing is changed after construction: hooks and gauges are given to
the objects that call them when those are built. What holds a resource (the spool, the
API client behind the router) is registered on the caller's ``AsyncExitStack`` as soon as
it is opened, so one cleanup path closes whatever was opened, whichever later step fails.

Order (each step uses only what came before)::

    Guard.from_settings          networks, limits, AUTH users, TLS context (ConfigError)
    spool                        RELAY_SPOOL_DIR → SqliteSpool (SpoolUnavailable)    [close]
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

from relay.config import Settings
from relay.delivery.api import MAX_CONNECTIONS, AhaSendClient
from relay.delivery.bounce import Bouncer
from relay.delivery.circuit import BreakerSender, CircuitBreaker
from relay.delivery.dispatch import Dispatcher
from relay.delivery.pacing import PacedSender, TokenBucket
from relay.delivery.policy import SpoolPolicy
from relay.delivery.retry import RetryingSender
from relay.delivery.route import DEFAULT_ROUTE, Route, Router, SingleRouter
from relay.delivery.sender import DryRunSender, Sender
from relay.delivery.spool import SpoolBackend, SqliteSpool
from relay.delivery.transport import build_transport
from relay.delivery.worker import SpoolWorker
from relay.ops.admin import AdminServer
from relay.ops.health import readiness
from relay.ops.metrics import MeteredTransport, RelayMetrics
from relay.smtp.guard import Guard
from relay.smtp.handler import RelayHandler
from relay.smtp.replies import DRY_RUN_ACCEPTED, QUEUED

__all__ = ["Relay", "assemble", "build_sender", "default_route", "open_spool"]


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
    metrics = RelayMetrics(
        sessions_open=lambda: len(sessions),
        spool_stats=spool.stats if spool is not None else None,
    )
    guard = dataclasses.replace(guard, on_auth_failure=metrics.auth_failures.inc)
    stop_retrying = asyncio.Event()
    client = sender if sender is not None else build_sender(settings, metrics)
    router = SingleRouter(default_route(settings, client, stop_retrying))
    resources.push_async_callback(router.aclose)
    policy = SpoolPolicy.from_settings(settings)
    handler = RelayHandler(
        Dispatcher(router, spool, policy),
        max_recipients=settings.relay_max_recipients,
        accepted_reply=DRY_RUN_ACCEPTED if settings.relay_dry_run else QUEUED,
        sender_policy=guard.senders,
        observer=metrics,
    )
    return Relay(
        settings=settings, guard=guard, metrics=metrics, router=router, handler=handler,
        spool=spool, worker=_worker(settings, spool, router, policy),
        admin=_admin_server(settings, metrics, listening), stop_retrying=stop_retrying,
    )  # fmt: skip


async def open_spool(settings: Settings, resources: AsyncExitStack) -> SpoolBackend | None:
    """The spool ``RELAY_SPOOL_DIR`` names (closed with ``resources``), or None without one."""
    if settings.relay_spool_dir is None:
        return None
    spool = await asyncio.to_thread(SqliteSpool, settings.relay_spool_dir)
    resources.push_async_callback(spool.close)
    return spool


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
        transport=_metered_transport(metrics, settings.ahasend_api_transport)
        if metrics is not None
        else build_transport(settings.ahasend_api_transport, MAX_CONNECTIONS),
    )


def _metered_transport(
    metrics: RelayMetrics, choice: str, connections: int = MAX_CONNECTIONS
) -> MeteredTransport:
    """The transport ``choice`` names (``AHASEND_API_TRANSPORT``), metered."""
    inner = build_transport(choice, connections)
    if inner is None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        inner = httpx.AsyncHTTPTransport(limits=limits)
    return MeteredTransport(metrics, inner)


def default_route(
    settings: Settings,
    client: Sender,
    stopping: asyncio.Event,
    breaker: CircuitBreaker | None = None,
) -> Route:
    """The settings' one route: ``client`` paced by RELAY_API_RATE/_BURST/_CONCURRENCY,
    behind a circuit breaker, retried within RELAY_RETRY_DEADLINE until ``stopping`` is set
    or the breaker opens."""
    bucket = TokenBucket(settings.relay_api_rate, settings.relay_api_burst)
    paced = PacedSender(client, bucket, max_concurrency=settings.relay_api_concurrency)
    guarded = BreakerSender(paced, breaker or CircuitBreaker())
    retrying = RetryingSender(
        guarded, deadline=settings.relay_retry_deadline, stopping=stopping, breaker=guarded.breaker
    )
    account = "" if settings.relay_dry_run else str(settings.ahasend_account_id)
    return Route(DEFAULT_ROUTE, account, sender=guarded, retrying=retrying)


def _worker(
    settings: Settings, spool: SpoolBackend | None, router: Router, policy: SpoolPolicy
) -> SpoolWorker | None:
    """The spool worker (bounce notices through the default route), None without a spool."""
    if spool is None:
        return None
    bouncer = None
    if settings.relay_bounce_notices and settings.relay_bounce_from:
        bouncer = Bouncer(router.default.sender, settings.relay_bounce_from)
    return SpoolWorker(spool, router, policy, bouncer=bouncer)


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
