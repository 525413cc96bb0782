"""Defensive reads of a parsed MIME tree (``email.message.Message``).

The stdlib raises on defective input in many places; every accessor here catches that and
answers a safe default, so a broken part never stops the translation of a message.
"""

from __future__ import annotations

import email.errors
import email.feedparser
import email.policy
import email.utils
import re
from email.message import Message
from typing import Any, Final, TypeAlias

__all__ = [
    "PARSE_ERRORS",
    "POLICY",
    "Raw",
    "boundary",
    "charset",
    "content_type",
    "disposition",
    "feed",
    "param",
    "raw_header",
    "raw_payload",
    "single_part_head",
    "subparts",
]

Raw: TypeAlias = bytes | bytearray
"""A message's bytes as received: DATA's ``bytearray``, handed on without a ``bytes`` copy,
or ``bytes`` (the spool, the CLI, tests). Slices of it are of the same type."""

PARSE_ERRORS: Final = (
    email.errors.MessageError,
    ValueError,
    LookupError,
    IndexError,
    TypeError,
    AttributeError,
    RecursionError,
)
"""What the stdlib raises on defective input (UnicodeError and HeaderParseError included)."""

_UNFOLD: Final = re.compile(r"\r?\n(?=[ \t])")


class _UnfoldingCompat32(email.policy.Compat32):
    """compat32 (the stdlib's fast, string-based header handling) reading values unfolded.

    ``policy.default`` parses every header it is asked for with the full RFC 5322 parser,
    which made two thirds of the translation's CPU; the relay reads raw values and decodes
    them itself (``relay.translate.headers``), so it only needs parameters (``boundary``,
    ``charset``, file names), which compat32 reads with string operations. Unfolding first
    keeps a folded ``boundary="simple\r\n boundary"`` whole, as RFC 5322 unfolds it.
    """

    def header_fetch_parse(self, name: str, value: str) -> Any:
        return super().header_fetch_parse(name, _UNFOLD.sub("", value))


POLICY: Final = _UnfoldingCompat32()
_FEED_CHUNK: Final = 8192
_FOLD: Final = re.compile(r"\r?\n|\r")
_CONTENT_TYPE: Final = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")


def feed(raw: Raw) -> Message:
    """``email.message_from_bytes(raw, policy=POLICY)``, fed in chunks.

    Same tree (the feed parser is chunk-agnostic and ASCII/surrogateescape decodes byte by
    byte), but without the whole-message ``str`` and the ``StringIO`` that
    ``message_from_bytes`` builds (4 bytes per character): for a 20 MiB message the parse
    peaks ~100 MiB lower (measured by the benchmark, bench/README.md). A single-part
    message takes ``_single_part`` (same tree, its body never split into lines).
    """
    simple = _single_part(raw)
    if simple is not None:
        return simple
    parser = email.feedparser.BytesFeedParser(policy=POLICY)
    for start in range(0, len(raw), _FEED_CHUNK):
        parser.feed(raw[start : start + _FEED_CHUNK])
    return parser.close()


_HEADER_END: Final = b"\r\n\r\n"
_COMPOUND: Final = re.compile(rb"^content-type:\s*(?:multipart|message)/", re.I | re.M)


def _single_part(raw: Raw) -> Message | None:
    """The tree of a single-part message with CRLF headers, or None for any other.

    The feed parser makes the whole rest of a non-multipart, non-``message/*`` message its
    payload, line by line: ~60 % of its work on a small text message. Here only the header
    block is parsed (``single_part_head``) and the body set from the bytes after it,
    decoded as the parser decodes (ASCII, surrogateescape).
    """
    found = single_part_head(raw)
    if found is None:
        return None
    msg, body = found
    msg.set_payload(raw[body:].decode("ascii", "surrogateescape"))
    return msg


def single_part_head(raw: Raw) -> tuple[Message, int] | None:
    """A single-part message's headers (no payload yet) and where its body starts; None
    when the headers name a multipart or message type, hold a line ending other than
    CRLF, or the parser finds anything amiss in them (a defect, a non-header line: a
    body of its own)."""
    end = raw.find(_HEADER_END)
    if end <= 0:
        return None
    head = raw[: end + len(_HEADER_END)]
    crlf = head.count(b"\r\n")
    if _COMPOUND.search(head) or not head.count(b"\n") == crlf == head.count(b"\r"):
        return None
    parser = email.feedparser.BytesFeedParser(policy=POLICY)
    parser.feed(head)
    msg = parser.close()
    if msg.defects or raw_payload(msg) or msg.get_content_maintype() in ("multipart", "message"):
        return None
    return msg, end + len(_HEADER_END)


def raw_payload(part: Message) -> Any:
    """The payload as the parser left it: a list of parts or the transfer-encoded text.

    ``part.get_payload()`` is avoided on text: for 8-bit content it decodes with the
    declared charset, which can raise or, with ``charset=punycode``, take quadratic time.
    """
    return getattr(part, "_payload", None)


def subparts(part: Message) -> list[Message]:
    """The sub-messages of a part whose payload is a list (``part.is_multipart()``)."""
    return [sub for sub in raw_payload(part) or () if isinstance(sub, Message)]


def raw_header(part: Message, name: str) -> str:
    """The first raw value of the part's header ``name`` (lower case), unfolded; "" if none."""
    for key, value in part.raw_items():
        if key.lower() == name:
            return _FOLD.sub("", str(value)).strip()
    return ""


def content_type(part: Message) -> str:
    """The part's ``type/subtype`` (lower case); application/octet-stream if unreadable.

    When the stdlib finds the value invalid (``application/pdf name=a.pdf``, a ``;``
    missing), the ``type/subtype`` it starts with counts.
    """
    try:
        ctype = part.get_content_type()
    except PARSE_ERRORS:
        ctype = ""
    if _CONTENT_TYPE.fullmatch(ctype):
        return ctype
    written = _CONTENT_TYPE.match(raw_header(part, "content-type").lower())
    return written.group() if written else "application/octet-stream"


def disposition(part: Message) -> str | None:
    """The part's Content-Disposition type (lower case), or None."""
    try:
        return part.get_content_disposition()
    except PARSE_ERRORS:
        return raw_header(part, "content-disposition").split(";", 1)[0].strip().lower() or None


def charset(part: Message) -> str | None:
    """The part's declared charset, or None."""
    try:
        return part.get_content_charset()
    except PARSE_ERRORS:
        return None


def param(part: Message, name: str) -> str | None:
    """The Content-Type parameter ``name`` as a string, or None."""
    try:
        value = part.get_param(name)
    except PARSE_ERRORS:
        return None
    if isinstance(value, tuple):
        value = email.utils.collapse_rfc2231_value(value)
    return value if isinstance(value, str) else None


def boundary(part: Message) -> str | None:
    """The part's multipart boundary, or None."""
    try:
        return part.get_boundary()
    except PARSE_ERRORS:
        return None
