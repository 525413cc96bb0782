"""End to end: SMTP AUTH and TLS with real clients (smtplib, raw sockets, swaks).

Certificates are made per test session with trustme; the relay runs on loopback and
forwards to the stand-in API, whose ``requests`` show what reached "AhaSend".
"""

from __future__ import annotations

import shutil
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.smtp.auth import hash_password
from tests.harness import RunningRelay, running_relay, settings_for
from tests.security_support import (
    PASSWORD,
    SCANNER_PASSWORD,
    Certs,
    Conversation,
    b64,
    message,
    plain_token,
    write_users,
)
from tests.standin import StandIn
from tests.test_metrics import value

pytestmark = pytest.mark.e2e


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return write_users(tmp_path / "users")


def secure_settings(standin: StandIn, certs: Certs, users: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "relay_tls_cert": certs.cert,
        "relay_tls_key": certs.key,
        "relay_auth_file": users,
        "relay_auth_failure_delay": 0.0,
    }
    return settings_for(standin, **(values | overrides))


@pytest.fixture
def relay(standin: StandIn, certs: Certs, users: Path) -> Iterator[RunningRelay]:
    with running_relay(secure_settings(standin, certs, users, relay_smtps_port=0)) as running:
        yield running


def test_starttls_then_auth_plain_delivers(relay: RunningRelay, standin: StandIn, certs: Certs):
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        client.ehlo("client.test")
        assert not client.has_extn("auth"), "AUTH must not be offered in plaintext"
        client.starttls(context=certs.client_context())
        client.ehlo("client.test")
        assert client.has_extn("auth")
        assert client.sock is not None
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert client.login("app", PASSWORD) == (235, b"2.7.0 Authentication successful")
        client.send_message(message())
    assert [r.json["from"]["email"] for r in standin.requests] == ["app@example.com"]


def test_smtps_auth_login_delivers(relay: RunningRelay, standin: StandIn, certs: Certs):
    assert relay.server is not None
    assert relay.server.smtps_port is not None
    with smtplib.SMTP_SSL(
        "127.0.0.1", relay.server.smtps_port, context=certs.client_context(), timeout=10
    ) as client:
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        assert set(client.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}
        client.user, client.password = "app", PASSWORD
        code, text = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert (code, text) == (235, b"2.7.0 Authentication successful")
        client.send_message(message())
    assert len(standin.requests) == 1


def test_auth_before_starttls_gets_538(relay: RunningRelay, standin: StandIn):
    with Conversation(relay.port) as smtp:
        smtp.reply()
        assert "STARTTLS" in smtp.command("EHLO client.test")
        assert smtp.command(f"AUTH PLAIN {plain_token('app', PASSWORD)}") == (
            "538 5.7.11 Encryption required for requested authentication mechanism"
        )
        assert smtp.command("MAIL FROM:<app@example.com>") == "530 5.7.0 Authentication required"
    assert standin.requests == []


def test_auth_login_challenges_and_quirks(relay: RunningRelay, certs: Certs, standin: StandIn):
    """Old clients: exact LOGIN challenges, lowercase commands, initial responses."""
    with Conversation(relay.port) as smtp:
        smtp.reply()
        smtp.command("ehlo client.test")
        smtp.starttls(certs.client_context())
        smtp.command("ehlo client.test")
        assert smtp.command("auth login") == "334 VXNlcm5hbWU6"
        assert smtp.command(b64("app")) == "334 UGFzc3dvcmQ6"
        assert smtp.command(b64(PASSWORD)) == "235 2.7.0 Authentication successful"
        assert smtp.command("mail from:<app@example.com>").startswith("250 ")
    with Conversation(relay.port) as smtp:
        smtp.reply()
        smtp.command("EHLO client.test")
        smtp.starttls(certs.client_context())
        smtp.command("EHLO client.test")
        assert smtp.command(f"auth login {b64('app')}") == "334 UGFzc3dvcmQ6"
        assert smtp.command(b64(PASSWORD)) == "235 2.7.0 Authentication successful"
    with Conversation(relay.port) as smtp:
        smtp.reply()
        smtp.command("EHLO client.test")
        smtp.starttls(certs.client_context())
        smtp.command("EHLO client.test")
        assert smtp.command(f"Auth Plain {plain_token('scanner', SCANNER_PASSWORD)}") == (
            "235 2.7.0 Authentication successful"
        )
    assert standin.requests == []


@pytest.mark.parametrize(
    ("exchange", "reply"),
    [
        (["AUTH PLAIN not-base64!"], "501 5.5.2 Can't decode base64"),
        ([f"AUTH PLAIN {b64('app' + chr(0) + PASSWORD)}"], "501 5.5.2 Can't split auth value"),
        (["AUTH PLAIN", "*"], "501 5.7.0 Auth aborted"),
        (["AUTH PLAIN", "%%%"], "501 5.5.2 Can't decode base64"),
        (["AUTH LOGIN not-base64!"], "501 5.5.2 Can't decode base64"),
        (["AUTH LOGIN", "*"], "501 5.7.0 Auth aborted"),
        (["AUTH LOGIN", b64("app"), "*"], "501 5.7.0 Auth aborted"),
        (["AUTH CRAM-MD5"], "504 5.5.4 Unrecognized authentication type"),
        (["AUTH"], "501 5.5.4 Not enough value"),
    ],
)
def test_auth_exchange_errors_are_answered_and_the_session_goes_on(
    relay: RunningRelay, certs: Certs, standin: StandIn, exchange: list[str], reply: str
):
    """Malformed AUTH exchanges get aiosmtpd's exact replies; they are not failed logins."""
    with Conversation(relay.port) as smtp:
        smtp.reply()
        smtp.command("EHLO client.test")
        smtp.starttls(certs.client_context())
        smtp.command("EHLO client.test")
        *steps, last = exchange
        for step in steps:
            assert smtp.command(step).startswith("334 ")
        assert smtp.command(last) == reply
        assert smtp.command(f"AUTH PLAIN {plain_token('app', PASSWORD)}") == (
            "235 2.7.0 Authentication successful"
        )
        assert smtp.command(f"AUTH PLAIN {plain_token('app', PASSWORD)}") == (
            "503 5.5.1 Already authenticated"
        )
    assert relay.server is not None
    assert "ahasend_relay_auth_failures_total 0" in relay.server.metrics.render()


def test_starttls_forgets_what_plaintext_auth_established(
    standin: StandIn, certs: Certs, users: Path
):
    """RFC 3207 §4.2: after STARTTLS the client must authenticate again."""
    settings = secure_settings(standin, certs, users, relay_auth_allow_plaintext=True)
    with running_relay(settings) as relay, Conversation(relay.port) as smtp:
        smtp.reply()
        smtp.command("EHLO client.test")
        assert smtp.command(f"AUTH PLAIN {plain_token('app', PASSWORD)}") == (
            "235 2.7.0 Authentication successful"
        )
        smtp.starttls(certs.client_context())
        smtp.command("EHLO client.test")
        assert smtp.command("MAIL FROM:<app@example.com>") == "530 5.7.0 Authentication required"
        assert smtp.command(f"AUTH PLAIN {plain_token('app', PASSWORD)}") == (
            "235 2.7.0 Authentication successful"
        )
        assert smtp.command("MAIL FROM:<app@example.com>") == "250 2.1.0 Sender OK"
    assert standin.requests == []


def test_bad_credentials_get_535_then_421_and_disconnect(
    standin: StandIn, certs: Certs, users: Path
):
    settings = secure_settings(standin, certs, users, relay_auth_max_failures=2)
    with running_relay(settings) as relay, Conversation(relay.port) as smtp:
        smtp.reply()
        smtp.command("EHLO client.test")
        smtp.starttls(certs.client_context())
        smtp.command("EHLO client.test")
        wrong = f"AUTH PLAIN {plain_token('app', 'wrong')}"
        assert smtp.command(wrong) == "535 5.7.8 Authentication credentials invalid"
        unknown_user = f"AUTH PLAIN {plain_token('nobody', PASSWORD)}"
        assert smtp.command(unknown_user) == "421 4.7.0 Too many failed authentication attempts"
        assert smtp.closed_by_server()
        assert relay.server is not None
        rendered = relay.server.metrics.render()
        assert value(rendered, "ahasend_relay_auth_failures_total") == 2
    assert standin.requests == []


def test_failed_auth_is_tarpitted_without_blocking_others(
    standin: StandIn, certs: Certs, users: Path
):
    """A failing peer waits (30 s here); a well-behaved client is served meanwhile."""
    settings = secure_settings(
        standin, certs, users, relay_auth_failure_delay=30.0, relay_smtps_port=0
    )
    with running_relay(settings) as relay:
        assert relay.server is not None
        assert relay.server.smtps_port is not None
        bad = Conversation(relay.port, source="127.0.0.2")
        bad.reply()
        bad.command("EHLO attacker.test")
        bad.starttls(certs.client_context())
        bad.command("EHLO attacker.test")
        first = bad.command(f"AUTH PLAIN {plain_token('app', 'guess')}")
        assert first == "535 5.7.8 Authentication credentials invalid"
        bad.send(f"AUTH PLAIN {plain_token('app', 'guess2')}\r\n")  # waits 30 s, unhashed
        with smtplib.SMTP_SSL(
            "127.0.0.1", relay.server.smtps_port, context=certs.client_context(), timeout=10
        ) as good:
            good.login("app", PASSWORD)
            good.send_message(message())
        bad.sock.setblocking(False)
        with pytest.raises(ssl.SSLWantReadError):
            bad.sock.recv(1)  # still waiting for its 535
        bad.close()
    assert len(standin.requests) == 1


def test_auth_not_offered_or_accepted_without_users(standin: StandIn):
    with running_relay(settings_for(standin)) as relay, Conversation(relay.port) as smtp:
        smtp.reply()
        assert "AUTH" not in smtp.command("EHLO client.test")
        assert smtp.command(f"AUTH PLAIN {plain_token('app', PASSWORD)}") == (
            "503 5.5.1 Authentication not enabled"
        )


def test_plaintext_auth_when_explicitly_allowed(standin: StandIn, tmp_path: Path):
    settings = settings_for(
        standin, relay_auth_user="app", relay_auth_password=PASSWORD,
        relay_auth_allow_plaintext=True,
    )  # fmt: skip
    with running_relay(settings) as relay, smtplib.SMTP("127.0.0.1", relay.port) as client:
        client.ehlo("client.test")
        assert client.has_extn("auth")
        client.login("app", PASSWORD)
        client.send_message(message())
    assert len(standin.requests) == 1


def test_require_tls_refuses_mail_before_starttls(standin: StandIn, certs: Certs, users: Path):
    settings = secure_settings(
        standin, certs, users, relay_require_tls=True, relay_allowed_networks="127.0.0.1/32"
    )
    with running_relay(settings) as relay:
        with Conversation(relay.port) as smtp:
            smtp.reply()
            smtp.command("EHLO client.test")
            assert smtp.command("MAIL FROM:<app@example.com>") == (
                "530 5.7.0 Must issue a STARTTLS command first"
            )
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.starttls(context=certs.client_context())
            client.send_message(message())  # trusted network: no AUTH needed
        assert relay.server is not None
        text = relay.server.metrics.render()
    assert len(standin.requests) == 1
    assert 'ahasend_relay_refusals_total{reason="tls"} 1.0' in text.splitlines()


def test_swaks_tls_auth(relay: RunningRelay, standin: StandIn):
    assert shutil.which("swaks"), "swaks is not installed: .ci/run installs it"
    result = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(relay.port), "--tls",
         "--auth", "LOGIN", "--auth-user", "app", "--auth-password", PASSWORD,
         "--from", "app@example.com", "--to", "ann@example.net",
         "--header", "From: App <app@example.com>", "--timeout", "10"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0 Authentication successful" in result.stdout
    assert len(standin.requests) == 1


def test_reload_rereads_the_users_file(standin: StandIn, certs: Certs, users: Path):
    settings = secure_settings(standin, certs, users, relay_smtps_port=0)
    with running_relay(settings) as relay:
        assert relay.server is not None
        port = relay.server.smtps_port
        assert port is not None
        users.write_text(f"newbie:{hash_password('fresh', 'bcrypt')}\n")
        relay.reload()
        with smtplib.SMTP_SSL("127.0.0.1", port, context=certs.client_context()) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("app", PASSWORD)
            client.login("newbie", "fresh")
            client.send_message(message())
    assert len(standin.requests) == 1
