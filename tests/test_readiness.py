"""``/readyz`` means "can accept mail now": the rule, then on a real relay and stand-in.

With a spool an AhaSend outage is not unready (the spool takes the mail); without one it
is. A refused key (401 at the last request, the start-up account read included) is
unready in every mode, naming the reason; a 403 is about one message, never the relay.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from relay.delivery.spool import SpoolStats
from relay.ops.health import readiness
from relay.ops.metrics import RelayMetrics
from tests.harness import RunningRelay, free_port, running_relay, settings_for
from tests.standin import Scripted, StandIn
from tests.test_e2e_delivery import PortStandIn
from tests.test_ops_e2e import admin_port, get, message, send

REFUSED_KEY = (
    "not ready: AhaSend refused the API key (401 at the last request): check AHASEND_API_KEY"
)
UNKNOWN_ACCOUNT = (
    "not ready: AhaSend does not know the account (404 at the last request):"
    " check AHASEND_ACCOUNT_ID and AHASEND_API_BASE_URL"
)
PROXY_REFUSED = (
    "not ready: the egress proxy refused the relay's credentials (407 at the last request):"
    " check AHASEND_API_PROXY or HTTPS_PROXY"
)
UNREACHABLE = "AhaSend unreachable at the last request"


async def healthy_spool() -> SpoolStats:
    return SpoolStats(queued=1, dead=0, delivered=0, oldest_age=1, max_attempts=0)


async def broken_spool() -> SpoolStats:
    raise OSError("disk gone")


async def metrics_after(
    status: str | None, spool: Any = None, circuit: bool = False
) -> RelayMetrics:
    """Metrics whose last upstream request answered ``status`` (None: no request yet)."""
    metrics = RelayMetrics(spool_stats=spool)
    if status is not None:
        metrics.record_upstream(status, None, reachable=status.isdigit())
    if circuit:
        metrics.circuit_changed(True)
    await metrics.refresh()
    return metrics


@pytest.mark.parametrize(
    ("status", "circuit", "without_spool", "with_spool"),
    [
        (None, False, "ready: listening, AhaSend not contacted yet", None),
        ("202", False, "ready: listening, AhaSend reachable", None),
        ("403", False, "ready: listening, AhaSend reachable", None),
        ("422", False, "ready: listening, AhaSend reachable", None),
        ("429", False, "ready: listening, AhaSend reachable", None),
        ("401", False, REFUSED_KEY, REFUSED_KEY),
        ("404", False, UNKNOWN_ACCOUNT, UNKNOWN_ACCOUNT),
        ("407", False, PROXY_REFUSED, PROXY_REFUSED),
        ("unreachable", False, f"not ready: {UNREACHABLE}",
         f"ready: listening, {UNREACHABLE}, spool healthy"),
        ("timeout", False, f"not ready: {UNREACHABLE}",
         f"ready: listening, {UNREACHABLE}, spool healthy"),
        ("503", False, "ready: listening, AhaSend answered 503 at the last request"
         " (circuit closed)", None),
        ("503", True, "not ready: AhaSend circuit open",
         "ready: listening, AhaSend circuit open, spool healthy"),
        ("429", True, "not ready: AhaSend circuit open",
         "ready: listening, AhaSend circuit open, spool healthy"),
    ],
)  # fmt: skip
async def test_the_rule(
    status: str | None, circuit: bool, without_spool: str, with_spool: str | None
) -> None:
    alone = readiness(True, False, await metrics_after(status, circuit=circuit))
    assert alone == (without_spool.startswith("ready"), without_spool)
    spooled = with_spool or without_spool
    with_one = readiness(True, False, await metrics_after(status, healthy_spool, circuit))
    assert with_one == (spooled.startswith("ready"), spooled)


async def test_an_open_breaker_with_a_spool_down_is_ready_while_ahasend_answers() -> None:
    metrics = await metrics_after("503", broken_spool, circuit=True)
    assert readiness(True, False, metrics) == (
        True, "ready: listening, AhaSend circuit open, tried anyway: spool unavailable (degraded)",
    )  # fmt: skip


async def test_an_outage_with_a_spool_that_does_not_answer_is_unready() -> None:
    metrics = await metrics_after("unreachable", broken_spool)
    assert readiness(True, False, metrics) == (
        False, f"not ready: {UNREACHABLE}, spool unavailable",
    )  # fmt: skip


async def test_a_refused_key_is_unready_even_in_front_of_a_healthy_spool() -> None:
    metrics = await metrics_after("401", healthy_spool)
    assert readiness(True, False, metrics)[0] is False
    assert readiness(True, True, metrics)[0] is True  # a dry run sends nothing


def test_one_tenants_refused_key_is_named_but_leaves_the_relay_ready() -> None:
    metrics = RelayMetrics()
    metrics.record_upstream("202", 0.1, True, tenant="billing")
    metrics.record_upstream("401", 0.1, True, tenant="crm")
    refused = REFUSED_KEY.removeprefix("not ready: ")
    assert readiness(True, False, metrics) == (
        True, f"ready: listening, AhaSend reachable; tenant 'crm': {refused}",
    )  # fmt: skip
    metrics.record_upstream("401", 0.1, True, tenant="billing")
    assert readiness(True, False, metrics) == (
        False, f"not ready: tenant 'billing': {refused}; tenant 'crm': {refused}",
    )  # fmt: skip
    metrics.record_upstream("202", 0.1, True, tenant="crm")
    assert readiness(True, False, metrics)[0] is True


# -- end to end ------------------------------------------------------------------------


def readyz(relay: RunningRelay) -> tuple[int, str]:
    status, body, _ = get(admin_port(relay), "/readyz")
    return status, body.rstrip("\n")


@contextmanager
def relay_with(standin: StandIn, spool: Path | None, **overrides: Any) -> Iterator[RunningRelay]:
    settings = settings_for(
        standin, relay_metrics_port=0, relay_spool_dir=spool, relay_spool_retry_min=60.0,
        **overrides,
    )  # fmt: skip
    with running_relay(settings) as relay:
        yield relay


@pytest.fixture(params=["no-spool", "spool"])
def spool(request: pytest.FixtureRequest, tmp_path: Path) -> Path | None:
    return tmp_path if request.param == "spool" else None


@pytest.mark.e2e
def test_a_revoked_key_is_unready_from_the_start_up_account_read(
    standin: StandIn, spool: Path | None
) -> None:
    standin.revoke(standin.api_key)
    with relay_with(standin, spool) as relay:
        assert readyz(relay) == (503, REFUSED_KEY)
    assert [p.path for p in standin.probes] == [f"/v2/accounts/{standin.account_id}"]
    assert standin.requests == []


@pytest.mark.e2e
def test_a_401_on_the_last_message_is_unready(standin: StandIn, spool: Path | None) -> None:
    with relay_with(standin, spool) as relay:
        assert readyz(relay) == (200, "ready: listening, AhaSend reachable")
        standin.script(Scripted(401, {"message": "invalid API key"}))
        [(code, text)] = send(relay.port, message())
        expected = (250, "2.0.0 Queued for delivery: spool id 1") if spool else (
            451, "4.3.5 Relay misconfigured, try again later"
        )  # fmt: skip
        assert (code, text) == expected
        assert readyz(relay) == (503, REFUSED_KEY)
        assert send(relay.port, message())[0][0] == 250  # the key works again: ready
        assert readyz(relay) == (200, "ready: listening, AhaSend reachable")


@pytest.mark.e2e
def test_a_403_does_not_make_the_relay_unready(standin: StandIn, spool: Path | None) -> None:
    with relay_with(standin, spool) as relay:
        standin.script(Scripted(403, {"message": "sender domain not verified"}))
        [(code, _)] = send(relay.port, message())
        assert code == 550
        assert readyz(relay) == (200, "ready: listening, AhaSend reachable")


@pytest.mark.e2e
def test_one_503_is_named_but_no_outage(standin: StandIn, spool: Path | None) -> None:
    """A 5xx with the breaker closed: ready (three in a row open it: the next test)."""
    with relay_with(standin, spool) as relay:
        standin.script(*[Scripted(503)] * 10)
        [(code, _)] = send(relay.port, message())
        assert code == (250 if spool else 451)
        assert readyz(relay) == (
            200, "ready: listening, AhaSend answered 503 at the last request (circuit closed)",
        )  # fmt: skip


@pytest.mark.e2e
def test_an_open_circuit_is_unready_only_without_a_spool(
    standin: StandIn, spool: Path | None
) -> None:
    with relay_with(standin, spool) as relay:
        standin.script(*[Scripted(503)] * 10)
        for _ in range(3):  # three consecutive failures open the breaker
            send(relay.port, message())
        [(code, _)] = send(relay.port, message())  # no attempt: the circuit is open
        assert code == (250 if spool else 451)
        assert len(standin.requests) == 3
        assert readyz(relay) == (
            (200, "ready: listening, AhaSend circuit open, spool healthy") if spool
            else (503, "not ready: AhaSend circuit open")
        )  # fmt: skip


@pytest.mark.e2e
def test_an_outage_by_refused_connection_is_unready_only_without_a_spool(
    spool: Path | None,
) -> None:
    port = free_port()
    api = PortStandIn(port)  # never started: every connection is refused
    settings = api.relay_settings(
        relay_metrics_port=0, relay_spool_dir=spool,
    )  # fmt: skip
    with running_relay(settings) as relay:  # the start-up account read was refused
        assert readyz(relay) == (
            (200, f"ready: listening, {UNREACHABLE}, spool healthy") if spool
            else (503, f"not ready: {UNREACHABLE}")
        )  # fmt: skip
