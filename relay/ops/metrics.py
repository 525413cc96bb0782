"""Prometheus metrics: a few counters, one histogram, callable gauges, text exposition.

Hand-written (no dependency) and cheap on the hot path: recording is a dict update on
the event loop's thread; gauges that describe state (sessions open, spool depth) are
callables evaluated only when ``/metrics`` is scraped. One ``RelayMetrics`` belongs to
one ``RelayServer`` (``server.metrics``), so relays in one process do not mix counts.

Who records what:

- the handler calls ``message_done(reply)`` once per transaction, from the path that
  writes the canonical ``message`` log line (``MessageObserver``);
- ``MeteredTransport`` wraps the AhaSend client's httpx transport and records each
  upstream request's latency and status code (or failure kind), and whether AhaSend was
  reachable last time (``upstream_reachable``, used by ``/readyz``);
- AUTH calls ``metrics.auth_failures.inc()`` on each failed attempt;
- the spool's ``stats`` is handed to ``RelayMetrics`` at construction; ``refresh()``
  (awaited by the admin server before each ``/metrics`` and ``/readyz``) reads it, and the
  spool gauges and ``spool_healthy`` report that reading. A spool that cannot answer is
  unhealthy, and its gauges make ``render`` raise (``/metrics`` answers 500);
- the open sessions are counted by the ``sessions_open`` callable given at construction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

import httpx

from relay import __version__
from relay.delivery.spool.base import SpoolStats
from relay.errors import SpoolUnavailable
from relay.ops.log import get_logger
from relay.smtp.replies import Reply

__all__ = [
    "Counter",
    "GaugeFunc",
    "Histogram",
    "MessageObserver",
    "MeteredTransport",
    "RelayMetrics",
    "SpoolReading",
    "result_of",
]

log = get_logger("relay.upstream")
PREFIX = "ahasend_relay_"
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GaugeFunc = Callable[[], float | None]
SpoolStatsReader = Callable[[], Awaitable[SpoolStats]]


class MessageObserver(Protocol):
    """What the handler reports each transaction's outcome to."""

    def message_done(self, reply: Reply) -> None: ...


def result_of(reply: Reply) -> str:
    """``accepted`` (2xx), ``deferred`` (4xx: the client retries) or ``rejected`` (5xx)."""
    if reply.code < 400:
        return "accepted"
    return "deferred" if reply.code < 500 else "rejected"


class Counter:
    """A monotonically increasing count per label combination."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labels = name, help_text, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {} if labels else {(): 0.0}

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        """Add ``amount`` to the series named by ``label_values`` (one per label)."""
        self._values[label_values] = self._values.get(label_values, 0.0) + amount

    def value(self, *label_values: str) -> float:
        return self._values.get(label_values, 0.0)

    def render(self) -> Iterable[str]:
        yield from _header(self.name, self.help, "counter")
        for values, count in sorted(self._values.items()):
            yield f"{self.name}{_labels(self.labels, values)} {_number(count)}"


class Histogram:
    """Observations counted into cumulative ``le`` buckets, with their sum and count."""

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help_text
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
        self._counts[index] += 1
        self.sum += value
        self.count += 1

    def render(self) -> Iterable[str]:
        yield from _header(self.name, self.help, "histogram")
        cumulative = 0
        for bound, count in zip((*self.buckets, math.inf), self._counts, strict=True):
            cumulative += count
            yield f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}'
        yield f"{self.name}_sum {_number(self.sum)}"
        yield f"{self.name}_count {self.count}"


class Gauge:
    """A value read from ``func`` at scrape time; no sample while ``func`` is unset/None."""

    def __init__(self, name: str, help_text: str, func: GaugeFunc | None = None) -> None:
        self.name, self.help, self.func = name, help_text, func

    def render(self) -> Iterable[str]:
        value = self.func() if self.func is not None else None
        if value is None:
            return
        yield from _header(self.name, self.help, "gauge")
        yield f"{self.name} {_number(value)}"


class SpoolReading:
    """The spool's stats as last read by ``refresh``, for the gauges and readiness."""

    def __init__(self, read: SpoolStatsReader) -> None:
        self._read = read
        self._stats: SpoolStats | None = None
        self._error: str | None = None

    async def refresh(self) -> None:
        """Read the stats now; a failure is remembered (see ``healthy``), not raised."""
        try:
            self._stats, self._error = await self._read(), None
        except Exception as exc:  # a spool that cannot answer a query cannot take mail either
            self._stats, self._error = None, str(exc) or type(exc).__name__

    @property
    def healthy(self) -> bool:
        """Whether the last reading succeeded."""
        return self._stats is not None

    def depth(self) -> float | None:
        return None if (stats := self._current()) is None else stats.queued

    def oldest_age(self) -> float | None:
        return None if (stats := self._current()) is None else stats.oldest_age

    def _current(self) -> SpoolStats | None:
        if self._error is not None:
            raise SpoolUnavailable(self._error)
        return self._stats


class RelayMetrics:
    """Every metric of one relay, and ``render()`` for ``/metrics``.

    ``sessions_open`` counts the SMTP sessions open now; ``spool_stats`` reads the spool's
    stats (see the module docstring). Without them, those gauges render nothing.
    """

    def __init__(
        self,
        *,
        sessions_open: GaugeFunc | None = None,
        spool_stats: SpoolStatsReader | None = None,
    ) -> None:
        self._spool = SpoolReading(spool_stats) if spool_stats is not None else None
        self.messages = Counter(
            PREFIX + "messages_total",
            "Transactions ended with DATA, by result and SMTP reply code.",
            ("result", "code"),
        )
        self.upstream_latency = Histogram(
            PREFIX + "upstream_request_duration_seconds",
            "Time from sending a request to AhaSend to its response headers.",
            LATENCY_BUCKETS,
        )
        self.upstream_responses = Counter(
            PREFIX + "upstream_responses_total",
            "Requests to AhaSend by HTTP status, or timeout/unreachable when none came.",
            ("status",),
        )
        self.auth_failures = Counter(PREFIX + "auth_failures_total", "Failed SMTP AUTH attempts.")
        self.sessions_open = Gauge(
            PREFIX + "sessions_open", "SMTP sessions open now.", sessions_open
        )
        spool = self._spool
        self.spool_depth = Gauge(
            PREFIX + "spool_depth",
            "Messages waiting in the spool.",
            spool.depth if spool is not None else None,
        )
        self.spool_oldest_age = Gauge(
            PREFIX + "spool_oldest_age_seconds",
            "Age of the oldest message in the spool.",
            spool.oldest_age if spool is not None else None,
        )
        self.upstream_reachable: bool | None = None

    @property
    def spool_healthy(self) -> bool | None:
        """Whether the spool answered the last ``refresh`` (None without a spool)."""
        return None if self._spool is None else self._spool.healthy

    async def refresh(self) -> None:
        """Read the state-describing sources (the spool) for the scrape about to happen."""
        if self._spool is not None:
            await self._spool.refresh()

    def message_done(self, reply: Reply) -> None:
        """Count one transaction's final reply (the handler's MessageObserver hook)."""
        self.messages.inc(result_of(reply), str(reply.code))

    def record_upstream(self, status: str, seconds: float | None, reachable: bool) -> None:
        """One upstream request: its status label, its latency when it got an answer."""
        self.upstream_responses.inc(status)
        if seconds is not None:
            self.upstream_latency.observe(seconds)
        self.upstream_reachable = reachable

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines = [
            *_header(PREFIX + "build_info", "Version of this relay.", "gauge"),
            f'{PREFIX}build_info{{version="{__version__}"}} 1',
        ]
        for metric in (
            self.messages, self.upstream_responses, self.upstream_latency, self.auth_failures,
            self.sessions_open, self.spool_depth, self.spool_oldest_age,
        ):  # fmt: skip
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


class MeteredTransport(httpx.AsyncBaseTransport):
    """An httpx transport that records each request's latency and status in ``metrics``."""

    def __init__(
        self,
        metrics: RelayMetrics,
        inner: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._metrics = metrics
        self._inner = inner if inner is not None else httpx.AsyncHTTPTransport()
        self._clock = clock

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = self._clock()
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TimeoutException:
            self._metrics.record_upstream("timeout", None, reachable=False)
            raise
        except httpx.TransportError:
            self._metrics.record_upstream("unreachable", None, reachable=False)
            raise
        seconds = self._clock() - started
        self._metrics.record_upstream(str(response.status_code), seconds, reachable=True)
        log.debug("upstream_response", method=request.method, path=request.url.path,
                  status=response.status_code, latency_ms=round(seconds * 1000, 2),
                  idempotency_key=request.headers.get("Idempotency-Key"))  # fmt: skip
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _header(name: str, help_text: str, kind: str) -> tuple[str, str]:
    return f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))
