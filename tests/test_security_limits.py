"""End to end: limits against hostile clients, timeouts, secrets in logs, certificate reload.

Each hostile client runs next to a well-behaved one that must still be served.
"""

from __future__ import annotations

import base64
import io
import logging
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from relay.ops.log import configure
from tests.harness import RunningRelay, running_relay, settings_for
from tests.security_support import (
    PASSWORD,
    Conversation,
    b64,
    make_certs,
    message,
    plain_token,
    write_users,
)
from tests.standin import StandIn

pytestmark = pytest.mark.e2e


def send_well_behaved(relay: RunningRelay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        client.send_message(message())


def test_connections_past_the_limit_get_421(standin: StandIn):
    settings = settings_for(standin, relay_max_connections=3)
    with running_relay(settings) as relay:
        held = [Conversation(relay.port) for _ in range(3)]
        for smtp in held:
            assert smtp.reply().startswith("220 ")
        with Conversation(relay.port) as extra:
            assert extra.reply() == "421 4.7.0 Too many connections, try again later"
            assert extra.closed_by_server()
        held.pop().close()
        _wait_for(lambda: relay.server is not None and relay.server.guard.limiter.active < 3)
        send_well_behaved(relay)
        for smtp in held:
            smtp.close()
    assert len(standin.requests) == 1


def test_per_peer_connection_rate(standin: StandIn):
    """Clients outside the allowed networks (127.0.0.2 here) are rate limited; others not."""
    settings = settings_for(
        standin, relay_peer_connection_rate=2, relay_allowed_networks="127.0.0.1/32",
        relay_auth_user="app", relay_auth_password=PASSWORD, relay_auth_allow_plaintext=True,
    )  # fmt: skip
    with running_relay(settings) as relay:
        for _ in range(2):
            with Conversation(relay.port, source="127.0.0.2") as smtp:
                assert smtp.reply().startswith("220 ")
        with Conversation(relay.port, source="127.0.0.2") as smtp:
            assert smtp.reply() == (
                "421 4.7.0 Too many connections from your address, try again later"
            )
        for _ in range(3):
            send_well_behaved(relay)  # 127.0.0.1 is in the allowed networks: no rate
    assert len(standin.requests) == 3


def test_idle_client_gets_421_timeout(standin: StandIn):
    with (
        running_relay(settings_for(standin, relay_smtp_timeout=0.3)) as relay,
        Conversation(relay.port) as smtp,
    ):
        smtp.reply()
        assert smtp.reply() == "421 4.4.2 Timeout exceeded, closing connection"
        assert smtp.closed_by_server()


def test_under_stress_idle_sessions_get_the_short_timeout(standin: StandIn):
    """Postfix's ``smtpd_timeout = ${stress?10}{300}``: at 80 % of the slots (4 of 5) idle
    sessions are cut after RELAY_STRESS_SMTP_TIMEOUT, the ones already open included, and
    a later session, with the relay no longer stressed, gets the full timeout again."""
    settings = settings_for(
        standin, relay_max_connections=5, relay_smtp_timeout=30.0, relay_retry_deadline=5.0,
        relay_stress_smtp_timeout=0.5,
    )  # fmt: skip
    with running_relay(settings) as relay:
        early = [Conversation(relay.port) for _ in range(3)]
        for smtp in early:
            assert smtp.reply().startswith("220 ")
        time.sleep(0.8)  # not stressed: the early ones outlive the stress timeout
        assert early[0].command("NOOP") == "250 2.0.0 OK"
        started = time.monotonic()
        fourth = Conversation(relay.port)  # 4 of 5 open: stressed
        assert fourth.reply().startswith("220 ")
        for smtp in [*early, fourth]:
            assert smtp.reply() == "421 4.4.2 Timeout exceeded, closing connection"
            assert smtp.closed_by_server()
        assert time.monotonic() - started < 5
        _wait_for(lambda: relay.server is not None and relay.server.guard.limiter.active == 0)
        with Conversation(relay.port) as calm:
            assert calm.reply().startswith("220 ")
            time.sleep(0.8)
            assert calm.command("NOOP") == "250 2.0.0 OK"
        send_well_behaved(relay)
        for smtp in [*early, fourth]:
            smtp.close()
    assert len(standin.requests) == 1


def test_the_stress_timeout_never_exceeds_the_smtp_timeout(standin: StandIn) -> None:
    short = settings_for(standin, relay_smtp_timeout=3.0, relay_retry_deadline=1.0)
    assert (short.relay_stress_smtp_timeout, short.stress_smtp_timeout) == (10.0, 3.0)
    assert settings_for(standin).stress_smtp_timeout == 10.0


def test_trickling_client_times_out_while_others_are_served(standin: StandIn):
    """A client sending one byte at a time never completes a command: 421 4.4.2."""
    with (
        running_relay(settings_for(standin, relay_smtp_timeout=2.0)) as relay,
        Conversation(relay.port) as slow,
    ):
        slow.reply()
        for byte in b"EHLO sl":
            slow.send(bytes([byte]))
            time.sleep(0.05)
        send_well_behaved(relay)
        assert slow.reply() == "421 4.4.2 Timeout exceeded, closing connection"
        assert slow.closed_by_server()
    assert len(standin.requests) == 1


def test_ten_megabyte_line_is_refused_and_others_served(standin: StandIn):
    with running_relay(settings_for(standin)) as relay, Conversation(relay.port) as hostile:
        hostile.reply()
        hostile.send(b"EHLO " + b"x" * (10 * 1024 * 1024) + b"\r\n")
        assert hostile.reply() == "500 5.5.2 Command line too long"
        send_well_behaved(relay)
        assert hostile.command("NOOP") == "250 2.0.0 OK"
    assert len(standin.requests) == 1


def test_data_line_over_the_limit_is_refused(standin: StandIn):
    with running_relay(settings_for(standin, relay_max_line_length=2000)) as relay:
        with Conversation(relay.port) as smtp:
            smtp.reply()
            smtp.command("EHLO client.test")
            smtp.command("MAIL FROM:<app@example.com>")
            smtp.command("RCPT TO:<ann@example.net>")
            smtp.command("DATA")
            smtp.send(b"Subject: long\r\n\r\n" + b"w" * 5000 + b"\r\n")
            assert smtp.command(".") == "500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)"
        send_well_behaved(relay)
    assert len(standin.requests) == 1


def test_message_size_and_recipient_limits(standin: StandIn):
    settings = settings_for(standin, relay_max_message_size=10_000, relay_max_recipients=2)
    with running_relay(settings) as relay, Conversation(relay.port) as smtp:
        smtp.reply()
        smtp.command("EHLO client.test")
        assert smtp.command("MAIL FROM:<app@example.com> SIZE=20000") == (
            "552 5.3.4 message size exceeds fixed maximum message size"
        )
        assert smtp.command("MAIL FROM:<app@example.com>").startswith("250")
        for rcpt in ("a@example.net", "b@example.net"):
            assert smtp.command(f"RCPT TO:<{rcpt}>").startswith("250")
        assert smtp.command("RCPT TO:<c@example.net>") == (
            "452 4.5.3 Too many recipients in this transaction"
        )
        smtp.command("DATA")
        smtp.send(b"Subject: big\r\n\r\n" + b"y" * 998 + b"\r\n")
        smtp.send((b"z" * 998 + b"\r\n") * 20)
        assert smtp.command(".") == "552 5.3.4 Too much mail data"
    assert standin.requests == []


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    out = io.StringIO()
    yield out
    structlog.reset_defaults()


def test_no_password_or_api_key_in_logs(
    standin: StandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture, log_output: io.StringIO
):
    certs = make_certs(tmp_path)
    out = log_output
    configure(fmt="json", level="debug", stream=out, secrets=[standin.api_key])
    caplog.set_level(logging.DEBUG)
    settings = settings_for(
        standin, relay_tls_cert=certs.cert, relay_tls_key=certs.key,
        relay_auth_file=write_users(tmp_path / "users"), relay_auth_failure_delay=0.0,
    )  # fmt: skip
    with running_relay(settings) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.starttls(context=certs.client_context())
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("app", PASSWORD + "-wrong")
            client.login("app", PASSWORD)
            client.send_message(message())
        with Conversation(relay.port) as smtp:
            smtp.reply()
            smtp.command("ehlo client.test")
            smtp.starttls(certs.client_context())
            smtp.command("ehlo client.test")
            smtp.command("auth login")
            smtp.command(b64("app"))
            assert smtp.command(b64(PASSWORD)).startswith("235")
    logged = out.getvalue() + caplog.text
    assert "auth_succeeded" in logged
    assert "auth_failed" in logged
    for secret in _forms(PASSWORD) + _forms(PASSWORD + "-wrong") + [standin.api_key]:
        assert secret not in logged
    assert plain_token("app", PASSWORD) not in logged


def _forms(password: str) -> list[str]:
    token = f"\0app\0{password}".encode()
    return [password, b64(password), base64.b64encode(token).decode()]


def test_certificate_reload_keeps_the_listener(standin: StandIn, tmp_path: Path):
    old = make_certs(tmp_path, "server")
    settings = settings_for(
        standin, relay_tls_cert=old.cert, relay_tls_key=old.key, relay_smtps_port=0
    )
    with running_relay(settings) as relay:
        assert relay.server is not None
        port, smtps_port = relay.port, relay.server.smtps_port
        new = make_certs(tmp_path, "renewed")
        old.cert.write_bytes(new.cert.read_bytes())
        old.key.write_bytes(new.key.read_bytes())
        relay.reload()
        assert (relay.port, relay.server.smtps_port) == (port, smtps_port)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=new.client_context())
            client.send_message(message())
        with pytest.raises(ssl.SSLCertVerificationError):
            smtplib.SMTP_SSL("127.0.0.1", smtps_port, context=old.client_context(), timeout=10)
        old.cert.write_text("not a certificate")
        relay.reload()  # a broken renewal keeps the working certificate
        with smtplib.SMTP_SSL(
            "127.0.0.1", smtps_port, context=new.client_context(), timeout=10
        ) as client:
            client.send_message(message())
    assert len(standin.requests) == 2


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)
