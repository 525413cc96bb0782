"""Legacy SMTP quirks, sent as exact bytes to a real relay that forwards to the stand-in.

Each test documents one behaviour of the README's "Legacy clients" section: long lines,
bare LF / CR / NUL inside DATA (never an early end of DATA: no SMTP smuggling), 8-bit
bodies without BODY=8BITMIME, HELO-only clients, PIPELINING, RSET/NOOP and many
transactions per connection, and the enhanced status codes on aiosmtpd's own replies.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.interop import Served, serving
from tests.rawsmtp import RawSMTP

pytestmark = pytest.mark.e2e
LIMIT = 4096


@pytest.fixture(scope="module")
def bounded() -> Iterator[Served]:
    """One relay for the module, with a small line limit and message size to test bounds."""
    with serving(relay_max_line_length=LIMIT, relay_max_message_size=64 * 1024) as bounded:
        yield bounded


@pytest.fixture
def smtp(bounded: Served) -> Iterator[RawSMTP]:
    with RawSMTP(bounded.port) as smtp:
        assert smtp.cmd("EHLO client.test").startswith("250")
        yield smtp


def message(subject: str, body: bytes, headers: bytes = b"") -> bytes:
    """A minimal message (From/To/Subject + ``headers``) ending with the CRLF.CRLF marker."""
    head = b"From: app@example.com\r\nTo: alice@example.net\r\nSubject: " + subject.encode()
    return head + b"\r\n" + headers + b"\r\n" + body + b"\r\n.\r\n"


def text_of(bounded: Served, subject: str) -> str:
    [payload] = bounded.payloads(subject)
    return str(payload.get("text_content", ""))


# -- long lines ---------------------------------------------------------------------------


def test_lines_over_998_octets_are_accepted_up_to_the_bound(bounded: Served, smtp: RawSMTP) -> None:
    line = b"<td>" + b"x" * (LIMIT - 11) + b"</td>"  # exactly LIMIT octets with its CRLF
    assert len(line + b"\r\n") == LIMIT
    smtp.envelope()
    smtp.send(message("long line", line))
    assert smtp.reply().startswith("250 2.0.0")
    assert line.decode() in text_of(bounded, "long line")


@pytest.mark.parametrize("length", [LIMIT + 1, LIMIT * 3], ids=["bound+1", "3x"])
def test_a_line_over_the_bound_is_refused_with_500_5_5_2_and_the_session_goes_on(
    bounded: Served, smtp: RawSMTP, length: int
) -> None:
    subject = f"too long {length}"
    smtp.envelope()
    smtp.send(message(subject, b"y" * (length - 2)))
    assert smtp.reply() == "500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)"
    smtp.envelope()
    smtp.send(message(f"after {subject}", b"fine"))
    assert smtp.reply().startswith("250 2.0.0")
    assert bounded.payloads(subject, timeout=0.2) == []


def test_too_much_data_is_refused_with_552_5_3_4(bounded: Served, smtp: RawSMTP) -> None:
    smtp.envelope()
    smtp.send(message("too big", (b"z" * 1000 + b"\r\n") * 70))
    assert smtp.reply() == "552 5.3.4 Too much mail data"
    assert smtp.cmd("NOOP") == "250 2.0.0 OK"


# -- only <CRLF>.<CRLF> ends DATA ---------------------------------------------------------

SMUGGLED = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled"


@pytest.mark.parametrize(
    "fake_end",
    [b"\n.\n", b"\r.\n", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n", b"\n.\r"],
    ids=["LF.LF", "CR.LF", "LF.CRLF", "CRLF.LF", "CRLF.CR", "CR.CRLF", "LF.CR"],
)
def test_bare_lf_or_cr_dots_never_end_data(bounded: Served, smtp: RawSMTP, fake_end: bytes) -> None:
    subject = f"smuggle {fake_end!r}"
    smtp.envelope()
    smtp.send(message(subject, b"before" + fake_end + SMUGGLED + b"\r\nafter"))
    assert smtp.reply().startswith("250 2.0.0"), "DATA must end at <CRLF>.<CRLF> only"
    assert smtp.cmd("NOOP") == "250 2.0.0 OK"  # no stray replies to smuggled commands
    text = text_of(bounded, subject)
    assert "evil@example.com" in text
    assert "after" in text
    recipients = {a["email"] for r in bounded.accepted() for a in r.json.get("to", [])}
    assert "victim@example.net" not in recipients


def test_commands_ending_in_bare_lf_are_understood(bounded: Served) -> None:
    """Scripts that talk SMTP through netcat send commands with LF only."""
    with RawSMTP(bounded.port) as smtp:
        for command in (b"HELO script", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>"):
            smtp.send(command + b"\n")
            assert smtp.reply().startswith("250 ")
        smtp.send(b"DATA\n")
        assert smtp.reply().startswith("354 ")
        smtp.send(message("bare lf commands", b"hi"))
        assert smtp.reply().startswith("250 2.0.0")
    assert "hi" in text_of(bounded, "bare lf commands")


def test_nul_bytes_in_content_do_not_end_or_break_data(bounded: Served, smtp: RawSMTP) -> None:
    smtp.envelope()
    smtp.send(message("nul", b"before\x00nul\r\n\x00.\r\nafter nul"))
    assert smtp.reply().startswith("250 2.0.0")
    text = text_of(bounded, "nul")
    assert "before" in text
    assert "after nul" in text


# -- 8-bit, HELO-only, PIPELINING, RSET/NOOP, many transactions ---------------------------


def test_8bit_body_without_8bitmime_from_a_helo_only_client(bounded: Served) -> None:
    with RawSMTP(bounded.port) as smtp:
        assert smtp.cmd("HELO scanner").startswith("250 ")
        smtp.envelope()
        body = "Caf\u00e9 d\u00e9j\u00e0 vu".encode()
        smtp.send(message("8bit", body, b"Content-Type: text/plain; charset=utf-8\r\n"))
        assert smtp.reply().startswith("250 2.0.0")
    assert "Caf\u00e9 d\u00e9j\u00e0 vu" in text_of(bounded, "8bit")


def test_helo_client_may_still_send_esmtp_parameters(bounded: Served) -> None:
    """Postfix accepts BODY=/SIZE= after HELO; so does the relay (aiosmtpd alone says 501)."""
    with RawSMTP(bounded.port) as smtp:
        assert smtp.cmd("HELO old-client").startswith("250 ")
        assert smtp.cmd("MAIL FROM:<app@example.com> BODY=8BITMIME SIZE=300").startswith("250 ")
        assert smtp.cmd("RCPT TO:<alice@example.net>").startswith("250 ")
        assert smtp.cmd("DATA").startswith("354")
        utf8 = b"Content-Type: text/plain; charset=utf-8\r\n"
        smtp.send(message("helo params", "Gr\u00fc\u00dfe".encode(), utf8))
        assert smtp.reply().startswith("250 2.0.0")
    assert "Gr\u00fc\u00dfe" in text_of(bounded, "helo params")


def test_latin1_body_without_mime_headers_is_accepted(bounded: Served, smtp: RawSMTP) -> None:
    smtp.envelope()
    smtp.send(message("latin1", b"\xe9t\xe9", b"Content-Type: text/plain; charset=iso-8859-1\r\n"))
    assert smtp.reply().startswith("250 2.0.0")
    assert "\u00e9t\u00e9" in text_of(bounded, "latin1")


def test_pipelined_transaction(bounded: Served, smtp: RawSMTP) -> None:
    assert "250-PIPELINING" in smtp.cmd("EHLO client.test")
    smtp.send(
        b"MAIL FROM:<app@example.com>\r\nRCPT TO:<alice@example.net>\r\n"
        b"RCPT TO:<bob@example.net>\r\nDATA\r\n"
    )
    replies = [smtp.reply() for _ in range(4)]
    assert [r[:3] for r in replies] == ["250", "250", "250", "354"]
    smtp.send(message("pipelined", b"body") + b"QUIT\r\n")
    assert smtp.reply().startswith("250 2.0.0")
    assert smtp.reply().startswith("221 2.0.0")
    [payload] = bounded.payloads("pipelined")
    recipients = [a["email"] for key in ("to", "cc", "bcc") for a in payload.get(key, [])]
    assert sorted(recipients) == ["alice@example.net", "bob@example.net"]


def test_many_transactions_with_rset_and_noop_on_one_connection(
    bounded: Served, smtp: RawSMTP
) -> None:
    for n in range(20):
        assert smtp.cmd("NOOP") == "250 2.0.0 OK"
        assert smtp.cmd("MAIL FROM:<abandoned@example.com>").startswith("250")
        assert smtp.cmd("RSET") == "250 2.0.0 OK"
        smtp.envelope()
        smtp.send(message(f"txn {n}", f"transaction {n}".encode()))
        assert smtp.reply().startswith("250 2.0.0")
    for n in range(20):
        assert f"transaction {n}" in text_of(bounded, f"txn {n}")
    assert "abandoned@example.com" not in {r.json["from"]["email"] for r in bounded.accepted()}


# -- aiosmtpd's own replies carry RFC 3463 codes ------------------------------------------


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        (["RCPT TO:<alice@example.net>"], "503 5.5.1 need MAIL command"),
        (["MAIL FROM:<a@example.com>", "DATA"], "503 5.5.1 need RCPT command"),
        (
            ["MAIL FROM:<a@example.com>", "MAIL FROM:<a@example.com>"],
            "503 5.5.1 nested MAIL command",
        ),
        (["FROBNICATE"], '500 5.5.2 command "FROBNICATE" not recognized'),
        (
            ["MAIL TO:<a@example.com>"],
            "501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]",
        ),
        (
            ["MAIL FROM:<a@example.com> SIZE=999999999"],
            "552 5.3.4 message size exceeds fixed maximum message size",
        ),
    ],
    ids=["rcpt-first", "data-first", "nested-mail", "unknown", "bad-syntax", "size"],
)
def test_aiosmtpd_replies_carry_enhanced_codes(
    smtp: RawSMTP, commands: list[str], expected: str
) -> None:
    *setup, last = commands
    for command in setup:
        assert smtp.cmd(command).startswith("250")
    assert smtp.cmd(last) == expected


def test_mail_before_helo_gets_503_5_5_1(bounded: Served) -> None:
    with RawSMTP(bounded.port) as smtp:
        assert smtp.greeting.startswith("220 ")
        assert smtp.cmd("MAIL FROM:<a@example.com>") == "503 5.5.1 send HELO first"
