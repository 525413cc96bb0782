"""Issue 13 (security hardening) through the real SMTP path: each item's exact reply."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import RunningRelay, running_relay, settings_for
from tests.rawsmtp import RawSMTP
from tests.security_support import PASSWORD, Certs, message, write_users
from tests.standin import StandIn

pytestmark = pytest.mark.e2e


def _tls_settings(standin: StandIn, certs: Certs, tmp_path: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "relay_tls_cert": certs.cert,
        "relay_tls_key": certs.key,
        "relay_auth_file": write_users(tmp_path / "users"),
        "relay_auth_failure_delay": 0.0,
        "relay_smtps_port": 0,
    }
    return settings_for(standin, **(values | overrides))


@pytest.fixture
def tls_relay(standin: StandIn, certs: Certs, tmp_path: Path) -> Iterator[RunningRelay]:
    with running_relay(_tls_settings(standin, certs, tmp_path)) as running:
        yield running


def test_second_starttls_inside_tls_gets_554_and_the_session_goes_on(
    tls_relay: RunningRelay, standin: StandIn, certs: Certs
) -> None:
    with smtplib.SMTP("127.0.0.1", tls_relay.port, timeout=10) as client:
        client.starttls(context=certs.client_context())
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS") == (554, b"5.5.1 TLS already active")
        client.login("app", PASSWORD)
        client.send_message(message())
    assert len(standin.requests) == 1


def test_starttls_on_the_smtps_port_gets_554(
    tls_relay: RunningRelay, standin: StandIn, certs: Certs
) -> None:
    assert tls_relay.server is not None
    assert tls_relay.server.smtps_port is not None
    with smtplib.SMTP_SSL(
        "127.0.0.1", tls_relay.server.smtps_port, context=certs.client_context(), timeout=10
    ) as client:
        client.ehlo("client.test")
        assert client.docmd("STARTTLS") == (554, b"5.5.1 TLS already active")
        assert client.noop()[0] == 250


KELVIN_KIOSK = "\u212aiosk.example"  # "Kiosk.example" with U+212A KELVIN SIGN for the K


def test_a_kelvin_sign_look_alike_is_not_the_allowed_sender_domain(standin: StandIn) -> None:
    settings = settings_for(standin, relay_allowed_sender_domains="kiosk.example")
    with running_relay(settings) as relay, RawSMTP(relay.port) as smtp:
        smtp.cmd("EHLO client.test")
        assert smtp.cmd(f"MAIL FROM:<ceo@{KELVIN_KIOSK}> SMTPUTF8") == (
            "550 5.7.1 Sender address not allowed"
        )
        assert smtp.cmd("RSET").startswith("250 ")
        assert smtp.cmd("MAIL FROM:<ceo@KIOSK.Example>").startswith("250 ")
    assert standin.requests == []
