"""The relay's lifecycle: start listening, serve until told to stop, shut down gracefully.

``RelayServer`` owns the listening socket, the live SMTP sessions and the ``Sender``.
``run`` wraps it for the CLI: it installs SIGTERM/SIGINT handlers for the duration of
the serve and restores them afterwards; SIGHUP re-reads the TLS certificate and the
AUTH users (``RelayServer.reload``) without closing the listeners.

With ``RELAY_SMTPS_PORT`` a second listener speaks implicit TLS (port 465 style); its
sessions are the same ``RelaySession`` as on the plain port (``relay.smtp.session``).

Delivery stack: the handler sends through ``RetryingSender`` (retries within the
transaction) → ``PacedSender`` (token bucket, concurrency cap) → the API client; with
``RELAY_SPOOL_DIR`` set, transient failures are spooled and a ``SpoolWorker`` task
delivers them through the same ``PacedSender``.

Graceful shutdown (SIGTERM), all within ``RELAY_SHUTDOWN_TIMEOUT`` seconds: the listener
stays open but answers new connections ``421 4.3.2`` and closes them; sessions between
transactions get 421 and are closed; a transaction in flight finishes (without further
in-transaction retries: what still fails is spooled, or gets a 4xx) and its session
then gets 421. Sessions still open at the end are closed. Meanwhile the spool worker
stops after its delivery round in progress (a safe point; it is cancelled if it
overruns the grace period, which is safe too: a spooled row only changes after the API
answered). Then the listener, the sender and the spool are closed.
"""

from __future__ import annotations

import asyncio
import signal

import httpx

from relay import __version__
from relay.config import Settings
from relay.delivery.api import MAX_CONNECTIONS, AhaSendClient
from relay.delivery.bounce import Bouncer
from relay.delivery.dispatch import Dispatcher
from relay.delivery.pacing import PacedSender, TokenBucket
from relay.delivery.policy import SpoolPolicy
from relay.delivery.retry import RetryingSender
from relay.delivery.route import DEFAULT_ROUTE, Route, Router, SingleRouter
from relay.delivery.sender import DryRunSender, Sender
from relay.delivery.spool import SpoolBackend, SqliteSpool
from relay.delivery.transport import build_transport
from relay.delivery.worker import SpoolWorker
from relay.errors import ConfigError
from relay.ops.admin import AdminServer, Readiness
from relay.ops.health import readiness
from relay.ops.log import get_logger
from relay.ops.metrics import MeteredTransport, RelayMetrics
from relay.ops.systemd import Notifier
from relay.smtp.drain import Refuser, finish_sessions
from relay.smtp.guard import Guard
from relay.smtp.handler import RelayHandler
from relay.smtp.replies import DRY_RUN_ACCEPTED, QUEUED
from relay.smtp.session import RelaySession

__all__ = ["RelayServer", "build_sender", "run"]

log = get_logger("relay.server")


def build_sender(settings: Settings, metrics: RelayMetrics | None = None) -> Sender:
    """The Sender the settings ask for: dry-run, or the AhaSend client (metered if asked)."""
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


class RelayServer:
    """One SMTP listener forwarding through one Sender. ``start`` → ``stop``."""

    def __init__(self, settings: Settings, sender: Sender | None = None) -> None:
        self.settings = settings
        self.spool: SpoolBackend | None = (
            SqliteSpool(settings.relay_spool_dir) if settings.relay_spool_dir else None
        )
        self._sessions: set[RelaySession] = set()
        self.metrics = RelayMetrics(
            sessions_open=lambda: len(self._sessions),
            spool_stats=self.spool.stats if self.spool is not None else None,
        )
        self.guard = Guard.from_settings(settings)
        self.guard.on_auth_failure = self.metrics.auth_failures.inc
        self.sender = sender if sender is not None else build_sender(settings, self.metrics)
        self._stop_retrying = asyncio.Event()
        self.router = SingleRouter(default_route(settings, self.sender, self._stop_retrying))
        self.handler = RelayHandler(
            Dispatcher(self.router, self.spool, SpoolPolicy.from_settings(settings)),
            max_recipients=settings.relay_max_recipients,
            accepted_reply=DRY_RUN_ACCEPTED if settings.relay_dry_run else QUEUED,
            sender_policy=self.guard.senders,
            observer=self.metrics,
        )
        self.worker = _worker(self.spool, self.router, settings) if self.spool else None
        self._worker_task: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._smtps_server: asyncio.Server | None = None
        self._draining = False
        self.admin = _admin_server(settings, self.metrics, self.readiness)

    @property
    def port(self) -> int:
        """The bound port (useful with ``RELAY_PORT=0``)."""
        assert self._server is not None, "not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def smtps_port(self) -> int | None:
        """The bound implicit-TLS port, or None without ``RELAY_SMTPS_PORT``."""
        if self._smtps_server is None:
            return None
        port: int = self._smtps_server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Bind the listener(s); returns once connections are accepted."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_session, host=self.settings.relay_host, port=self.settings.relay_port
        )
        if self.settings.relay_smtps_port is not None:
            try:
                self._smtps_server = await self._start_smtps(loop)
            except OSError:
                self._server.close()
                raise
        log.info("listening", host=self.settings.relay_host, port=self.port,
                 dry_run=self.settings.relay_dry_run, version=__version__)  # fmt: skip
        if self.admin is not None:
            try:
                await self.admin.start()
            except OSError:
                self._close_listeners()
                await self.router.aclose()
                raise
        if self.worker is not None:
            self._worker_task = asyncio.create_task(self.worker.run(), name="spool-worker")

    @property
    def listening(self) -> bool:
        """True while the SMTP listener accepts connections."""
        return self._server is not None and self._server.is_serving()

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason), as ``/readyz`` reports it."""
        return readiness(self.listening, self.settings.relay_dry_run, self.metrics)

    async def _start_smtps(self, loop: asyncio.AbstractEventLoop) -> asyncio.Server:
        server = await loop.create_server(
            lambda: self._new_session(implicit_tls=True),
            host=self.settings.relay_host, port=self.settings.relay_smtps_port,
            ssl=self.guard.tls_context, ssl_handshake_timeout=_handshake_timeout(self.settings),
        )  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        log.info("listening_smtps", host=self.settings.relay_host, port=port)
        return server

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new work, let transactions finish within ``grace`` seconds, then close.

        See the module docstring for the order. Returns when everything is closed.
        """
        grace = self.settings.relay_shutdown_timeout if grace is None else grace
        loop = asyncio.get_running_loop()
        ends = loop.time() + grace
        self._draining = True
        self._stop_retrying.set()
        if self.worker is not None:
            self.worker.stop()  # it ends after its round in progress
        for session in list(self._sessions):
            session.drain()
        abandoned = await finish_sessions(self._sessions, grace)
        self._close_listeners()
        await self._stop_worker(max(ends - loop.time(), 0.0))
        await self.router.aclose()
        if self.admin is not None:
            await self.admin.stop()
        if self.spool is not None:
            await self.spool.close()
        log.info("stopped", abandoned_sessions=abandoned)

    def _close_listeners(self) -> None:
        """Stop accepting on the plain and the implicit-TLS port."""
        for server in (self._server, self._smtps_server):
            if server is not None:
                server.close()

    def reload(self) -> None:
        """SIGHUP: re-read the TLS certificate and the AUTH users; listeners stay up."""
        try:
            self.guard.reload()
        except ConfigError as exc:
            log.error("reload_failed", error=str(exc))

    async def _stop_worker(self, grace: float) -> None:
        """Wait for the worker to end its round in progress; cancel it past ``grace``."""
        if self._worker_task is None:
            return
        done, _ = await asyncio.wait([self._worker_task], timeout=grace)
        if not done:
            log.warning("worker_cancelled", grace_s=round(grace, 1))
            self._worker_task.cancel()
        await asyncio.gather(self._worker_task, return_exceptions=True)

    def _new_session(self, implicit_tls: bool = False) -> asyncio.Protocol:
        if self._draining:
            return Refuser()
        session = RelaySession(
            self.handler, guard=self.guard, registry=self._sessions, implicit_tls=implicit_tls
        )
        self._sessions.add(session)
        return session


def _admin_server(
    settings: Settings, metrics: RelayMetrics, ready: Readiness
) -> AdminServer | None:
    """The /metrics, /healthz, /readyz server when RELAY_METRICS_PORT is set."""
    if settings.relay_metrics_port is None:
        return None
    return AdminServer(
        settings.relay_metrics_host, settings.relay_metrics_port,
        render=metrics.render, ready=ready, refresh=metrics.refresh,
    )  # fmt: skip


def default_route(settings: Settings, client: Sender, stopping: asyncio.Event) -> Route:
    """The settings' one route: ``client`` paced by RELAY_API_RATE/_BURST/_CONCURRENCY."""
    bucket = TokenBucket(settings.relay_api_rate, settings.relay_api_burst)
    paced = PacedSender(client, bucket, max_concurrency=settings.relay_api_concurrency)
    retrying = RetryingSender(paced, deadline=settings.relay_retry_deadline, stopping=stopping)
    account = "" if settings.relay_dry_run else str(settings.ahasend_account_id)
    return Route(DEFAULT_ROUTE, account, sender=paced, retrying=retrying)


def _worker(spool: SpoolBackend, router: Router, settings: Settings) -> SpoolWorker:
    policy = SpoolPolicy.from_settings(settings)
    bouncer = None
    if settings.relay_bounce_notices and settings.relay_bounce_from:
        bouncer = Bouncer(router.default.sender, settings.relay_bounce_from)
    return SpoolWorker(spool, router, policy, bouncer=bouncer)


def _handshake_timeout(settings: Settings) -> float:
    """Seconds an SMTPS client gets to finish its TLS handshake."""
    return min(settings.relay_smtp_timeout, 30.0)


async def run(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; handlers are restored."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    server = RelayServer(settings)
    notifier = Notifier.from_values(
        settings.notify_socket, settings.watchdog_usec, settings.watchdog_pid
    )
    loop.add_signal_handler(signal.SIGHUP, server.reload)  # from "listening" on, no race
    try:
        await server.start()
    except BaseException:
        loop.remove_signal_handler(signal.SIGHUP)
        raise
    notifier.ready(f"listening on {settings.relay_host}:{server.port}", lambda: server.listening)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting_down")
    finally:
        await notifier.stopping()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await server.stop()
