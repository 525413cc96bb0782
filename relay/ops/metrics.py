"""Prometheus metrics, with prometheus-client: one registry per ``RelayServer``.

Recording is a counter or histogram update on the event loop's thread; gauges that
describe state are functions (``Gauge.set_function``) evaluated when ``/metrics`` is
scraped. The spool's gauges read one ``SpoolStats`` snapshot taken by ``refresh()``,
which the admin server awaits before each ``/metrics`` and ``/readyz``: a scrape costs one
spool query, off the hot path. The process collector adds
``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ``process_open_fds``...

Who records what (each through a small hook, so the recording modules import nothing
from here):

- the message and upstream counters carry a ``tenant`` label (``DEFAULT_TENANT`` or a
  tenant's name, so bounded by RELAY_TENANTS_FILE);
- the handler calls ``message_done`` once per transaction, from the path that writes the
  canonical ``message`` log line, and ``refused`` for a RCPT it refuses (``MessageObserver``);
- the guard calls ``refused`` for refusals before DATA (connect, MAIL) and
  ``auth_failures.inc`` for each failed AUTH;
- the dispatcher, the spool worker and the in-transaction retrier report spool flow and
  retries (``relay.delivery.events.DeliveryEvents``);
- ``MeteredTransport`` wraps the AhaSend client's httpx transport: each request's latency
  and status code (or failure kind), and whether AhaSend was reachable last time
  (``upstream_reachable``) and the last status (``upstream_last``), used by ``/readyz``;
- the open-session count and the spool's async stats reader are given at construction;
  ``watch_readiness`` adds the readiness gauge;
- ``circuit_open`` follows the upstream circuit breaker (``relay.delivery.circuit``);
  ``circuit_is_open`` keeps its state for ``/readyz``.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import httpx
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from relay import __version__
from relay.delivery.route import DEFAULT_ROUTE
from relay.delivery.spool.base import SpoolStats
from relay.ops.log import get_logger
from relay.smtp import replies
from relay.smtp.replies import Reply

__all__ = [
    "DEFAULT_TENANT",
    "MessageObserver",
    "MeteredTransport",
    "RelayMetrics",
    "refusal_reason",
    "result_of",
]

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: dashboards never use them
log = get_logger("relay.upstream")
PREFIX = "ahasend_relay_"
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SpoolStatsReader = Callable[[], Awaitable[SpoolStats]]
TRANSACTION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
KIB, MIB = 1024.0, 1024.0 * 1024
REFRESH_TIMEOUT = 0.5
"""Seconds a scrape waits for the spool's stats before calling the spool unreadable. A
health check must get its answer within its own timeout (kubelet's default is 1 s, the
HAProxy example's 2 s) even while the shared database does not answer; /readyz then
reports the spool as degraded."""
SIZE_BUCKETS = (KIB, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB, 4 * MIB, 10 * MIB, 20 * MIB)
RESULTS = ("accepted", "deferred", "rejected")
ROUTES = ("sent", "spooled", "dry_run")
SPOOL_EVENTS = ("spooled", "delivered", "deferred", "dead")
DEFAULT_TENANT = DEFAULT_ROUTE
"""The ``tenant`` label of mail no tenant claims (and of every message without tenants).
The label's other values are the tenant names of RELAY_TENANTS_FILE: bounded by the
operator's file, never by what a client sends."""
_REASONS = {
    replies.CLIENT_NOT_ALLOWED: "network",
    replies.AUTH_REQUIRED: "auth",
    replies.AUTH_TOO_MANY_FAILURES: "auth",
    replies.STARTTLS_REQUIRED: "tls",
    replies.SENDER_NOT_ALLOWED: "sender",
    replies.BAD_RECIPIENT_ADDRESS: "recipient",
    replies.TOO_MANY_RECIPIENTS: "recipient",
    replies.TOO_MANY_CONNECTIONS: "connections",
    replies.PEER_RATE_EXCEEDED: "rate",
}
REFUSAL_REASONS = (*dict.fromkeys(_REASONS.values()), "other")


class MessageObserver(Protocol):
    """What the handler reports each transaction's outcome, and each RCPT refusal, to."""

    def message_done(
        self,
        reply: Reply,
        *,
        seconds: float,
        size: int,
        spooled: bool,
        sent: bool,
        tenant: str = ...,
    ) -> None: ...

    def refused(self, reply: Reply) -> None: ...


def result_of(reply: Reply) -> str:
    """``accepted`` (2xx), ``deferred`` (4xx: the client retries) or ``rejected`` (5xx)."""
    if reply.code < 400:
        return "accepted"
    return "deferred" if reply.code < 500 else "rejected"


def refusal_reason(reply: Reply) -> str:
    """The ``reason`` label of a refusal before DATA."""
    return _REASONS.get(reply, "other")


class RelayMetrics:
    """Every metric of one relay, and ``render()`` for ``/metrics``."""

    def __init__(
        self,
        *,
        sessions_open: Callable[[], int] | None = None,
        spool_stats: SpoolStatsReader | None = None,
        spool_available: Callable[[], bool] | None = None,
        pacing_shared: Callable[[], bool] | None = None,
        stats_timeout: float = REFRESH_TIMEOUT,
    ) -> None:
        """``sessions_open`` counts the SMTP sessions open now; ``spool_stats`` reads the
        spool's stats (awaited by ``refresh``, for at most ``stats_timeout`` seconds);
        ``spool_available`` says whether the spool's last call reached it;
        ``pacing_shared`` whether the replicas' shared token bucket answers. Without them,
        those gauges are not exported."""
        self._stats_timeout = stats_timeout
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        Info(PREFIX + "build", "Version of this relay.", registry=registry).info(
            {"version": __version__}
        )
        self.messages = Counter(
            PREFIX + "messages",
            "Transactions ended with DATA, by result, SMTP reply code and tenant.",
            ("result", "code", "tenant"), registry=registry,
        )  # fmt: skip
        self.accepted = _preset(Counter(
            PREFIX + "messages_accepted",
            "Transactions answered 2xx, by route: sent to AhaSend in the transaction, "
            "spooled for later delivery, or dry run; and by tenant.", ("route", "tenant"),
            registry=registry,
        ), [(route, DEFAULT_TENANT) for route in ROUTES])  # fmt: skip
        self.transaction_seconds = Histogram(
            PREFIX + "transaction_duration_seconds",
            "Time from the end of DATA to the reply.", buckets=TRANSACTION_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.message_size = Histogram(
            PREFIX + "message_size_bytes", "Size of each message received with DATA.",
            buckets=SIZE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.refusals = _preset(Counter(
            PREFIX + "refusals", "Refusals before DATA (connect, MAIL, RCPT), by reason.",
            ("reason",), registry=registry,
        ), REFUSAL_REASONS)  # fmt: skip
        self.auth_failures = Counter(
            PREFIX + "auth_failures", "Failed SMTP AUTH attempts.", registry=registry
        )
        self._init_delivery(registry)
        self.upstream_reachable: bool | None = None
        self.upstream_last: str | None = None
        self.upstream_last_by_tenant: dict[str, str] = {}
        """The last status label of each tenant's route (``DEFAULT_TENANT``: the global
        key's); ``/readyz`` calls the relay refused only when every route is."""
        """The status label of the last upstream request (``"202"``, ``"401"``,
        ``"unreachable"``, ``"timeout"``); None before the first one (``/readyz``)."""
        self.circuit_is_open = False
        self._spool_stats = spool_stats
        self._snapshot: SpoolStats | None = None
        if sessions_open is not None:
            self._watch_sessions(sessions_open)
        if spool_stats is not None:
            self._watch_spool()
        if spool_available is not None:
            gauge = Gauge(
                PREFIX + "spool_available",
                "1 while the spool's last operation and its last stats read reached it "
                "(0: PostgreSQL unreachable, messages that need the spool get 451).",
                registry=registry,
            )
            gauge.set_function(lambda: float(spool_available() and self.spool_healthy is not False))
        if pacing_shared is not None:
            gauge = Gauge(
                PREFIX + "pacing_shared",
                "1 while API calls are paced by the replicas' shared bucket in PostgreSQL "
                "(0: unreachable, this replica paces at RELAY_API_RATE / RELAY_REPLICAS).",
                registry=registry,
            )
            gauge.set_function(lambda: float(pacing_shared()))

    def _init_delivery(self, registry: CollectorRegistry) -> None:
        self.upstream_latency = Histogram(
            PREFIX + "upstream_request_duration_seconds",
            "Time from sending a request to AhaSend to its response headers.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.upstream_responses = Counter(
            PREFIX + "upstream_responses",
            "Requests to AhaSend by HTTP status (or timeout/unreachable when none came) "
            "and tenant.", ("status", "tenant"), registry=registry,
        )  # fmt: skip
        self.retries = Counter(
            PREFIX + "retries", "Retries of a request inside the SMTP transaction, by error.",
            ("error",), registry=registry,
        )  # fmt: skip
        self.spool_events = _preset(Counter(
            PREFIX + "spool_messages",
            "Spool flow: requests spooled, delivered from the spool, deferred again, dead.",
            ("event",), registry=registry,
        ), SPOOL_EVENTS)  # fmt: skip
        self.circuit_open = Gauge(
            PREFIX + "circuit_open",
            "1 while the upstream circuit breaker is open.",
            registry=registry,
        )  # fmt: skip

    # -- hooks ------------------------------------------------------------------------
    def message_done(
        self,
        reply: Reply,
        *,
        seconds: float,
        size: int,
        spooled: bool,
        sent: bool,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """One transaction's final reply, duration and size (the handler's hook)."""
        result = result_of(reply)
        self.messages.labels(result, str(reply.code), tenant).inc()
        if result == "accepted":
            route = "spooled" if spooled else "sent" if sent else "dry_run"
            self.accepted.labels(route, tenant).inc()
        self.transaction_seconds.observe(seconds)
        self.message_size.observe(size)

    def refused(self, reply: Reply) -> None:
        """One refusal before DATA."""
        self.refusals.labels(refusal_reason(reply)).inc()

    def retried(self, error: str) -> None:
        """One in-transaction retry after ``error`` (an exception class name)."""
        self.retries.labels(error).inc()

    def circuit_changed(self, is_open: bool) -> None:
        """The upstream circuit breaker opened or closed (the ``circuit_open`` gauge)."""
        self.circuit_open.set(1.0 if is_open else 0.0)
        self.circuit_is_open = is_open

    def spool_event(self, event: str) -> None:
        """A request ``spooled``, ``delivered``, ``deferred`` or ``dead``."""
        self.spool_events.labels(event).inc()

    def record_upstream(
        self, status: str, seconds: float | None, reachable: bool, tenant: str = DEFAULT_TENANT
    ) -> None:
        """One upstream request: its status label, its latency when it got an answer."""
        self.upstream_responses.labels(status, tenant).inc()
        if seconds is not None:
            self.upstream_latency.observe(seconds)
        self.upstream_reachable = reachable
        self.upstream_last = status
        self.upstream_last_by_tenant[tenant] = status

    # -- gauges -----------------------------------------------------------------------
    def _watch_sessions(self, count: Callable[[], int]) -> None:
        """Export ``count()`` as the number of SMTP sessions open."""
        gauge = Gauge(PREFIX + "sessions_open", "SMTP sessions open now.", registry=self.registry)
        gauge.set_function(count)

    def watch_readiness(self, ready: Callable[[], bool]) -> None:
        """Export ``ready()`` (what ``/readyz`` answers) as 1 or 0, for alerting."""
        gauge = Gauge(PREFIX + "ready", "1 while /readyz answers 200.", registry=self.registry)
        gauge.set_function(lambda: float(ready()))

    def _watch_spool(self) -> None:
        """Export the spool's depth, oldest age and dead letters from the last snapshot."""
        for name, help_text, field in (
            ("spool_depth", "Messages waiting in the spool.", "queued"),
            ("spool_oldest_age_seconds", "Age of the oldest message in the spool.",
             "oldest_age"),
            ("spool_dead", "Dead letters in the spool (given up on, kept for queue retry).",
             "dead"),
        ):  # fmt: skip
            gauge = Gauge(PREFIX + name, help_text, registry=self.registry)
            gauge.set_function(functools.partial(self._spool_value, field))

    @property
    def spool_healthy(self) -> bool | None:
        """Whether the spool answered the last ``refresh`` (None without a spool)."""
        return None if self._spool_stats is None else self._snapshot is not None

    async def refresh(self) -> None:
        """Read the spool's stats for the scrape (or readiness check) about to happen."""
        if self._spool_stats is None:
            return
        try:
            async with asyncio.timeout(self._stats_timeout):  # a probe must not wait for a database
                self._snapshot = await self._spool_stats()
        except Exception:  # an unreadable spool: NaN gauges, /readyz says why
            log.warning("spool_stats_failed", exc_info=True)
            self._snapshot = None

    def _spool_value(self, field: str) -> float:
        if self._snapshot is None:
            return math.nan
        return float(getattr(self._snapshot, field))

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        return generate_latest(self.registry).decode("utf-8")


def _preset(counter: Counter, values: Iterable[str | tuple[str, ...]]) -> Counter:
    """``counter`` with a zero series per label value, so rates exist from the start."""
    for value in values:
        counter.labels(*((value,) if isinstance(value, str) else value))
    return counter


class MeteredTransport(httpx.AsyncBaseTransport):
    """An httpx transport that records each request's latency and status in ``metrics``."""

    def __init__(
        self,
        metrics: RelayMetrics,
        inner: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.perf_counter,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """Requests through ``inner`` counted under ``tenant`` (the route's name)."""
        self._metrics = metrics
        self._tenant = tenant
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        self._clock = clock

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = self._clock()
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TimeoutException:
            self._metrics.record_upstream("timeout", None, False, self._tenant)
            raise
        except httpx.TransportError:
            self._metrics.record_upstream("unreachable", None, False, self._tenant)
            raise
        seconds = self._clock() - started
        self._metrics.record_upstream(str(response.status_code), seconds, True, self._tenant)
        log.debug("upstream_response", method=request.method, path=request.url.path,
                  status=response.status_code, latency_ms=round(seconds * 1000, 2),
                  idempotency_key=request.headers.get("Idempotency-Key"))  # fmt: skip
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
