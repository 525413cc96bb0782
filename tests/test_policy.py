"""The one backoff rule and the spool policy built from Settings."""

from __future__ import annotations

import random

import pytest

from relay.delivery.policy import TRANSACTION_BACKOFF, Backoff, SpoolPolicy, round_time
from tests.harness import settings_for


@pytest.mark.parametrize(
    ("backoff", "ceilings", "jitter"),
    [
        (TRANSACTION_BACKOFF, [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0], (0.5, 1.0)),
        (Backoff(10, 100, (0.8, 1.2)), [10, 20, 40, 80, 100, 100], (0.8, 1.2)),
    ],
)
def test_one_formula_doubles_from_base_to_cap_with_jitter(
    backoff: Backoff, ceilings: list[float], jitter: tuple[float, float]
) -> None:
    rng = random.Random(3)
    for failures, ceiling in enumerate(ceilings, start=1):
        for _ in range(20):
            assert ceiling * jitter[0] <= backoff.delay(failures, rng) <= ceiling * jitter[1]


def test_retry_after_is_waited_instead_or_is_a_floor() -> None:
    rng = random.Random(3)
    assert Backoff(10, 100, retry_after="instead").delay(5, rng, retry_after=2.0) == 2.0
    floor = Backoff(10, 100, (0.8, 1.2), retry_after="floor")
    assert 64 <= floor.delay(4, rng, retry_after=2.0) <= 96
    assert floor.delay(1, rng, retry_after=500.0) == 500.0


def test_spool_policy_from_settings() -> None:
    settings = settings_for(
        relay_spool_retry_min=20, relay_spool_retry_max=600, relay_spool_max_age=3600,
        ahasend_api_timeout=10, relay_api_concurrency=30, relay_api_rate=50,
        relay_spool_lease=40,
    )  # fmt: skip
    policy = SpoolPolicy.from_settings(settings)
    assert policy.backoff == Backoff(20, 600, (0.8, 1.2), retry_after="floor")
    assert (policy.first_retry, policy.max_age, policy.poll_interval) == (20, 3600, 1.0)
    assert policy.lease == 40
    # 90 entries: 3 waves of 10 s timeouts and 1.8 s of pacing, 5 s to spare, fit in 40 s;
    # 91 would need a fourth wave
    assert policy.batch == 90
    assert round_time(settings, 90) + 5 <= 40 < round_time(settings, 91) + 5


def test_the_default_lease_claims_one_wave() -> None:
    policy = SpoolPolicy.from_settings(settings_for())
    assert (policy.lease, policy.batch) == (60, 32)  # 32 at a time, 30 s timeout


def test_a_retry_max_below_retry_min_caps_at_retry_min() -> None:
    settings = settings_for(relay_spool_retry_min=0.5, relay_spool_retry_max=0.1)
    policy = SpoolPolicy.from_settings(settings)
    assert (policy.backoff.base, policy.backoff.cap, policy.poll_interval) == (0.5, 0.5, 0.5)
