"""CircuitBreaker and RetryingSender together: an outage stops in-transaction retries."""

from __future__ import annotations

import asyncio
import random

import pytest

from relay.delivery.circuit import BreakerSender, CircuitBreaker
from relay.delivery.policy import Backoff
from relay.delivery.retry import RetryingSender
from relay.errors import (
    RelayMisconfigured,
    UpstreamServerError,
    UpstreamThrottled,
    UpstreamUnreachable,
)
from tests.fakes import ACCEPTED, FakeTime, ScriptedSender


def guarded(
    inner: ScriptedSender, time: FakeTime, breaker: CircuitBreaker
) -> tuple[RetryingSender, BreakerSender]:
    sender = BreakerSender(inner, breaker)
    retrying = RetryingSender(
        sender, deadline=60.0, backoff=Backoff(base=0.5, cap=4.0), clock=time.clock,
        sleep=time.sleep, rng=random.Random(7), breaker=breaker,
    )  # fmt: skip
    return retrying, sender


async def test_three_failures_open_it_and_the_transaction_stops_retrying() -> None:
    time, changes = FakeTime(), []
    breaker = CircuitBreaker(clock=time.clock, on_change=changes.append)
    inner = ScriptedSender([UpstreamServerError("503")])
    retrying, _ = guarded(inner, time, breaker)
    with pytest.raises(UpstreamServerError):
        await retrying.send(b"{}", "k1")
    assert len(inner.calls) == 3
    assert breaker.is_open
    assert changes == [True]


async def test_while_open_new_sends_make_no_attempt_until_a_probe_is_due() -> None:
    time = FakeTime()
    breaker = CircuitBreaker(clock=time.clock, probe_interval=5.0)
    inner = ScriptedSender([UpstreamUnreachable("refused")] * 3 + [ACCEPTED])
    retrying, _ = guarded(inner, time, breaker)
    with pytest.raises(UpstreamUnreachable):
        await retrying.send(b"{}", "k1")
    with pytest.raises(UpstreamUnreachable, match="circuit open"):
        await retrying.send(b"{}", "k2")
    assert len(inner.calls) == 3
    time.now += 5.0
    assert await retrying.send(b"{}", "k3") is ACCEPTED  # the probe succeeds: closed
    assert not breaker.is_open
    assert [key for _, key in inner.calls] == ["k1"] * 3 + ["k3"]


async def test_a_success_through_the_worker_sender_closes_it() -> None:
    time, changes = FakeTime(), []
    breaker = CircuitBreaker(clock=time.clock, on_change=changes.append)
    inner = ScriptedSender([UpstreamServerError("500")] * 3 + [ACCEPTED])
    retrying, sender = guarded(inner, time, breaker)
    with pytest.raises(UpstreamServerError):
        await retrying.send(b"{}", "k1")
    assert await sender.send(b"{}", "k1") is ACCEPTED
    assert changes == [True, False]


async def test_a_waiting_retry_stops_when_another_send_opens_it() -> None:
    breaker = CircuitBreaker()
    inner = ScriptedSender([UpstreamServerError("500")])
    retrying = RetryingSender(
        BreakerSender(inner, breaker), deadline=60.0, backoff=Backoff(base=30.0, cap=30.0),
        breaker=breaker,
    )  # fmt: skip
    waiting = asyncio.ensure_future(retrying.send(b"{}", "k1"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    breaker.record_failure(UpstreamUnreachable("x"))
    breaker.record_failure(UpstreamUnreachable("x"))
    with pytest.raises(UpstreamServerError):
        await asyncio.wait_for(waiting, 2.0)


@pytest.mark.parametrize(
    "error", [RelayMisconfigured("401"), UpstreamThrottled("429", retry_after=1.0)]
)
def test_permanent_errors_and_short_throttling_do_not_count(error: Exception) -> None:
    breaker = CircuitBreaker()
    for _ in range(5):
        breaker.record_failure(error)  # type: ignore[arg-type]
    assert not breaker.is_open


def test_long_throttling_counts() -> None:
    breaker = CircuitBreaker()
    for _ in range(3):
        breaker.record_failure(UpstreamThrottled("429", retry_after=60.0))
    assert breaker.is_open
