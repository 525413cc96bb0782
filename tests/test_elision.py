"""relay.translate.elision: leaving large base64 runs out of the parse changes no request.

Every corpus message, as stored and with CRLF line ends, with every run of base64-alphabet
lines elided (``ElideAt(0, 1)``: the placeholders are put back everywhere but in safe
leaves and attached messages sent as received), and generated large messages (the default
thresholds) give exactly the JSON bytes of the plain parse; the safe leaves and attached
messages come out as streamed bodies, the others (body text, invalid base64, ...) as
plain bytes.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import os
from collections import Counter
from email.message import EmailMessage
from typing import Any

import pytest

from relay.errors import PermanentError
from relay.translate.elision import ELIDE, ElideAt, parse
from relay.translate.message import translate
from relay.translate.rawslice import RawBase64, RawEncoded
from relay.translate.tree import PARSE_ERRORS
from relay.translate.wire import StreamedBody, as_bytes, serialise
from tests.paths import CORPUS

EVERY_RUN = ElideAt(message=0, run=1)
BIG = ELIDE.message  # an attachment this large makes a message over the threshold
CORPUS_FILES = sorted(
    str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".md"
)
SMTP = email.policy.SMTP


def bodies(raw: bytes | bytearray, elide: ElideAt | None) -> list[bytes] | str:
    """The serialised requests for ``raw`` (or the refusal's class name)."""
    try:
        translated = translate(raw, "app@example.com", ["ann@example.net"], elide=elide)
    except PermanentError as exc:
        return type(exc).__name__
    return [as_bytes(serialise(p)) for p in translated.payloads]


def streamed(raw: bytes) -> list[bool]:
    """Per request of ``raw`` (default thresholds): whether its body is streamed."""
    translated = translate(bytearray(raw), "app@example.com", ["ann@example.net"])
    return [isinstance(serialise(p), StreamedBody) for p in translated.payloads]


def test_the_corpus_is_there() -> None:
    assert len(CORPUS_FILES) > 50


def _crlf(raw: bytes) -> bytes:
    """``raw`` with CRLF line ends, as DATA hands it on (many corpus files are LF-only)."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.mark.parametrize("relative", CORPUS_FILES)
def test_corpus_message_gives_the_same_json_with_every_run_elided(relative: str) -> None:
    stored = (CORPUS / relative).read_bytes()
    for raw in (stored, _crlf(stored)):
        assert bodies(bytearray(raw), EVERY_RUN) == bodies(raw, None)


def test_the_corpus_leaves_data_of_both_kinds_in_the_message() -> None:
    """The equivalence above covers base64 leaves and attached messages left by reference."""
    kinds: Counter[str] = Counter()
    for relative in CORPUS_FILES:
        with contextlib.suppress(*PARSE_ERRORS):
            lazy = parse(bytearray(_crlf((CORPUS / relative).read_bytes())), EVERY_RUN).lazy
            kinds.update(type(data).__name__ for data in lazy.values())
    assert kinds["RawBase64"] >= 20, kinds
    assert kinds["RawEncoded"] >= 5, kinds


def _message(subject: str = "Large") -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "app@example.com", "ann@example.net", subject
    msg.set_content("See the attachment.\n")
    return msg


def _attached(size: int = BIG, **kwargs: Any) -> EmailMessage:
    msg = _message()
    options = {"maintype": "application", "subtype": "pdf", "filename": "a.pdf"} | kwargs
    msg.add_attachment(os.urandom(size), **options)
    return msg


def _two() -> EmailMessage:
    msg = _attached()
    msg.add_attachment(os.urandom(BIG), maintype="image", subtype="png", filename="b.png")
    return msg


def _manual(part_headers: str, body: bytes, outer: str = "mixed") -> bytes:
    """A multipart/``outer`` message with a text part and one hand-written part."""
    return (
        b"From: app@example.com\r\nTo: ann@example.net\r\nSubject: manual\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/" + outer.encode() + b'; boundary="b1"'
        b"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1\r\n"
        + part_headers.encode() + b"\r\n\r\n" + body + b"\r\n--b1--\r\n"
    )  # fmt: skip


def _lines(data: bytes, width: int = 76) -> bytes:
    text = base64.b64encode(data)
    return b"".join(text[i : i + width] + b"\r\n" for i in range(0, len(text), width))


PDF = "Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64"


def _single_part() -> bytes:
    head = b"From: app@example.com\r\nTo: ann@example.net\r\nSubject: one\r\n"
    return head + PDF.encode() + b"\r\n\r\n" + _lines(os.urandom(BIG))


def _in_rfc822() -> bytes:
    inner = _attached()
    outer = _message("forward")
    outer.add_attachment(inner)
    return outer.as_bytes(policy=SMTP)


_SIGNATURE = (b"Content-Type: application/pkcs7-signature\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\nAAAA")  # fmt: skip


def _signed_mail(entity: bytes, subject: bytes, signature_first: bool = False) -> bytes:
    """A multipart/signed message of ``entity`` (its header block and body) and a dummy
    S/MIME signature part: after it, as clients write it, or (``signature_first``) before."""
    first, second = (_SIGNATURE, entity) if signature_first else (entity, _SIGNATURE)
    return (
        b"From: app@example.com\r\nTo: ann@example.net\r\nSubject: " + subject + b"\r\n"
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
        b'boundary="s1"\r\n\r\n--s1\r\n' + first + b"\r\n--s1\r\n" + second
        + b"\r\n--s1--\r\n"
    )  # fmt: skip


def _signed() -> bytes:
    body = _manual(PDF, _lines(os.urandom(BIG))).split(b"\r\n\r\n", 1)[1]
    return _signed_mail(b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n' + body, b"signed")


def _signed_forward(signature_first: bool = False) -> bytes:
    """Signed mail whose content holds an attached message (itself holding a large PDF)."""
    forwarded = email.message_from_bytes(_in_rfc822(), policy=SMTP)
    body = forwarded.as_bytes(policy=SMTP).split(b"\r\n\r\n", 1)[1]
    entity = b"Content-Type: " + forwarded["Content-Type"].encode() + b"\r\n\r\n" + body
    return _signed_mail(entity, b"signed forward", signature_first)


def _equals_inside() -> bytes:
    data = _lines(os.urandom(BIG))
    middle = len(data) // 2
    return _manual(PDF, data[: middle - 3] + b"=" + data[middle - 2 :])


def _bad_length() -> bytes:
    return _manual(PDF, _lines(os.urandom(BIG))[:-2] + b"A\r\n")


def _blank_before_boundary() -> bytes:
    return _manual(PDF, _lines(os.urandom(BIG)))  # the base64, a blank line, the boundary


def _next_to_boundary() -> bytes:
    return _manual(PDF, _lines(os.urandom(BIG))[:-2])  # the CRLF before it is the boundary's


def _two_blank_lines() -> bytes:
    return _manual(PDF, _lines(os.urandom(BIG)) + b"\r\n")


def _text_leaf(ctype: str, disposition: str | None = None) -> bytes:
    """A message whose second part is a large base64 ``ctype`` leaf (read as body text
    only when inline text/plain, text/html or AMP: ``parts.read_as_text``)."""
    head = f"Content-Type: {ctype}; charset=utf-8\r\nContent-Transfer-Encoding: base64"
    if disposition:
        head += f"\r\nContent-Disposition: {disposition}"
    return _manual(head, _lines(b"a line of text, \xc3\xa9\n" * (BIG // 18)))


LAZY = {
    "attachment": lambda: _attached().as_bytes(policy=SMTP),
    "two attachments": lambda: _two().as_bytes(policy=SMTP),
    "single part": _single_part,
    "blank line before the boundary": _blank_before_boundary,
    "right before the boundary": _next_to_boundary,
    "in a message/rfc822 (the message as received)": _in_rfc822,
    "in a multipart/signed (the signature dropped)": _signed,
    "a message attached in signed mail": _signed_forward,
    "text/plain attachment": lambda: _text_leaf("text/plain", "attachment"),
    "text/csv, no disposition": lambda: _text_leaf("text/csv"),
    "text/html with a file name": lambda: _text_leaf('text/html; name="a.html"'),
    "in a multipart/related": lambda: _manual(
        PDF + "\r\nContent-ID: <i>", _lines(b"x" * BIG), outer="related"
    ),
}
PLAIN = {
    "inline text/plain base64 (the body)": lambda: _text_leaf("text/plain"),
    "inline text/html base64 (the body)": lambda: _text_leaf("text/html", "inline"),
    "inline AMP base64": lambda: _text_leaf("text/x-amp-html"),
    "a message attached in signed mail, the signature first": lambda: _signed_forward(True),
    "invalid base64 length": _bad_length,
    "'=' in the middle": _equals_inside,
    "two blank lines after it": _two_blank_lines,
    "not base64": lambda: _manual(
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: 7bit",
        _lines(os.urandom(BIG)),
    ),
}


@pytest.mark.parametrize("name", LAZY)
def test_a_large_attachment_is_streamed_with_the_same_json(name: str) -> None:
    raw = LAZY[name]()
    assert len(raw) > ELIDE.message
    assert bodies(bytearray(raw), ELIDE) == bodies(raw, None)
    assert streamed(raw) == [True]


@pytest.mark.parametrize("name", PLAIN)
def test_data_that_must_be_read_is_not_streamed_and_the_json_is_the_same(name: str) -> None:
    raw = PLAIN[name]()
    assert len(raw) > ELIDE.message
    assert bodies(bytearray(raw), ELIDE) == bodies(raw, None)
    assert streamed(raw) in ([False], [])


def test_a_message_at_the_threshold_takes_the_plain_parse() -> None:
    raw = _attached(ELIDE.message // 2).as_bytes(policy=SMTP)
    assert len(raw) <= ELIDE.message
    assert parse(raw).lazy == {}
    assert len(parse(raw, ElideAt(message=len(raw) - 1, run=ELIDE.run)).lazy) == 1


def test_the_lazy_data_is_the_received_base64_without_line_breaks() -> None:
    raw = bytearray(_attached().as_bytes(policy=SMTP))
    (data,) = parse(raw).lazy.values()
    assert isinstance(data, RawBase64)
    assert data.raw is raw
    assert data.to_bytes() == raw[data.start : data.end].replace(b"\r\n", b"")
    assert len(data) == len(data.to_bytes())
    assert all(len(chunk) <= 64 * 1024 for chunk in data.chunks())


def test_an_attached_message_is_its_received_bytes_encoded_piece_by_piece() -> None:
    raw = bytearray(_in_rfc822())
    lazy = parse(raw).lazy.values()
    (data,) = [d for d in lazy if isinstance(d, RawEncoded)]
    assert data.raw is raw
    body = bytes(raw[data.start : data.end])
    assert body.startswith(b"From: app@example.com\r\n")
    assert b"Subject: Large\r\n" in body
    assert body.endswith(b"--\r\n")  # the inner message up to its closing delimiter
    assert data.to_bytes() == base64.b64encode(body)
    assert len(data) == len(data.to_bytes())
    for size in (4, 7, 8, 1000):  # pieces of whole 3-byte groups join into the whole
        assert b"".join(data.chunks(size)) == data.to_bytes()
    assert max(len(piece) for piece in data.chunks()) <= 64 * 1024
