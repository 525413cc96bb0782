"""Unit tests of relay.ops.metrics (exposition, transport metering) and the readiness rule."""

from __future__ import annotations

import itertools

import httpx
import pytest

from relay.delivery.spool import SpoolStats
from relay.errors import SpoolUnavailable
from relay.ops.health import readiness
from relay.ops.metrics import Counter, Gauge, Histogram, MeteredTransport, RelayMetrics, result_of
from relay.smtp.replies import LOCAL_ERROR, QUEUED, TOO_LARGE


def samples(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` for every sample line of an exposition."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def test_result_follows_the_reply_class() -> None:
    assert [result_of(r) for r in (QUEUED, LOCAL_ERROR, TOO_LARGE)] == [
        "accepted", "deferred", "rejected",
    ]  # fmt: skip


def test_counter_renders_each_label_combination_escaped() -> None:
    counter = Counter("x_total", "Help.", ("a",))
    counter.inc('q"\\\n')
    counter.inc("b", amount=2)
    assert list(counter.render()) == [
        "# HELP x_total Help.",
        "# TYPE x_total counter",
        'x_total{a="b"} 2',
        'x_total{a="q\\"\\\\\\n"} 1',
    ]


def test_unlabelled_counter_starts_at_zero() -> None:
    assert list(Counter("y_total", "Help.").render())[-1] == "y_total 0"


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram("h", "Help.", (0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert samples("\n".join(histogram.render())) == {
        'h_bucket{le="0.1"}': 2, 'h_bucket{le="1"}': 3, 'h_bucket{le="+Inf"}': 4,
        "h_sum": 3.65, "h_count": 4,
    }  # fmt: skip


def test_gauge_without_a_value_renders_nothing() -> None:
    assert list(Gauge("g", "Help.").render()) == []
    assert list(Gauge("g", "Help.", lambda: None).render()) == []
    assert list(Gauge("g", "Help.", lambda: 2.5).render())[-1] == "g 2.5"


def spool_stats(queued: int = 3, oldest_age: float = 12.5) -> SpoolStats:
    return SpoolStats(queued=queued, dead=0, delivered=0, oldest_age=oldest_age, max_attempts=1)


async def test_relay_metrics_render_messages_and_spool() -> None:
    async def stats() -> SpoolStats:
        return spool_stats()

    metrics = RelayMetrics(spool_stats=stats)
    metrics.message_done(QUEUED)
    metrics.message_done(QUEUED)
    metrics.message_done(LOCAL_ERROR)
    metrics.auth_failures.inc()
    await metrics.refresh()
    found = samples(metrics.render())
    assert found['ahasend_relay_messages_total{result="accepted",code="250"}'] == 2
    assert found['ahasend_relay_messages_total{result="deferred",code="451"}'] == 1
    assert found["ahasend_relay_auth_failures_total"] == 1
    assert found["ahasend_relay_spool_depth"] == 3
    assert found["ahasend_relay_spool_oldest_age_seconds"] == 12.5
    assert "ahasend_relay_sessions_open" not in found  # no server registered it


def _transport(metrics: RelayMetrics, handler: object) -> MeteredTransport:
    ticks = itertools.count(step=0.25)
    return MeteredTransport(metrics, httpx.MockTransport(handler), clock=lambda: next(ticks))  # type: ignore[arg-type]


async def test_metered_transport_records_status_and_latency() -> None:
    metrics = RelayMetrics()
    transport = _transport(metrics, lambda request: httpx.Response(429))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        await client.get("/v2/ping")
    assert metrics.upstream_responses.value("429") == 1
    assert (metrics.upstream_latency.count, metrics.upstream_latency.sum) == (1, 0.25)
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
    assert metrics.upstream_responses.value(label) == 1
    assert metrics.upstream_latency.count == 0
    assert metrics.upstream_reachable is False


async def test_readiness_rule() -> None:
    metrics = RelayMetrics()
    assert readiness(False, False, metrics)[0] is False
    assert readiness(True, False, metrics)[0] is True  # AhaSend not contacted yet
    metrics.upstream_reachable = False
    assert readiness(True, False, metrics) == (
        False, "not ready: AhaSend unreachable at the last request",
    )  # fmt: skip
    assert readiness(True, True, metrics)[0] is True  # dry run needs no upstream
    healthy = [False]

    async def stats() -> SpoolStats:
        if not healthy[0]:
            raise SpoolUnavailable("disk gone")
        return spool_stats(1, 1)

    metrics = RelayMetrics(spool_stats=stats)
    metrics.upstream_reachable = False
    await metrics.refresh()
    assert readiness(True, False, metrics)[0] is False
    healthy[0] = True
    await metrics.refresh()
    assert readiness(True, False, metrics) == (
        True, "ready: listening, AhaSend unreachable, spool healthy",
    )  # fmt: skip


def test_sessions_open_is_read_at_scrape_time() -> None:
    sessions = {"a", "b"}
    metrics = RelayMetrics(sessions_open=lambda: len(sessions))
    assert samples(metrics.render())["ahasend_relay_sessions_open"] == 2
    sessions.clear()
    assert samples(metrics.render())["ahasend_relay_sessions_open"] == 0


async def test_a_spool_that_cannot_answer_makes_render_fail() -> None:
    async def stats() -> SpoolStats:
        raise SpoolUnavailable("disk gone")

    metrics = RelayMetrics(spool_stats=stats)
    await metrics.refresh()
    assert metrics.spool_healthy is False
    with pytest.raises(SpoolUnavailable, match="disk gone"):
        metrics.render()
