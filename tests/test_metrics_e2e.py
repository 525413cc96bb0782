"""The metrics a dashboard needs, from a real relay, a real stand-in API and real clients."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import pytest

from tests.harness import RunningRelay, running_relay, settings_for
from tests.metrics_support import exercised_relay, scrape, send, wait_for
from tests.standin import StandIn
from tests.test_metrics import value

pytestmark = pytest.mark.e2e


def test_sent_retried_spooled_delivered_and_dead(standin: StandIn, tmp_path: Path) -> None:
    with exercised_relay(standin, tmp_path) as relay:
        text = scrape(relay)
    assert value(text, "ahasend_relay_messages_accepted_total", route="sent") == 1
    assert value(text, "ahasend_relay_messages_accepted_total", route="spooled") == 2
    assert value(text, "ahasend_relay_retries_total", error="UpstreamThrottled") == 1
    for event, count in (("spooled", 2), ("delivered", 1), ("dead", 1)):
        assert value(text, "ahasend_relay_spool_messages_total", event=event) == count
    assert value(text, "ahasend_relay_spool_dead") == 1
    assert value(text, "ahasend_relay_spool_depth") == 0
    assert value(text, "ahasend_relay_refusals_total", reason="sender") == 1
    assert value(text, "ahasend_relay_refusals_total", reason="recipient") == 1
    assert value(text, "ahasend_relay_messages_total", result="accepted", code="250") == 3
    assert value(text, "ahasend_relay_transaction_duration_seconds_count") == 3
    assert value(text, "ahasend_relay_message_size_bytes_count") == 3
    assert value(text, "ahasend_relay_circuit_open") == 0
    assert value(text, "ahasend_relay_ready") == 1
    resident = value(text, "process_resident_memory_bytes")
    assert resident is not None
    assert resident > 10 * 1024 * 1024


def test_dry_run_is_its_own_route() -> None:
    with running_relay(settings_for(None, relay_metrics_port=0)) as relay:
        assert send(relay.port) == 250
        text = scrape(relay)
    assert value(text, "ahasend_relay_messages_accepted_total", route="dry_run") == 1
    assert value(text, "ahasend_relay_messages_accepted_total", route="sent") == 0


def test_network_and_rate_refusals(standin: StandIn) -> None:
    settings = settings_for(standin, relay_metrics_port=0, relay_allowed_networks="10.0.0.0/8",
                            relay_peer_connection_rate=1)  # fmt: skip
    with running_relay(settings) as relay:
        assert send(relay.port) == 554  # loopback gets the greeting, is refused at MAIL
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
            assert sock.makefile("rb").readline().startswith(b"421 4.7.0")
        text = scrape(relay)
    assert value(text, "ahasend_relay_refusals_total", reason="network") == 1
    assert value(text, "ahasend_relay_refusals_total", reason="rate") == 1


def test_connection_limit_and_auth_refusals(standin: StandIn, tmp_path: Path) -> None:
    settings = settings_for(standin, relay_metrics_port=0, relay_max_connections=1,
                            relay_auth_user="app", relay_auth_password="pw",
                            relay_auth_allow_plaintext=True)  # fmt: skip
    with running_relay(settings) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=5) as client:
            client.ehlo()
            assert client.mail("app@example.com")[0] == 530  # AUTH required
            with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
                assert sock.makefile("rb").readline().startswith(b"421 4.7.0 Too many")
        wait_for(relay, "ahasend_relay_refusals_total", 1, reason="connections")
        text = scrape(relay)
    assert value(text, "ahasend_relay_refusals_total", reason="auth") == 1


def test_ready_gauge_follows_readyz(standin: StandIn) -> None:
    with running_relay(settings_for(standin, relay_metrics_port=0)) as relay:
        assert value(scrape(relay), "ahasend_relay_ready") == 1
        relay.call(_close_listener(relay))
        assert value(scrape(relay), "ahasend_relay_ready") == 0


async def _close_listener(relay: RunningRelay) -> None:
    assert relay.server is not None
    relay.server.close_listeners()
