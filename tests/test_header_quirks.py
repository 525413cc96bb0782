"""Messages legacy software really sends, with headers a strict parser would refuse.

Cron scripts omit From, Date and Message-ID; old mailers put several mailboxes in From
(with Sender naming the one that sent it); "undisclosed-recipients:;" and other group
syntax appear in To/Cc; newer ones use IDN domains and UTF-8 mailboxes (SMTPUTF8).
Each must be accepted (250) and forwarded with the right addresses. These run against
the real ``python -m relay`` process with default settings, so the last test also proves
the default line-length bound.
"""

from __future__ import annotations

import smtplib
from typing import Any

import pytest

from tests.interop import Served

pytestmark = pytest.mark.e2e


def send(
    served: Served, headers: str, rcpts: list[str], sender: str = "cron@example.com", **kw: Any
) -> dict[str, Any]:
    """Send ``headers`` + a body; assert 250; the payload the stand-in got.

    When the relay split the message into several requests (one per Bcc recipient), the
    first one with the recipient lists of all of them merged.
    """
    subject = headers.split("Subject: ", 1)[1].split("\r\n", 1)[0]
    raw = (headers + "\r\nBody of " + subject + "\r\n").encode()
    with smtplib.SMTP("127.0.0.1", served.port, timeout=10) as smtp:
        assert smtp.sendmail(sender, rcpts, raw, **kw) == {}
    first, *others = served.payloads(subject)
    merged = dict(first)
    for field in ("to", "cc", "bcc"):
        merged[field] = [a for p in (first, *others) for a in p.get(field, [])]
    return merged


def recipients(payload: dict[str, Any], field: str) -> list[str]:
    return sorted(a["email"] for a in payload.get(field, []))


def everyone(payload: dict[str, Any]) -> list[str]:
    return sorted(a["email"] for f in ("to", "cc", "bcc") for a in payload.get(f, []))


def test_no_from_date_or_message_id_uses_the_envelope_sender(served: Served) -> None:
    payload = send(
        served, "To: alice@example.net\r\nSubject: cron output\r\n", ["alice@example.net"]
    )
    assert payload["from"]["email"] == "cron@example.com"
    assert recipients(payload, "to") == ["alice@example.net"]
    assert "Body of cron output" in payload["text_content"]


def test_several_from_mailboxes_use_sender(served: Served) -> None:
    headers = (
        "From: Ann <ann@example.com>, Bill <bill@example.com>\r\n"
        "Sender: Bill <bill@example.com>\r\nTo: alice@example.net\r\nSubject: two authors\r\n"
    )
    payload = send(served, headers, ["alice@example.net"], sender="bill@example.com")
    assert payload["from"]["email"] == "bill@example.com"


def test_undisclosed_recipients_group(served: Served) -> None:
    headers = "From: app@example.com\r\nTo: undisclosed-recipients:;\r\nSubject: undisclosed\r\n"
    payload = send(served, headers, ["alice@example.net", "bob@example.org"])
    assert everyone(payload) == ["alice@example.net", "bob@example.org"]


def test_group_syntax_in_cc(served: Served) -> None:
    headers = (
        "From: app@example.com\r\nTo: alice@example.net\r\n"
        "Cc: Team: bob@example.org, Carol <carol@example.org>;\r\nSubject: group cc\r\n"
    )
    payload = send(served, headers, ["alice@example.net", "bob@example.org", "carol@example.org"])
    assert recipients(payload, "to") == ["alice@example.net"]
    assert recipients(payload, "cc") == ["bob@example.org", "carol@example.org"]


def _idna(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.encode('idna').decode()}"


def test_idn_domain_recipient(served: Served) -> None:
    rcpt = "alice@b\u00fccher.example"
    headers = f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: idn domain\r\n"
    payload = send(served, headers, [rcpt], mail_options=["SMTPUTF8"])
    assert [_idna(a) for a in everyone(payload)] == [_idna(rcpt)]


def test_smtputf8_mailboxes(served: Served) -> None:
    sender, rcpt = "jos\u00e9@example.com", "\u00fcser@example.net"
    headers = f"From: Jos\u00e9 <{sender}>\r\nTo: {rcpt}\r\nSubject: utf8 mailbox\r\n"
    payload = send(served, headers, [rcpt], sender=sender, mail_options=["SMTPUTF8"])
    assert payload["from"]["email"] == sender
    assert everyone(payload) == [rcpt]


def test_default_line_bound_takes_a_50000_octet_html_line(served: Served) -> None:
    """Old HTML generators write a whole page on one line; the default bound is 64 KiB."""
    html = "<html><body>" + "<td>cell</td>" * 3800 + "</body></html>"
    assert len(html) > 49_000
    headers = (
        "From: app@example.com\r\nTo: alice@example.net\r\nSubject: one-line html\r\n"
        "Content-Type: text/html; charset=us-ascii\r\n"
    )
    raw = (headers + "\r\n" + html + "\r\n").encode()
    with smtplib.SMTP("127.0.0.1", served.port, timeout=10) as smtp:
        assert smtp.sendmail("app@example.com", ["alice@example.net"], raw) == {}
    [payload] = served.payloads("one-line html")
    assert html in payload["html_content"]
