"""Unit tests of relay.ops.metrics (exposition parsed with prometheus-client's own parser,
transport metering, the spool snapshot) and the readiness rule."""

from __future__ import annotations

import asyncio
import itertools
import math
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.delivery.spool import SpoolStats
from relay.errors import SpoolUnavailable
from relay.ops.health import readiness
from relay.ops.metrics import MeteredTransport, RelayMetrics, refusal_reason, result_of
from relay.smtp.replies import (
    AUTH_REQUIRED,
    BAD_RECIPIENT_ADDRESS,
    CLIENT_NOT_ALLOWED,
    LOCAL_ERROR,
    PEER_RATE_EXCEEDED,
    QUEUED,
    SENDER_NOT_ALLOWED,
    TOO_LARGE,
    TOO_MANY_CONNECTIONS,
)

Key = tuple[str, frozenset[tuple[str, str]]]


def parse(text: str) -> dict[Key, float]:
    """Every sample of an exposition, parsed by prometheus-client: {(name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    """The samples ``name{labels}`` of an exposition summed over the labels not given
    (PromQL's ``sum``), or None when none is present."""
    wanted = set(labels.items())
    found = [v for (n, have), v in parse(text).items() if n == name and wanted <= have]
    return sum(found) if found else None


def names(text: str) -> set[str]:
    return {name for name, _ in parse(text)}


def test_result_follows_the_reply_class() -> None:
    assert [result_of(r) for r in (QUEUED, LOCAL_ERROR, TOO_LARGE)] == [
        "accepted", "deferred", "rejected",
    ]  # fmt: skip


def test_refusal_reasons() -> None:
    replies = (CLIENT_NOT_ALLOWED, AUTH_REQUIRED, SENDER_NOT_ALLOWED, BAD_RECIPIENT_ADDRESS,
               TOO_MANY_CONNECTIONS, PEER_RATE_EXCEEDED, LOCAL_ERROR)  # fmt: skip
    assert [refusal_reason(r) for r in replies] == [
        "network", "auth", "sender", "recipient", "connections", "rate", "other",
    ]  # fmt: skip


def test_messages_by_result_route_duration_and_size() -> None:
    metrics = RelayMetrics()
    metrics.message_done(QUEUED, seconds=0.2, size=3000, spooled=False, sent=True)
    metrics.message_done(QUEUED, seconds=0.02, size=2_000_000, spooled=True, sent=False)
    metrics.message_done(QUEUED, seconds=0.01, size=10, spooled=False, sent=False)
    metrics.message_done(LOCAL_ERROR, seconds=60.0, size=10, spooled=False, sent=False)
    text = metrics.render()
    assert value(text, "ahasend_relay_messages_total", result="accepted", code="250") == 3
    assert value(text, "ahasend_relay_messages_total", result="deferred", code="451") == 1
    for route, count in (("sent", 1), ("spooled", 1), ("dry_run", 1)):
        assert value(text, "ahasend_relay_messages_accepted_total", route=route) == count
    assert value(text, "ahasend_relay_transaction_duration_seconds_count") == 4
    assert value(text, "ahasend_relay_transaction_duration_seconds_bucket", le="0.25") == 3
    assert value(text, "ahasend_relay_message_size_bytes_bucket", le="4096.0") == 3
    assert value(text, "ahasend_relay_message_size_bytes_sum") == 2_003_020


def test_labelled_counters_start_at_zero_and_build_info_is_one() -> None:
    text = RelayMetrics().render()
    assert value(text, "ahasend_relay_refusals_total", reason="rate") == 0
    assert value(text, "ahasend_relay_spool_messages_total", event="dead") == 0
    assert value(text, "ahasend_relay_messages_accepted_total", route="spooled") == 0
    assert value(text, "ahasend_relay_circuit_open") == 0
    [build] = [k for k in parse(text) if k[0] == "ahasend_relay_build_info"]
    assert parse(text)[build] == 1
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total",
            "process_open_fds"} <= names(text)  # fmt: skip
    assert not any(name.endswith("_created") for name in names(text))


def test_hooks_count_refusals_retries_spool_flow_and_auth() -> None:
    metrics = RelayMetrics()
    metrics.refused(PEER_RATE_EXCEEDED)
    metrics.refused(SENDER_NOT_ALLOWED)
    metrics.refused(SENDER_NOT_ALLOWED)
    metrics.retried("UpstreamThrottled")
    for event in ("spooled", "spooled", "delivered", "dead"):
        metrics.spool_event(event)
    metrics.auth_failures.inc()
    text = metrics.render()
    assert value(text, "ahasend_relay_refusals_total", reason="rate") == 1
    assert value(text, "ahasend_relay_refusals_total", reason="sender") == 2
    assert value(text, "ahasend_relay_retries_total", error="UpstreamThrottled") == 1
    assert value(text, "ahasend_relay_spool_messages_total", event="spooled") == 2
    assert value(text, "ahasend_relay_spool_messages_total", event="delivered") == 1
    assert value(text, "ahasend_relay_auth_failures_total") == 1


async def test_spool_gauges_read_one_snapshot_per_scrape() -> None:
    text = RelayMetrics().render()
    assert "ahasend_relay_spool_depth" not in names(text)  # no spool, no spool gauges
    assert "ahasend_relay_sessions_open" not in names(text)  # no server registered it
    queries = []

    async def stats() -> SpoolStats:
        queries.append(1)
        return SpoolStats(queued=3, dead=2, delivered=9, oldest_age=12.5, max_attempts=4)

    metrics = RelayMetrics(sessions_open=lambda: 7, spool_stats=stats)
    await metrics.refresh()
    text = metrics.render()
    assert len(queries) == 1
    assert value(text, "ahasend_relay_spool_depth") == 3
    assert value(text, "ahasend_relay_spool_oldest_age_seconds") == 12.5
    assert value(text, "ahasend_relay_spool_dead") == 2
    assert value(text, "ahasend_relay_sessions_open") == 7
    await metrics.refresh()
    metrics.render()
    assert len(queries) == 2


async def test_an_unreadable_spool_gives_nan_gauges() -> None:
    async def broken() -> SpoolStats:
        raise OSError("disk gone")

    metrics = RelayMetrics(spool_stats=broken)
    await metrics.refresh()
    assert metrics.spool_healthy is False
    depth = value(metrics.render(), "ahasend_relay_spool_depth")
    assert depth is not None
    assert math.isnan(depth)


async def test_a_spool_that_does_not_answer_is_not_waited_for() -> None:
    """The shared database hangs: refresh (before /readyz) gives up after stats_timeout,
    so a health check gets its answer in time and reads the spool as degraded."""
    answered = asyncio.Event()

    async def hanging() -> SpoolStats:
        await answered.wait()
        raise AssertionError("never answers")

    metrics = RelayMetrics(spool_stats=hanging, stats_timeout=0.05)
    began = time.monotonic()
    await metrics.refresh()
    assert time.monotonic() - began < 0.5
    assert metrics.spool_healthy is False
    depth = value(metrics.render(), "ahasend_relay_spool_depth")
    assert depth is not None
    assert math.isnan(depth)


def test_the_shared_pacing_gauge_follows_the_bucket() -> None:
    reachable = [True]
    metrics = RelayMetrics(pacing_shared=lambda: reachable[0])
    assert value(metrics.render(), "ahasend_relay_pacing_shared") == 1
    reachable[0] = False
    assert value(metrics.render(), "ahasend_relay_pacing_shared") == 0
    assert value(RelayMetrics().render(), "ahasend_relay_pacing_shared") is None


def test_registries_are_per_server() -> None:
    one, two = RelayMetrics(), RelayMetrics()
    one.auth_failures.inc()
    assert value(two.render(), "ahasend_relay_auth_failures_total") == 0


def _transport(metrics: RelayMetrics, handler: object) -> MeteredTransport:
    ticks = itertools.count(step=0.25)
    return MeteredTransport(metrics, httpx.MockTransport(handler), clock=lambda: next(ticks))  # type: ignore[arg-type]


async def test_metered_transport_records_status_and_latency() -> None:
    metrics = RelayMetrics()
    transport = _transport(metrics, lambda request: httpx.Response(429))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        await client.get("/v2/ping")
    text = metrics.render()
    assert value(text, "ahasend_relay_upstream_responses_total", status="429") == 1
    assert value(text, "ahasend_relay_upstream_request_duration_seconds_count") == 1
    assert value(text, "ahasend_relay_upstream_request_duration_seconds_sum") == 0.25
    assert metrics.upstream_reachable is True


@pytest.mark.parametrize(
    ("error", "label"),
    [(httpx.ConnectError("refused"), "unreachable"), (httpx.ReadTimeout("slow"), "timeout")],
)
async def test_metered_transport_records_failures(error: Exception, label: str) -> None:
    metrics = RelayMetrics()

    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    async with httpx.AsyncClient(transport=_transport(metrics, fail)) as client:
        with pytest.raises(type(error)):
            await client.get("http://127.0.0.1/v2/ping")
    text = metrics.render()
    assert value(text, "ahasend_relay_upstream_responses_total", status=label) == 1
    assert value(text, "ahasend_relay_upstream_request_duration_seconds_count") == 0
    assert metrics.upstream_reachable is False


async def test_readiness_rule() -> None:
    metrics = RelayMetrics()
    assert readiness(False, False, metrics)[0] is False
    assert readiness(True, False, metrics)[0] is True  # AhaSend not contacted yet
    metrics.record_upstream("unreachable", None, reachable=False)
    assert readiness(True, False, metrics) == (
        False, "not ready: AhaSend unreachable at the last request",
    )  # fmt: skip
    assert readiness(True, True, metrics)[0] is True  # dry run needs no upstream
    healthy = [False]

    async def stats() -> SpoolStats:
        if not healthy[0]:
            raise SpoolUnavailable("disk gone")
        return SpoolStats(queued=1, dead=0, delivered=0, oldest_age=1, max_attempts=0)

    metrics = RelayMetrics(spool_stats=stats)
    metrics.record_upstream("unreachable", None, reachable=False)
    await metrics.refresh()
    assert readiness(True, False, metrics)[0] is False
    healthy[0] = True
    await metrics.refresh()
    assert readiness(True, False, metrics) == (
        True, "ready: listening, AhaSend unreachable at the last request, spool healthy",
    )  # fmt: skip


async def test_an_unreadable_spool_with_the_api_reachable_is_ready_but_degraded() -> None:
    available = [False]

    async def stats() -> SpoolStats:
        if not available[0]:
            raise SpoolUnavailable("spool postgresql://relay:***@db/relay: connection refused")
        return SpoolStats(queued=0, dead=0, delivered=0, oldest_age=0, max_attempts=0)

    metrics = RelayMetrics(spool_stats=stats, spool_available=lambda: available[0])
    await metrics.refresh()
    assert readiness(True, False, metrics) == (
        True, "ready: listening, AhaSend not contacted yet, spool unavailable (degraded)",
    )  # fmt: skip
    metrics.record_upstream("202", 0.1, True)
    assert readiness(True, False, metrics) == (
        True, "ready: listening, AhaSend reachable, spool unavailable (degraded)",
    )  # fmt: skip
    metrics.record_upstream("unreachable", None, False)
    assert readiness(True, False, metrics) == (
        False, "not ready: AhaSend unreachable at the last request, spool unavailable",
    )  # fmt: skip
    assert value(metrics.render(), "ahasend_relay_spool_available") == 0
    available[0] = True
    assert value(metrics.render(), "ahasend_relay_spool_available") == 0  # stats not read yet
    await metrics.refresh()
    assert value(metrics.render(), "ahasend_relay_spool_available") == 1


def test_sessions_open_is_read_at_scrape_time() -> None:
    sessions = {"a", "b"}
    metrics = RelayMetrics(sessions_open=lambda: len(sessions))
    assert value(metrics.render(), "ahasend_relay_sessions_open") == 2
    sessions.clear()
    assert value(metrics.render(), "ahasend_relay_sessions_open") == 0
