"""The relay's lifecycle: start listening, serve until told to stop, shut down gracefully.

``RelayServer`` runs one relay (``relay.assembly`` builds its parts). ``start`` opens
everything in order on one ``contextlib.AsyncExitStack`` (as uvicorn's server runs
startup, serve and shutdown): the parts ``assemble`` opens (the spool, the API client),
then the SMTP listener, the implicit-TLS listener (``RELAY_SMTPS_PORT``), the admin server
(``RELAY_METRICS_PORT``), the spool worker task and one background read of the account
(``relay.delivery.api.check_account``: ``/readyz`` learns of a refused key at once). A
failure at any step unwinds that stack, so everything opened before it is closed again,
and the error propagates (the CLI turns it into an exit status). ``stop`` drains, then
unwinds the same stack: one cleanup path for both.

``run`` wraps it for the CLI, again on one exit stack: SIGHUP (re-read the TLS certificate
and the AUTH users, ``RelayServer.reload``, listeners stay up) from before the listeners
open, SIGTERM/SIGINT (graceful shutdown) once serving; each signal's previous handler is
restored on the way out, whether start-up failed or the relay served and stopped.

With ``RELAY_SMTPS_PORT`` a second listener speaks implicit TLS (port 465 style); its
sessions are the same ``GuardedSMTP`` as on the plain port (``relay.smtp.guard``).

Delivery stack: the handler sends through its route's ``RetryingSender`` (retries within
the transaction) → ``PacedSender`` (token bucket, concurrency cap) → the API client (see
``relay.delivery.route``); with ``RELAY_SPOOL_DIR`` set, transient failures are spooled
and a ``SpoolWorker`` task delivers them through the same ``PacedSender``.

Graceful shutdown (SIGTERM), all within ``RELAY_SHUTDOWN_TIMEOUT`` seconds: the listener
stays open but answers new connections ``421 4.3.2`` and closes them; sessions between
transactions get 421 and are closed; a transaction in flight finishes (without further
in-transaction retries: what still fails is spooled, or gets a 4xx) and its session
then gets 421. An API call still running when the grace period ends is abandoned: its
request is spooled (same Idempotency-Key) and answered 250, or answered ``421 4.3.2``
without a spool, within a few more seconds (``relay.smtp.drain.ANSWER_GRACE``).
Sessions still open after that are closed. Meanwhile the spool worker
stops after its delivery round in progress (a safe point; it is cancelled if it
overruns the grace period, which is safe too: a spooled row only changes after the API
answered). Then the stack unwinds: the worker is awaited, the admin server stopped, the
listeners, the API client and the spool closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from types import TracebackType

from relay import __version__
from relay.assembly import Relay, assemble, reload_tenants
from relay.config import Settings
from relay.delivery.api import AhaSendClient, check_account
from relay.delivery.sender import Sender
from relay.delivery.spool import SpoolBackend
from relay.delivery.worker import SpoolWorker
from relay.errors import ConfigError, RelayError
from relay.ops.admin import AdminServer
from relay.ops.log import get_logger
from relay.ops.metrics import RelayMetrics
from relay.ops.systemd import Notifier
from relay.smtp.drain import Refuser, finish_sessions
from relay.smtp.guard import Guard
from relay.smtp.handler import RelayHandler
from relay.smtp.session import RelaySession

__all__ = ["RelayServer", "run"]

log = get_logger("relay.server")


class RelayServer:
    """One relay: ``start`` → ``stop``, or ``async with``. ``sender`` replaces the API client.

    The parts (``spool``, ``admin``, ``metrics``...) exist from ``start`` on; they stay
    readable after ``stop`` or a failed ``start`` (closed).
    """

    def __init__(self, settings: Settings, sender: Sender | None = None) -> None:
        self.settings = settings
        self._sender = sender
        self._sessions: set[RelaySession] = set()
        self._relay: Relay | None = None
        self._server: asyncio.Server | None = None
        self._smtps_server: asyncio.Server | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._resources: AsyncExitStack | None = None
        self._draining = False
        self._ends: float | None = None
        """When the shutdown grace period ends (loop time); None before ``stop``."""
        self._account_check: asyncio.Task[RelayError | None] | None = None

    async def __aenter__(self) -> RelayServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the parts ---------------------------------------------------------------------
    @property
    def relay(self) -> Relay:
        """Everything ``assemble`` built (from ``start`` on)."""
        assert self._relay is not None, "not started"
        return self._relay

    @property
    def handler(self) -> RelayHandler:
        return self.relay.handler

    @property
    def guard(self) -> Guard:
        return self.relay.guard

    @property
    def metrics(self) -> RelayMetrics:
        return self.relay.metrics

    @property
    def spool(self) -> SpoolBackend | None:
        return self.relay.spool

    @property
    def worker(self) -> SpoolWorker | None:
        return self.relay.worker

    @property
    def admin(self) -> AdminServer | None:
        return self.relay.admin

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

    @property
    def account_check(self) -> asyncio.Task[RelayError | None] | None:
        """The start-up account read (None in dry run or with an injected sender)."""
        return self._account_check

    @property
    def listening(self) -> bool:
        """True while the SMTP listener accepts connections."""
        return self._server is not None and self._server.is_serving()

    # -- start-up ------------------------------------------------------------------------
    async def start(self) -> None:
        """Open everything in order; returns once connections are accepted.

        On failure everything opened so far is closed again before the error propagates.
        """
        async with AsyncExitStack() as resources:
            self._relay = await assemble(
                self.settings, resources, sessions=self._sessions,
                listening=lambda: self.listening, sender=self._sender,
            )  # fmt: skip
            await self._listen(resources)
            if self.admin is not None:
                await self.admin.start()
                resources.push_async_callback(self.admin.stop)
            if self.worker is not None:
                self._worker_task = asyncio.create_task(self.worker.run(), name="spool-worker")
                resources.push_async_callback(self._stop_worker)
            self._start_account_check(resources)
            self._resources = resources.pop_all()

    def _start_account_check(self, resources: AsyncExitStack) -> None:
        """Read the account in the background: /readyz learns of a refused key at once."""
        client = self.relay.client
        if not isinstance(client, AhaSendClient):
            return  # dry run, or a sender given by a test
        task = asyncio.create_task(check_account(client), name="account-check")
        self._account_check = task
        resources.push_async_callback(_cancelled, task)

    async def _listen(self, resources: AsyncExitStack) -> None:
        """Bind the SMTP listener and, with RELAY_SMTPS_PORT, the implicit-TLS one."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_session, host=self.settings.relay_host, port=self.settings.relay_port
        )
        resources.callback(self.close_listeners)
        if self.settings.relay_smtps_port is not None:
            self._smtps_server = await self._start_smtps(loop)
        log.info("listening", host=self.settings.relay_host, port=self.port,
                 dry_run=self.settings.relay_dry_run, version=__version__,
                 api_rate=self.settings.relay_api_rate,
                 api_burst=self.settings.relay_api_burst)  # fmt: skip
        if (proxy := self.settings.api_proxy) is not None and not self.settings.relay_dry_run:
            log.info("api_proxy", proxy=proxy.masked, source=proxy.source)

    async def _start_smtps(self, loop: asyncio.AbstractEventLoop) -> asyncio.Server:
        server = await loop.create_server(
            lambda: self._new_session(implicit_tls=True),
            host=self.settings.relay_host, port=self.settings.relay_smtps_port,
            ssl=self.guard.tls_context, ssl_handshake_timeout=_handshake_timeout(self.settings),
        )  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        log.info("listening_smtps", host=self.settings.relay_host, port=port)
        return server

    # -- shutdown ------------------------------------------------------------------------
    async def stop(self, grace: float | None = None) -> None:
        """Refuse new work, let transactions finish within ``grace`` seconds, then close.

        See the module docstring for the order. Returns when everything is closed; does
        nothing when not started (or already stopped).
        """
        if self._resources is None:
            return
        grace = self.settings.relay_shutdown_timeout if grace is None else grace
        self._ends = asyncio.get_running_loop().time() + grace
        self._draining = True
        self.relay.stop_retrying.set()
        if self.worker is not None:
            self.worker.stop()  # it ends after its round in progress
        for session in list(self._sessions):
            session.drain()
        abandoned = await finish_sessions(self._sessions, grace, self.relay.grace_over)
        resources, self._resources = self._resources, None
        await resources.aclose()
        log.info("stopped", abandoned_sessions=abandoned)

    def close_listeners(self) -> None:
        """Stop accepting on the plain and the implicit-TLS port (``stop`` does it too)."""
        for server in (self._server, self._smtps_server):
            if server is not None:
                server.close()

    def reload(self) -> None:
        """SIGHUP: re-read the TLS certificate, the AUTH users and the tenants (with their
        key files); listeners stay up. What does not load is logged and the old one stays."""
        if self._relay is None:
            return
        try:
            self.guard.reload()
            tenants = reload_tenants(self._relay)
        except ConfigError as exc:
            log.error("reload_failed", error=str(exc))
            return
        if tenants is not None:
            log.info("tenants_reloaded", tenants=tenants)

    async def _stop_worker(self) -> None:
        """Stop the worker after its round in progress; cancel it past the grace period
        (at once when start-up failed)."""
        assert self.worker is not None
        assert self._worker_task is not None
        self.worker.stop()
        loop = asyncio.get_running_loop()
        grace = max(self._ends - loop.time(), 0.0) if self._ends is not None else 0.0
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


async def _cancelled(task: asyncio.Task[RelayError | None]) -> None:
    """Cancel ``task`` (if still running) and wait for it to end."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _handshake_timeout(settings: Settings) -> float:
    """Seconds an SMTPS client gets to finish its TLS handshake."""
    return min(settings.relay_smtp_timeout, 30.0)


async def run(
    settings: Settings, ready: asyncio.Event | None = None, server: RelayServer | None = None
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully; handlers are restored.

    ``ready`` is set once the relay serves; ``server`` replaces the one built from
    ``settings`` (a seam for tests).
    """
    loop = asyncio.get_running_loop()
    server = server if server is not None else RelayServer(settings)
    notifier = Notifier.from_values(
        settings.notify_socket, settings.watchdog_usec, settings.watchdog_pid
    )
    stop = asyncio.Event()
    async with AsyncExitStack() as lifecycle:
        lifecycle.enter_context(_handling(loop, signal.SIGHUP, server.reload))  # no race
        await lifecycle.enter_async_context(server)
        notifier.ready(
            f"listening on {settings.relay_host}:{server.port}", lambda: server.listening
        )
        lifecycle.push_async_callback(notifier.stopping)
        for signum in (signal.SIGTERM, signal.SIGINT):
            lifecycle.enter_context(_handling(loop, signum, stop.set))
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting_down")


@contextlib.contextmanager
def _handling(
    loop: asyncio.AbstractEventLoop, signum: signal.Signals, callback: Callable[[], object]
) -> Iterator[None]:
    """``callback`` handles ``signum`` on ``loop`` inside the block; the previous handler after."""
    previous = signal.getsignal(signum)
    loop.add_signal_handler(signum, callback)
    try:
        yield
    finally:
        loop.remove_signal_handler(signum)
        if previous is not None:
            signal.signal(signum, previous)
