"""End to end: who may send — networks, the open-relay matrix, sender domains, PROXY.

A different peer without leaving the machine: the client socket is bound to 127.0.0.2.
The stand-in's ``requests`` prove what reached the API (nothing, for every refusal).
"""

from __future__ import annotations

import smtplib
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.ops.health import probe
from tests.harness import RunningRelay, running_relay, settings_for
from tests.security_support import (
    PASSWORD,
    SCANNER_PASSWORD,
    Certs,
    Conversation,
    message,
    plain_token,
    write_users,
)
from tests.standin import StandIn

pytestmark = pytest.mark.e2e

INSIDE, OUTSIDE = "127.0.0.1", "127.0.0.2"


def converse(relay: RunningRelay, source: str, certs: Certs | None, login: bool) -> Conversation:
    """A session from ``source`` past EHLO (and STARTTLS + AUTH PLAIN when ``login``)."""
    smtp = Conversation(relay.port, source=source)
    assert smtp.reply().startswith("220 ")
    smtp.command("EHLO client.test")
    if login:
        assert certs is not None
        smtp.starttls(certs.client_context())
        smtp.command("EHLO client.test")
        assert smtp.command(f"AUTH PLAIN {plain_token('app', PASSWORD)}").startswith("235 ")
    return smtp


def transaction(smtp: Conversation, envelope_from: str, header_from: str) -> str:
    """MAIL, RCPT, DATA; the first reply that is not a success, or the DATA reply."""
    reply = smtp.command(f"MAIL FROM:<{envelope_from}>")
    if not reply.startswith("250"):
        return reply
    assert smtp.command("RCPT TO:<ann@example.net>").startswith("250")
    assert smtp.command("DATA").startswith("354")
    return smtp.command(message(header_from).as_string().replace("\n", "\r\n") + ".")


SENDERS = {
    "allowed": ("app@example.com", "App <app@example.com>"),
    "bad-envelope": ("app@evil.test", "App <app@example.com>"),
    "bad-header": ("app@example.com", "App <ceo@evil.test>"),
}
DENIED_SENDER = {
    "bad-envelope": "550 5.7.1 Sender address not allowed",
    "bad-header": "550 5.7.1 Sender address not allowed: evil.test",
}


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("network", ["allowed", "disallowed"])
@pytest.mark.parametrize("auth", ["auth", "no-auth"])
def test_open_relay_matrix(
    standin: StandIn, certs: Certs, tmp_path: Path, auth: str, network: str, sender: str
):
    """AUTH configured, networks = 127.0.0.1/32, sender domains = example.com."""
    settings = settings_for(
        standin, relay_tls_cert=certs.cert, relay_tls_key=certs.key,
        relay_auth_file=write_users(tmp_path / "users"), relay_allowed_networks="127.0.0.1/32",
        relay_allowed_sender_domains="example.com",
    )  # fmt: skip
    source = INSIDE if network == "allowed" else OUTSIDE
    with (
        running_relay(settings) as relay,
        converse(relay, source, certs, login=auth == "auth") as smtp,
    ):
        reply = transaction(smtp, *SENDERS[sender])
    if auth == "no-auth" and network == "disallowed":
        assert reply == "530 5.7.0 Authentication required"
    elif sender in DENIED_SENDER:
        assert reply == DENIED_SENDER[sender]
    else:
        assert reply.startswith("250 2.0.0 Queued")
        assert len(standin.requests) == 1
        return
    assert standin.requests == []


@pytest.mark.parametrize("network", ["allowed", "disallowed"])
def test_without_auth_outside_peers_are_refused_at_connect(standin: StandIn, network: str):
    settings = settings_for(standin, relay_allowed_networks="127.0.0.1/32")
    with (
        running_relay(settings) as relay,
        Conversation(relay.port, source=INSIDE if network == "allowed" else OUTSIDE) as smtp,
    ):
        greeting = smtp.reply()
        if network == "allowed":
            assert greeting.startswith("220 ")
            return
        assert greeting == "554 5.7.1 Access denied: client not allowed"
        assert smtp.closed_by_server()
    assert standin.requests == []


def test_the_host_itself_gets_a_greeting_but_cannot_send(standin: StandIn):
    """127.0.0.1 outside the networks: health checks pass, MAIL gets 554 5.7.1."""
    settings = settings_for(standin, relay_allowed_networks="127.0.0.2/32")
    with running_relay(settings) as relay:
        assert probe("127.0.0.1", relay.port, None, "127.0.0.1", 5.0).ok
        with Conversation(relay.port, source=INSIDE) as smtp:
            assert smtp.reply().startswith("220 ")
            smtp.command("EHLO client.test")
            assert transaction(smtp, *SENDERS["allowed"]) == (
                "554 5.7.1 Access denied: client not allowed"
            )
        with Conversation(relay.port, source="127.0.0.3") as smtp:
            assert smtp.reply() == "554 5.7.1 Access denied: client not allowed"
    assert standin.requests == []


def test_default_networks_are_loopback_only(standin: StandIn):
    """No AUTH, no networks: every loopback address may send (127.0.0.0/8, ::1)."""
    with (
        running_relay(settings_for(standin)) as relay,
        smtplib.SMTP("127.0.0.1", relay.port, source_address=(OUTSIDE, 0)) as client,
    ):
        client.send_message(message())
    assert len(standin.requests) == 1


def test_ipv6_networks(standin: StandIn):
    settings = settings_for(standin, relay_host="::1", relay_allowed_networks="::1/128")
    with running_relay(settings) as relay, smtplib.SMTP("::1", relay.port, timeout=10) as client:
        client.send_message(message())
    assert len(standin.requests) == 1
    settings = settings_for(standin, relay_host="::1", relay_allowed_networks="2001:db8::/32")
    with running_relay(settings) as relay, Conversation(relay.port, "::1", host="::1") as smtp:
        assert smtp.reply().startswith("220 ")  # the host itself: refused at MAIL
        smtp.command("EHLO client.test")
        assert transaction(smtp, *SENDERS["allowed"]) == (
            "554 5.7.1 Access denied: client not allowed"
        )


def test_from_rewrite_keeps_name_and_sets_reply_to(standin: StandIn):
    settings = settings_for(
        standin, relay_allowed_sender_domains="example.com",
        relay_from_rewrite="relay@example.com",
    )  # fmt: skip
    with running_relay(settings) as relay, smtplib.SMTP("127.0.0.1", relay.port) as client:
        client.send_message(message("Printer <scanner@printer.lan>"), "root@localhost")
        client.send_message(
            message("root@localhost", Reply_To="Ops <ops@example.com>"), "root@localhost"
        )
        client.send_message(message("App <app@example.com>"))
    first, second, third = (r.json for r in standin.requests)
    assert first["from"] == {"email": "relay@example.com", "name": "Printer"}
    assert first["reply_to"] == {"email": "scanner@printer.lan", "name": "Printer"}
    assert second["from"]["email"] == "relay@example.com"
    assert second["reply_to"]["email"] == "ops@example.com"
    assert third["from"] == {"email": "app@example.com", "name": "App"}
    assert "reply_to" not in third


def test_per_user_sender_domains(standin: StandIn, certs: Certs, tmp_path: Path):
    settings = settings_for(
        standin, relay_tls_cert=certs.cert, relay_tls_key=certs.key,
        relay_auth_file=write_users(tmp_path / "users"),
    )  # fmt: skip
    with (
        running_relay(settings) as relay,
        smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client,
    ):
        client.starttls(context=certs.client_context())
        client.login("scanner", SCANNER_PASSWORD)
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.send_message(message(), "scanner@example.com")
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            550, b"5.7.1 Sender address not allowed",
        )  # fmt: skip
        client.send_message(message("Scanner <scanner@example.org>"))
    assert [r.json["from"]["email"] for r in standin.requests] == ["scanner@example.org"]


def proxy_v1(source: str) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 40000 25\r\n".encode()


def proxy_v2(source: str) -> bytes:
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    addresses = bytes(map(int, source.split("."))) + bytes([127, 0, 0, 1])
    addresses += struct.pack("!HH", 40000, 25)
    return signature + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


@pytest.fixture
def behind_proxy(standin: StandIn) -> Iterator[RunningRelay]:
    settings = settings_for(
        standin, relay_proxy_protocol=True, relay_allowed_networks="192.0.2.0/24",
        relay_proxy_trusted_networks="127.0.0.1/32",
    )  # fmt: skip
    with running_relay(settings) as relay:
        yield relay


@pytest.mark.parametrize("header", [proxy_v1, proxy_v2])
def test_proxy_protocol_uses_the_real_client(
    behind_proxy: RunningRelay, standin: StandIn, header: Any
):
    with Conversation(behind_proxy.port) as smtp:
        smtp.send(header("198.51.100.7"))  # the load balancer itself is 127.0.0.1
        assert smtp.reply() == "554 5.7.1 Access denied: client not allowed"
    with Conversation(behind_proxy.port) as smtp:
        smtp.send(header("192.0.2.10"))
        assert smtp.reply().startswith("220 ")
        smtp.command("EHLO client.test")
        assert transaction(smtp, *SENDERS["allowed"]).startswith("250 ")
    assert len(standin.requests) == 1


def test_proxy_protocol_without_header_is_dropped(behind_proxy: RunningRelay, standin: StandIn):
    with Conversation(behind_proxy.port) as smtp:
        smtp.send("EHLO client.test\r\n")
        assert smtp.closed_by_server()
    assert standin.requests == []


def test_proxy_header_from_an_untrusted_peer_is_ignored(
    behind_proxy: RunningRelay, standin: StandIn
):
    """Only the load balancer (127.0.0.1 here) may name the client; 127.0.0.2 may not."""
    with Conversation(behind_proxy.port, source=OUTSIDE) as smtp:
        smtp.send(proxy_v1("192.0.2.10"))
        assert smtp.closed_by_server()
    assert standin.requests == []
