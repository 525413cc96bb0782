"""The reply table: every error class gets the documented code; details are safe."""

from __future__ import annotations

import pytest

from relay.smtp import replies as r


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (r.UpstreamUnreachable("x"), "451 4.4.1"),
        (r.UpstreamTimeout("x"), "451 4.4.2"),
        (r.UpstreamThrottled("x"), "451 4.4.5"),
        (r.UpstreamBusy("x"), "451 4.4.5"),
        (r.UpstreamServerError("x"), "451 4.3.0"),
        (r.UpstreamUnexpected("x"), "451 4.3.0"),
        (r.RelayMisconfigured("x"), "451 4.3.5"),
        (r.ShuttingDown(), "421 4.3.2"),
        (r.InternalError("boom"), "451 4.3.0"),
        (r.MessageUnparseable("x"), "554 5.6.0"),
        (r.InvalidHeader("x"), "554 5.6.0"),
        (r.MessageTooLarge("x"), "552 5.3.4"),
        (r.UpstreamRejected("x"), "554 5.6.0"),
        (r.UpstreamForbidden("x"), "550 5.7.1"),
        (r.NothingQueued("x"), "554 5.0.0"),
    ],
)
def test_each_error_has_its_reply(error: r.RelayError, expected: str) -> None:
    assert str(r.reply_for(error)).startswith(expected + " ")


def test_transient_and_permanent_split_by_code_class() -> None:
    for cls, reply in r.REPLY_FOR.items():
        assert reply.is_transient == issubclass(cls, r.TransientError), cls


def test_permanent_details_are_shown_sanitized() -> None:
    reply = r.reply_for(r.UpstreamRejected("400 bad\r\nRCPT TO:<x@evil> \u00e9" + "z" * 500))
    text = str(reply)
    assert "\r" not in text
    assert "\n" not in text
    assert text.isascii()
    assert text.startswith("554 5.6.0 Rejected by AhaSend: 400 bad RCPT TO:<x@evil>")
    assert len(text) < 260


def test_transient_details_stay_out_of_the_reply() -> None:
    assert str(r.reply_for(r.UpstreamUnreachable("ConnectError: 10.0.0.5:443"))) == (
        "451 4.4.1 Upstream API unreachable, try again later"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("503 Error: need MAIL command", "503 5.5.1 need MAIL command"),
        ("500 Error: command not recognized", "500 5.5.2 command not recognized"),
        ("552 Error: Too much mail data", "552 5.3.4 Too much mail data"),
        ("250 OK", "250 2.0.0 OK"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("451 4.4.1 already coded", "451 4.4.1 already coded"),
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
        ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),
        ("220 relay ESMTP", "220 relay ESMTP"),
        ("250-SIZE 100", "250-SIZE 100"),
    ],
)
def test_enhanced_codes_are_added_where_missing(raw: str, expected: str) -> None:
    assert r.with_enhanced_code(raw) == expected
