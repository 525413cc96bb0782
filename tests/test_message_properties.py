"""Properties of relay.translate on generated input: a valid request or a clean refusal."""

from __future__ import annotations

import email.policy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.errors import PermanentError
from relay.translate.message import simple_mailboxes as _simple_mailboxes
from relay.translate.message import translate
from tests.spec import assert_valid_request

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HEADER_NAMES = [
    "From", "To", "Cc", "Bcc", "Sender", "Reply-To", "Subject", "Message-ID", "MIME-Version",
    "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Content-ID",
    "In-Reply-To", "References", "List-Unsubscribe", "X-Custom", "Keywords",
    "ahasend-tags", "ahasend-sandbox", "ahasend-track-opens",
]  # fmt: skip
VALUE_PIECES = [
    "a@example.com", "Name <n@example.net>", '"Doe, J" <j@x.org>', "undisclosed-recipients:;",
    "g: a@x.com, b@y.com;", "=?utf-8?q?J=C3=BC?=", "=?bogus?b?////?=", "=?utf-8?b?", "<>",
    "multipart/mixed; boundary=B", "multipart/alternative; boundary=\"B\"", "text/plain",
    "text/html; charset=x-unknown", "image/png; name*=utf-8''%E2%82%AC.png", "base64",
    "quoted-printable", "attachment; filename=\"f.pdf\"", "inline", "<cid@x>", "true", "0",
    "(comment", "\\", "\"", ",", ";", ":", "\udcff",
]  # fmt: skip
BODY_PIECES = [
    "--B\r\n", "--B--\r\n", "Content-Type: text/html\r\n", "Content-Type: message/rfc822\r\n",
    "Content-Transfer-Encoding: base64\r\n", "\r\n", "SGVsbG8=\r\n", "=E9=\r\n", "caf\xe9 ",
    "From: x@y.z\r\n", "plain text ",
]  # fmt: skip


def assert_translates_or_refuses(raw: bytes, mail_from: str, rcpts: list[str]) -> None:
    try:
        translated = translate(raw, mail_from, rcpts)
    except PermanentError:
        return
    assert translated.payloads
    for payload in translated.payloads:
        assert_valid_request(payload)
        json.dumps(payload, ensure_ascii=False).encode("utf-8")


@FAST
@given(raw=st.binary(max_size=2000))
def test_arbitrary_bytes(raw: bytes) -> None:
    assert_translates_or_refuses(raw, "sender@example.com", ["rcpt@example.com"])


def header_values() -> st.SearchStrategy[str]:
    piece = st.one_of(st.sampled_from(VALUE_PIECES), st.text(max_size=12))
    return st.lists(piece, max_size=4).map(" ".join)


message_texts = st.builds(
    lambda headers, body: "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n" + body,
    st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_values()), max_size=10),
    st.lists(st.one_of(st.sampled_from(BODY_PIECES), st.text(max_size=20)), max_size=15).map(
        "".join
    ),
)


@FAST
@given(
    text=message_texts,
    encoding=st.sampled_from(["utf-8", "latin-1"]),
    mail_from=st.sampled_from(["", "s@example.com", "<b@example.org>", "nodomain"]),
    rcpts=st.lists(st.sampled_from(["a@example.com", "A@EXAMPLE.COM", "b@y.com", "c@x.org"]),
                   min_size=1, max_size=4),
)  # fmt: skip
def test_structured_messages(text: str, encoding: str, mail_from: str, rcpts: list[str]) -> None:
    raw = text.encode(encoding, "surrogateescape" if encoding == "utf-8" else "replace")
    assert_translates_or_refuses(raw, mail_from, rcpts)


ATOM = st.text(alphabet="abcxyzABC019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=6)
ADDR = st.builds(
    lambda local, d: f"{local}@{d}.example", ATOM, st.from_regex(r"[a-z0-9-]{1,8}", fullmatch=True)
)
MAILBOX = st.one_of(
    ADDR,
    st.builds(
        lambda n, a: f"{n} <{a}>", st.lists(ATOM, min_size=1, max_size=3).map(" ".join), ADDR
    ),
)


@FAST
@given(boxes=st.lists(MAILBOX, min_size=1, max_size=4), sep=st.sampled_from([",", ", ", " ,\t"]))
def test_fast_address_path_agrees_with_the_stdlib_parser(boxes: list[str], sep: str) -> None:
    value = sep.join(boxes)
    fast = _simple_mailboxes(value)
    parsed = email.policy.default.header_factory("to", value)
    expected = [(a.display_name, a.addr_spec) for a in parsed.addresses]
    assert fast is not None or "=?" in value
    if fast is not None:
        assert fast == expected


LEAF_TYPES = [
    "text/plain; charset=utf-8", "text/plain; charset=x-bogus", "text/html; charset=latin-1",
    "text/x-amp-html", "image/png", "application/pdf; name=\"r.pdf\"", "message/rfc822",
    "application/octet-stream; name*=iso-8859-1''%E9t%E9.bin", "text/calendar", "bogus",
]  # fmt: skip
DISPOSITIONS = ["", "attachment", "inline", 'attachment; filename="=?utf-8?q?f=C3=BC.txt?="']
ENCODINGS = ["", "base64", "quoted-printable", "8bit", "x-uuencode"]


@st.composite
def mime_part(draw: st.DrawFn, depth: int = 0) -> str:
    """One MIME entity: a leaf with random headers and content, or a multipart of them."""
    if depth < 2 and draw(st.booleans()):
        boundary = f"b{depth}"
        subtype = draw(st.sampled_from(["mixed", "alternative", "related", "signed"]))
        children = draw(st.lists(mime_part(depth + 1), min_size=0, max_size=3))
        close = draw(st.sampled_from([f"--{boundary}--\r\n", ""]))
        inner = "".join(f"--{boundary}\r\n{child}\r\n" for child in children)
        return f"Content-Type: multipart/{subtype}; boundary={boundary}\r\n\r\n{inner}{close}"
    headers = [f"Content-Type: {draw(st.sampled_from(LEAF_TYPES))}"]
    if disposition := draw(st.sampled_from(DISPOSITIONS)):
        headers.append(f"Content-Disposition: {disposition}")
    if encoding := draw(st.sampled_from(ENCODINGS)):
        headers.append(f"Content-Transfer-Encoding: {encoding}")
    if draw(st.booleans()):
        headers.append(f"Content-ID: {draw(st.sampled_from(['<a@b>', 'x', '<>', '']))}")
    content = draw(st.one_of(st.sampled_from(["SGVsbG8=", "=C3=A9", "QR==", "!!"]), st.text()))
    return "\r\n".join(headers) + "\r\n\r\n" + content


@FAST
@given(
    body=mime_part(),
    rcpts=st.lists(st.sampled_from(["a@example.com", "b@y.com"]), min_size=1, max_size=2),
)
def test_mime_trees(body: str, rcpts: list[str]) -> None:
    head = "From: s@example.com\r\nTo: a@example.com\r\nSubject: t\r\nMIME-Version: 1.0\r\n"
    raw = (head + body).encode("utf-8", "surrogateescape")
    assert_translates_or_refuses(raw, "s@example.com", rcpts)
