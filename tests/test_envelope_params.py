"""Envelope details real clients send, as exact commands to a real relay and stand-in.

- The RFC 4954 §5 ``AUTH=`` MAIL parameter (Postfix sends ``AUTH=<>`` whenever the
  server advertised AUTH) is accepted and ignored: it never authenticates anybody.
- A recipient without a domain (``RCPT TO:<postmaster>``) is refused at RCPT with
  ``550 5.1.3``; the transaction's other recipients are still delivered.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.interop import Served, serving
from tests.rawsmtp import RawSMTP
from tests.security_support import PASSWORD, Certs, Conversation, plain_token

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def plain() -> Iterator[Served]:
    """A relay without AUTH, for loopback clients."""
    with serving() as plain:
        yield plain


@pytest.fixture(scope="module")
def secured(certs: Certs) -> Iterator[Served]:
    """A relay with STARTTLS and one AUTH user; no network may send without AUTH."""
    with serving(
        relay_tls_cert=certs.cert, relay_tls_key=certs.key, relay_auth_user="app",
        relay_auth_password=PASSWORD, relay_auth_failure_delay=0.0,
    ) as plain:  # fmt: skip
        yield plain


def message(subject: str, to: str = "alice@example.net") -> bytes:
    head = f"From: app@example.com\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n"
    return head.encode() + b"Hello.\r\n.\r\n"


def recipients(plain: Served, subject: str) -> list[str]:
    """Every recipient of every request the stand-in got for ``subject``."""
    payloads = plain.payloads(subject)
    return sorted(a["email"] for p in payloads for k in ("to", "cc", "bcc") for a in p.get(k, []))


@contextmanager
def tls_session(secured: Served, certs: Certs) -> Iterator[Conversation]:
    """A conversation after EHLO, STARTTLS, EHLO (AUTH advertised) and nothing else."""
    with Conversation(secured.port) as conversation:
        assert conversation.reply().startswith("220")
        assert conversation.command("EHLO client.test").startswith("250")
        conversation.starttls(certs.client_context())
        assert "250-AUTH LOGIN PLAIN" in conversation.command("EHLO client.test")
        yield conversation


# -- AUTH= on MAIL -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["<>", "app@example.com", "app+2Bx@example.com"])
def test_mail_auth_parameter_is_accepted_after_auth(
    secured: Served, certs: Certs, value: str
) -> None:
    with tls_session(secured, certs) as smtp:
        assert smtp.command(f"AUTH PLAIN {plain_token('app', PASSWORD)}").startswith("235 2.7.0")
        reply = smtp.command(f"MAIL FROM:<app@example.com> AUTH={value} SIZE=100")
        assert reply == "250 2.1.0 Sender OK"
        assert smtp.command("RCPT TO:<alice@example.net>") == "250 2.1.5 Recipient OK"
        assert smtp.command("DATA").startswith("354")
        smtp.send(message(f"auth param {value}"))
        assert smtp.reply().startswith("250 2.0.0")
    assert recipients(secured, f"auth param {value}") == ["alice@example.net"]


def test_mail_auth_parameter_never_authenticates(secured: Served, certs: Certs) -> None:
    with tls_session(secured, certs) as smtp:
        reply = smtp.command("MAIL FROM:<app@example.com> AUTH=app@example.com")
        assert reply == "530 5.7.0 Authentication required"


def test_mail_auth_parameter_is_accepted_without_auth_configured(plain: Served) -> None:
    with RawSMTP(plain.port) as smtp:
        assert smtp.cmd("EHLO client.test").startswith("250")
        assert smtp.cmd("MAIL FROM:<app@example.com> AUTH=<>") == "250 2.1.0 Sender OK"
        assert smtp.cmd("RCPT TO:<alice@example.net>").startswith("250 2.1.5")
        assert smtp.cmd("DATA").startswith("354")
        smtp.send(message("auth param, no auth"))
        assert smtp.reply().startswith("250 2.0.0")
    assert recipients(plain, "auth param, no auth") == ["alice@example.net"]


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("MAIL FROM:<app@example.com> auth=<>", "250 2.1.0 Sender OK"),
        ("MAIL FROM: <app@example.com> AUTH=<> BODY=8BITMIME", "250 2.1.0 Sender OK"),
        ("MAIL FROM:app@example.com AUTH=<>", "250 2.1.0 Sender OK"),
        (
            "MAIL FROM:<app@example.com> AUTH=",
            "501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]",
        ),
        (
            "MAIL FROM:<app@example.com> AUTH=<> SIZE=x",
            "501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]",
        ),
    ],
)
def test_mail_auth_parameter_forms(plain: Served, command: str, reply: str) -> None:
    """Any letter case and position; an empty ``AUTH=`` is a syntax error, as before."""
    with RawSMTP(plain.port) as smtp:
        assert smtp.cmd("HELO client.test").startswith("250")
        assert smtp.cmd(command) == reply


def test_auth_parameter_on_rcpt_is_still_unknown(plain: Served) -> None:
    """RFC 4954 defines AUTH= for MAIL only."""
    with RawSMTP(plain.port) as smtp:
        assert smtp.cmd("EHLO client.test").startswith("250")
        assert smtp.cmd("MAIL FROM:<app@example.com>").startswith("250")
        reply = smtp.cmd("RCPT TO:<alice@example.net> AUTH=<>")
        assert reply == "555 5.5.4 RCPT TO parameters not recognized or not implemented"


def test_other_unknown_mail_parameters_are_still_refused(plain: Served) -> None:
    with RawSMTP(plain.port) as smtp:
        assert smtp.cmd("EHLO client.test").startswith("250")
        reply = smtp.cmd("MAIL FROM:<app@example.com> AUTH=<> XFOO=1")
        assert reply == "555 5.5.4 MAIL FROM parameters not recognized or not implemented"


# -- recipients without a domain ---------------------------------------------------------


@pytest.mark.parametrize("rcpt", ["postmaster", "Postmaster", "abuse"])
def test_recipient_without_domain_is_refused_at_rcpt(plain: Served, rcpt: str) -> None:
    with RawSMTP(plain.port) as smtp:
        assert smtp.cmd("EHLO client.test").startswith("250")
        assert smtp.cmd("MAIL FROM:<app@example.com>").startswith("250")
        reply = smtp.cmd(f"RCPT TO:<{rcpt}>")
        assert reply == "550 5.1.3 Recipient address must be user@domain"


def test_other_recipients_of_the_transaction_still_deliver(plain: Served) -> None:
    with RawSMTP(plain.port) as smtp:
        assert smtp.cmd("EHLO client.test").startswith("250")
        assert smtp.cmd("MAIL FROM:<app@example.com>").startswith("250")
        assert smtp.cmd("RCPT TO:<alice@example.net>").startswith("250 2.1.5")
        assert smtp.cmd("RCPT TO:<postmaster>").startswith("550 5.1.3")
        assert smtp.cmd("RCPT TO:<bob@example.org>").startswith("250 2.1.5")
        assert smtp.cmd("DATA").startswith("354")
        smtp.send(message("postmaster mixed", to="alice@example.net, postmaster"))
        assert smtp.reply().startswith("250 2.0.0")
    assert recipients(plain, "postmaster mixed") == ["alice@example.net", "bob@example.org"]


def test_only_domainless_recipients_leave_no_transaction(plain: Served) -> None:
    with RawSMTP(plain.port) as smtp:
        assert smtp.cmd("EHLO client.test").startswith("250")
        assert smtp.cmd("MAIL FROM:<app@example.com>").startswith("250")
        assert smtp.cmd("RCPT TO:<postmaster>").startswith("550 5.1.3")
        assert smtp.cmd("DATA").startswith("503 5.5.1")
