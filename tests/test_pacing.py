"""TokenBucket and PacedSender: rate, burst, reservations in order, the concurrency cap."""

from __future__ import annotations

import asyncio
import math

import pytest

from relay.config import Settings
from relay.delivery.pacing import PACING_TICK, PacedSender, TokenBucket, most_sent, until_tick
from relay.delivery.sender import Delivery
from tests.fakes import ACCEPTED, FakeTime, ScriptedSender


def test_burst_is_free_then_slots_are_spaced_at_the_rate() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=10, burst=3, clock=time.clock)
    waits = [bucket.reserve() for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.1, 0.2, 0.3])


def test_tokens_refill_with_time_up_to_the_burst() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=10, burst=2, clock=time.clock)
    bucket.reserve(), bucket.reserve()
    time.now += 0.1
    assert bucket.reserve() == pytest.approx(0.0, abs=1e-9)
    assert bucket.reserve() == pytest.approx(0.1)
    time.now += 100
    assert [bucket.reserve() for _ in range(2)] == [0.0, 0.0]
    assert bucket.reserve() > 0


def test_a_cancelled_reservation_gives_its_token_back() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=1, burst=1, clock=time.clock)
    bucket.reserve()
    assert bucket.reserve() == pytest.approx(1.0)
    bucket.cancel()
    assert bucket.reserve() == pytest.approx(1.0)


def test_invalid_bucket() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0, burst=1)


async def test_paced_sender_waits_for_its_slot() -> None:
    time = FakeTime()
    inner = ScriptedSender([ACCEPTED])
    bucket = TokenBucket(rate=100, burst=2, clock=time.clock)
    paced = PacedSender(inner, bucket, max_concurrency=10, sleep=time.sleep, tick=0)
    for i in range(4):
        await paced.send(b"{}", f"k{i}")
    assert inner.keys == ["k0", "k1", "k2", "k3"]
    assert time.sleeps == pytest.approx([0.01, 0.01])


async def test_concurrent_calls_are_capped() -> None:
    release = asyncio.Event()
    active = peak = 0

    class Slow(ScriptedSender):
        async def send(self, body: bytes, idempotency_key: str) -> Delivery:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await release.wait()
            active -= 1
            return ACCEPTED

    paced = PacedSender(Slow([ACCEPTED]), TokenBucket(1000, 1000), max_concurrency=3)
    tasks = [asyncio.create_task(paced.send(b"{}", str(i))) for i in range(10)]
    await asyncio.sleep(0.01)
    assert peak == 3
    release.set()
    assert len(await asyncio.gather(*tasks)) == 10
    assert peak == 3


async def test_waiters_wake_together_on_the_next_tick() -> None:
    """Nine waiters whose slots fall within one tick all wake at its end: one batch."""
    time = FakeTime(start=1000.0)
    bucket = TokenBucket(rate=90, burst=1, clock=time.clock)
    bucket.reserve()  # the burst is spent
    wakes = []
    for _ in range(9):
        wait = bucket.reserve()
        wakes.append(time.now + until_tick(time.now, wait, PACING_TICK))
    first = math.ceil(1000.1 / PACING_TICK) * PACING_TICK  # the tick after the last slot
    assert wakes == pytest.approx([first] * 9)


@pytest.mark.parametrize("now", [0.0, 1000.0, 1000.05, 12345.678])
@pytest.mark.parametrize("wait", [0.0001, 0.011, 0.0999, 0.1, 0.25, 3.0])
def test_a_tick_never_wakes_before_the_slot_and_adds_less_than_a_tick(
    now: float, wait: float
) -> None:
    lengthened = until_tick(now, wait, PACING_TICK)
    assert wait <= lengthened < wait + PACING_TICK
    ticks = (now + lengthened) / PACING_TICK
    assert ticks == pytest.approx(round(ticks))


def test_tick_zero_keeps_the_wait() -> None:
    assert until_tick(5.0, 0.013, 0) == 0.013


async def test_paced_sender_sleeps_until_the_tick_after_its_slot() -> None:
    time = FakeTime(start=1000.0)
    inner = ScriptedSender([ACCEPTED])
    bucket = TokenBucket(rate=100, burst=1, clock=time.clock)
    paced = PacedSender(inner, bucket, max_concurrency=10, sleep=time.sleep)
    await paced.send(b"{}", "k0")
    await paced.send(b"{}", "k1")  # its slot is at +0.01: it wakes at the next tick
    assert time.sleeps == pytest.approx([PACING_TICK])
    assert inner.keys == ["k0", "k1"]


def test_at_the_default_pace_the_ticks_stay_inside_ahasends_limit() -> None:
    """A send is at most one tick late: in any L seconds at most burst + rate * (L + tick)
    go out, which must stay within AhaSend's 200 + 100 L (burst 200, 100/s) for every L."""
    fields = Settings.model_fields
    rate, burst = fields["relay_api_rate"].default, fields["relay_api_burst"].default
    for length in (0.0, 0.05, 0.2, 1.0, 10.0):
        assert most_sent(length, rate, burst) <= 200 + 100 * length
