"""simple_path agrees with aiosmtpd's own address parse on every input it accepts."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtp.paths import simple_path

_PIECES = ["a", "Z", "0", ".", "-", "_", "+", "@", "<", ">", " ", "\t", "(", ")", '"', "[",
           "]", ":", ",", "\\", "é", "\r", "=", "SIZE=100", "b.example", "x", "\n"]  # fmt: skip


def aiosmtpd_getaddr(arg: str, local_part_limit: int = 0) -> tuple[str | None, str | None]:
    """aiosmtpd's own parse of a MAIL/RCPT argument."""
    smtp = SMTP(object(), loop=asyncio.new_event_loop())
    smtp.local_part_limit = local_part_limit
    try:
        return smtp._getaddr(arg)
    finally:
        smtp.loop.close()


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<app@example.com>", ("app@example.com", "")),
        ("<app@example.com> SIZE=4096 BODY=7BIT", ("app@example.com", "SIZE=4096 BODY=7BIT")),
        ("<a.b+tag@mail.example.org>\tSMTPUTF8", ("a.b+tag@mail.example.org", "SMTPUTF8")),
    ],
)
def test_the_plain_form_is_parsed(arg: str, expected: tuple[str, str]) -> None:
    assert simple_path(arg) == expected == aiosmtpd_getaddr(arg)


@pytest.mark.parametrize(
    "arg",
    ["<>", "<\"q r\"@b.example>", "<@relay:a@b.example>", "<a@[192.0.2.1]>", "<a..b@c>",
     "<a@b.example>x", "<a@b.example> (comment) SIZE=1", " <a@b.example>", "a@b.example",
     "<é@b.example>", "<a@b.>", ""],
)  # fmt: skip
def test_other_forms_are_left_to_aiosmtpd(arg: str) -> None:
    assert simple_path(arg) is None


def test_the_local_part_limit_refuses_as_aiosmtpd_does() -> None:
    arg = "<" + "l" * 65 + "@b.example>"
    assert simple_path(arg, 64) == (None, None) == aiosmtpd_getaddr(arg, 64)
    assert simple_path(arg, 65) == aiosmtpd_getaddr(arg, 65)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=14), st.sampled_from([0, 3]))
def test_whatever_it_accepts_aiosmtpd_parses_alike(pieces: list[str], limit: int) -> None:
    arg = "<" + "".join(pieces)
    quick = simple_path(arg, limit)
    if quick is not None:
        assert quick == aiosmtpd_getaddr(arg, limit)


@settings(max_examples=1000, deadline=None)
@given(
    st.from_regex(r"[a-z0-9+_-]{1,8}(\.[a-z0-9]{1,5}){0,2}", fullmatch=True),
    st.from_regex(r"[a-z0-9-]{1,8}(\.[a-z0-9-]{1,6}){0,3}", fullmatch=True),
    st.sampled_from(["", " ", " SIZE=1", "\tBODY=7BIT ", "  A=1 B=2"]),
)
def test_plain_addresses_take_the_quick_way(local: str, domain: str, rest: str) -> None:
    arg = f"<{local}@{domain}>{rest}"
    assert simple_path(arg) == aiosmtpd_getaddr(arg)
    assert simple_path(arg) is not None
