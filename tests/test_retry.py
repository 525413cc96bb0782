"""RetryingSender: which failures are retried, how long it waits, the deadline, the key."""

from __future__ import annotations

import asyncio
import random

import pytest

from relay.delivery.policy import Backoff
from relay.delivery.retry import RetryingSender
from relay.delivery.sender import Delivery
from relay.errors import (
    RelayMisconfigured,
    UpstreamBusy,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnexpected,
    UpstreamUnreachable,
)
from tests.fakes import ACCEPTED, FakeTime, ScriptedSender


def retrying(inner: ScriptedSender, time: FakeTime, deadline: float = 30.0) -> RetryingSender:
    return RetryingSender(
        inner,
        deadline=deadline,
        backoff=Backoff(base=0.5, cap=4.0),
        clock=time.clock,
        sleep=time.sleep,
        rng=random.Random(7),
    )


@pytest.mark.parametrize(
    "error",
    [
        UpstreamServerError("500"),
        UpstreamThrottled("429"),
        UpstreamBusy("409", retry_after=1.0),
        UpstreamTimeout("ReadTimeout"),
        UpstreamUnreachable("ConnectError"),
    ],
)
async def test_transient_failures_are_retried_with_the_same_key(error: Exception) -> None:
    time = FakeTime()
    inner = ScriptedSender([error, error, ACCEPTED])
    delivery = await retrying(inner, time).send(b"{}", "key-1")
    assert delivery is ACCEPTED
    assert inner.keys == ["key-1"] * 3
    assert len(time.sleeps) == 2


@pytest.mark.parametrize(
    "error", [UpstreamRejected("422"), RelayMisconfigured("401"), UpstreamUnexpected("418")]
)
async def test_failures_a_retry_cannot_cure_are_raised_at_once(error: Exception) -> None:
    time = FakeTime()
    inner = ScriptedSender([error, ACCEPTED])
    with pytest.raises(type(error)):
        await retrying(inner, time).send(b"{}", "k")
    assert len(inner.calls) == 1
    assert time.sleeps == []


async def test_retry_after_is_honoured_exactly() -> None:
    time = FakeTime()
    inner = ScriptedSender([UpstreamThrottled("429", retry_after=3.0), ACCEPTED])
    await retrying(inner, time).send(b"{}", "k")
    assert time.sleeps == [3.0]


async def test_backoff_without_retry_after_grows_with_jitter_and_is_capped() -> None:
    time = FakeTime()
    inner = ScriptedSender([UpstreamServerError("503")] * 6 + [ACCEPTED])
    await retrying(inner, time, deadline=100).send(b"{}", "k")
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(time.sleeps) == 6
    for slept, ceiling in zip(time.sleeps, ceilings, strict=True):
        assert ceiling * 0.5 <= slept <= ceiling


async def test_gives_up_with_the_last_error_before_the_deadline() -> None:
    time = FakeTime()
    inner = ScriptedSender([UpstreamServerError("503")])
    with pytest.raises(UpstreamServerError):
        await retrying(inner, time, deadline=10).send(b"{}", "k")
    assert sum(time.sleeps) < 10
    assert len(inner.calls) >= 3
    assert set(inner.keys) == {"k"}


async def test_a_retry_after_beyond_the_deadline_is_not_waited_for() -> None:
    time = FakeTime()
    inner = ScriptedSender([UpstreamThrottled("429", retry_after=60.0), ACCEPTED])
    with pytest.raises(UpstreamThrottled):
        await retrying(inner, time, deadline=10).send(b"{}", "k")
    assert time.sleeps == []
    assert len(inner.calls) == 1


async def test_a_hanging_attempt_is_cut_at_the_deadline() -> None:
    class Hanging(ScriptedSender):
        async def send(self, body: bytes, idempotency_key: str) -> Delivery:
            self.calls.append((body, idempotency_key))
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    inner = Hanging([ACCEPTED])
    sender = RetryingSender(inner, deadline=0.05)
    with pytest.raises(UpstreamTimeout):
        await sender.send(b"{}", "k")
    assert len(inner.calls) == 1


async def test_zero_deadline_means_a_single_attempt() -> None:
    time = FakeTime()
    inner = ScriptedSender([UpstreamServerError("500"), ACCEPTED])
    with pytest.raises(UpstreamServerError):
        await retrying(inner, time, deadline=0).send(b"{}", "k")
    assert len(inner.calls) == 1


async def test_aclose_closes_the_inner_sender() -> None:
    inner = ScriptedSender([ACCEPTED])
    await RetryingSender(inner, deadline=1).aclose()
    assert inner.closed


async def test_stop_retrying_ends_a_wait_with_the_last_error() -> None:
    forever = asyncio.Event()

    async def long_sleep(seconds: float) -> None:
        await forever.wait()

    inner = ScriptedSender([UpstreamServerError("503")])
    sender = RetryingSender(inner, deadline=3600, sleep=long_sleep)
    task = asyncio.create_task(sender.send(b"{}", "k"))
    await asyncio.sleep(0.01)
    assert not task.done()
    sender.stop_retrying()
    with pytest.raises(UpstreamServerError):
        await asyncio.wait_for(task, 1)
    assert len(inner.calls) == 1
    with pytest.raises(UpstreamServerError):  # and no retries from now on
        await sender.send(b"{}", "k2")
    assert len(inner.calls) == 2


class _FailThenHang:
    """First call: a 503; later calls never answer (the retry deadline must cut them)."""

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, body: bytes, idempotency_key: str) -> Delivery:
        self.calls += 1
        if self.calls == 1:
            raise UpstreamServerError("503 maintenance")
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        return None


async def test_an_attempt_cut_by_the_deadline_reports_the_last_api_error() -> None:
    inner = _FailThenHang()
    sender = RetryingSender(inner, deadline=0.3, backoff=Backoff(base=0.01, cap=0.01))
    with pytest.raises(UpstreamServerError, match="503 maintenance"):
        await sender.send(b"{}", "k")
    assert inner.calls == 2


async def test_a_first_attempt_cut_by_the_deadline_is_a_timeout() -> None:
    inner = _FailThenHang()
    inner.calls = 1  # the very first call hangs
    with pytest.raises(UpstreamTimeout, match="retry deadline reached"):
        await RetryingSender(inner, deadline=0.2).send(b"{}", "k")
