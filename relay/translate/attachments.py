"""API ``Attachment`` objects for the leaves that are not body text.

Name
    ``file_name`` comes from the Content-Disposition filename or Content-Type name (RFC 2231
    and RFC 2047 decoded, path stripped), else the attached message's Subject, else
    ``invite.ics`` for a calendar, else ``attachment-<n><ext>``.

Type
    ``content_type`` is the part's ``type/subtype``; text parts keep their parameters
    (``text/calendar; charset="utf-8"; method=REQUEST``: the method is what makes a client
    offer Accept / Decline), except the file name.

Inline or not
    A part with a Content-ID is sent inline (``content_disposition: "inline"``, the id in
    angle brackets) when the HTML references it (``cid:``), when it sits in a
    multipart/related, or when its disposition is not ``attachment``: Python's own
    ``add_related(..., filename=...)``, Yandex and others mark inline images
    ``attachment``. Any other ``attachment``-disposition part is sent as
    ``content_disposition: "attachment"`` (its Content-ID dropped, so it stays
    downloadable).

Data
    Base64 without line breaks; a base64 part whose payload is valid base64 is passed on as
    it is (in a large message by reference, ``relay.translate.rawslice``: not copied). An
    attached message (``message/*``) is its bytes exactly as received
    (``relay.translate.verbatim``, ``verbatim_body``), so a DKIM signature inside it still
    verifies (in a large message encoded as it is sent, ``rawslice.RawEncoded``); only when
    those bytes cannot be found is it re-serialised.
"""

from __future__ import annotations

import base64
import email.policy
import mimetypes
import quopri
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any, Final

from relay.errors import MessageUnparseable
from relay.translate.headers import Headers, decode_text_header, one_line, raw_bytes
from relay.translate.rawslice import RawData
from relay.translate.transfer import b64decode_lenient, payload_bytes, transfer_encoding
from relay.translate.tree import (
    PARSE_ERRORS,
    Raw,
    disposition,
    raw_header,
    raw_payload,
    subparts,
)
from relay.translate.verbatim import body_start, entity_span

__all__ = ["Leaf", "attachment", "file_name"]

_EML_POLICY: Final = email.policy.default.clone(linesep="\r\n", refold_source="none")
_WHITESPACE: Final = str.maketrans("", "", " \t\r\n\v\f")
_BASE64: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_UNQUOTED_NAME: Final = re.compile(r"(?:^|;)\s*(?:file)?name\s*=\s*([^\s\";][^;]*)", re.IGNORECASE)
_UNSAFE_NAME: Final = re.compile(r'[\\/:*?"<>|]+')
_MAX_NAME = 100
_MESSAGES: Final = ("message/rfc822", "message/global")
_EXTENSIONS: Final = {
    "text/plain": ".txt",
    "text/html": ".html",
    "text/x-amp-html": ".html",
    "image/jpeg": ".jpg",
    "message/rfc822": ".eml",
    "message/global": ".eml",
    "message/delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "application/octet-stream": ".bin",
}
_NAMING_HEADERS: Final = ("content-disposition", "content-type")
_DROPPED_PARAMS: Final = frozenset({"name", "filename"})
_TOKEN: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+")


@dataclass(frozen=True, slots=True)
class Leaf:
    """A part sent as a file: where it sits and what surrounds it."""

    part: Message
    ctype: str
    path: tuple[int, ...]
    related: bool
    raw: Raw
    root: Message
    lazy: RawData | None = None
    """The data left in ``raw`` (``relay.translate.elision``), or None."""


def attachment(leaf: Leaf, html: str, index: int) -> dict[str, Any]:
    """The API ``Attachment`` for ``leaf``; ``index`` (1-based) names an unnamed one."""
    part = leaf.part
    found: dict[str, Any] = {
        "base64": True,
        "data": _data(leaf),
        "content_type": _full_type(part, leaf.ctype),
        "file_name": file_name(part) or _generated_name(part, leaf.ctype, index),
    }
    kind, cid = disposition(part), _content_id(part)
    if cid and (kind != "attachment" or leaf.related or _referenced(cid, html)):
        found.update(content_id=cid, content_disposition="inline")
    elif kind == "attachment":
        found["content_disposition"] = "attachment"
    return found


def _referenced(cid: str, html: str) -> bool:
    """Whether ``html`` shows the part with Content-ID ``cid`` (``cid:`` URL)."""
    return f"cid:{cid[1:-1]}".lower() in html.lower() if "cid:" in html.lower() else False


def _content_id(part: Message) -> str | None:
    """The part's Content-ID in angle brackets, or None."""
    inner = one_line(raw_header(part, "content-id")).strip("<> \t")
    return f"<{inner}>" if inner else None


def _full_type(part: Message, ctype: str) -> str:
    """``ctype``; for text parts with their parameters but the file name (module doc)."""
    if not ctype.startswith("text/"):
        return ctype
    try:
        params = part.get_params() or []
    except PARSE_ERRORS:
        return ctype
    kept = [_param(k, v) for k, v in params[1:] if k and k.lower() not in _DROPPED_PARAMS]
    return "; ".join([ctype, *[p for p in kept if p]])


def _param(name: str, value: Any) -> str:
    """``name=value`` for a Content-Type, quoted when it is not a token."""
    text = one_line(value if isinstance(value, str) else str(value or ""))
    if not _TOKEN.fullmatch(name):
        return ""
    if _TOKEN.fullmatch(text):
        return f"{name.lower()}={text}"
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'{name.lower()}="{escaped}"'


def file_name(part: Message) -> str:
    """The part's file name (RFC 2231 / RFC 2047 decoded, without a path); "" if none.

    An unquoted value is read from the raw header, where the stdlib parser would cut
    ``name=My file.pdf`` at the space or give up on ``name==?utf-8?b?...?=``.
    """
    if not _names_a_file(part):
        return ""
    name = _unquoted_name(part)
    if not name:
        try:
            name = part.get_filename() or ""
        except PARSE_ERRORS:
            name = ""
    name = decode_text_header(name) if "=?" in name else _eight_bit(name)
    return re.split(r"[\\/]", name)[-1].strip()


def _names_a_file(part: Message) -> bool:
    """Whether a ``name`` / ``filename`` parameter (RFC 2231 continuations included) can be
    in the part's Content-Disposition or Content-Type: most body parts have none, and the
    stdlib's parameter parse they then skip was ~2 % of the relay's CPU per small message."""
    return any("name" in raw_header(part, h).lower() for h in _NAMING_HEADERS)


def _eight_bit(name: str) -> str:
    """A name whose raw 8-bit bytes are UTF-8 or windows-1252, one line."""
    return decode_text_header(name) if not name.isascii() else one_line(name)


def _unquoted_name(part: Message) -> str:
    """An unquoted, non-RFC 2231 ``filename=`` / ``name=`` value of the raw headers, or ""."""
    for header in ("content-disposition", "content-type"):
        if match := _UNQUOTED_NAME.search(raw_header(part, header)):
            return match.group(1).strip()
    return ""


def _data(leaf: Leaf) -> str | RawData:
    """The leaf's content as base64 without line breaks (module doc); a ``RawData``
    (the same characters, not copied) for a leaf whose data was left in the message."""
    if leaf.lazy is not None:
        return leaf.lazy
    part = leaf.part
    if leaf.ctype.startswith("message/") or part.is_multipart():
        return base64.b64encode(_message_bytes(leaf)).decode("ascii")
    payload = raw_payload(part)
    if isinstance(payload, str) and transfer_encoding(part) == "base64":
        stripped = payload.translate(_WHITESPACE)
        if len(stripped) % 4 == 0 and _BASE64.fullmatch(stripped):
            return stripped
    return base64.b64encode(payload_bytes(part)).decode("ascii")


_ENCODED: Final = ("base64", "quoted-printable")


def verbatim_body(
    raw: Raw, root: Message, path: Sequence[int], part: Message
) -> tuple[int, int] | None:
    """Where in ``raw`` the attached message ``part`` (at ``path`` below ``root``) is, when
    it is sent exactly as received: neither base64 nor quoted-printable, found, and
    agreeing with the parse (its body's ``(start, end)``); None otherwise."""
    span = entity_span(raw, root, path)
    if span is None or transfer_encoding(part) in _ENCODED:
        return None
    start, end = _body_span(raw, span)
    return (start, end) if _agrees(memoryview(raw)[start:end], subparts(part)) else None


def _message_bytes(leaf: Leaf) -> Raw:
    """An attached message as received; re-serialised when that cannot be found."""
    span = entity_span(leaf.raw, leaf.root, leaf.path)
    if span is None:
        return _serialised(leaf.part)
    start, end = _body_span(leaf.raw, span)
    encoding = transfer_encoding(leaf.part)
    if encoding == "base64":
        return b64decode_lenient(leaf.raw[start:end])
    if encoding == "quoted-printable":
        return quopri.decodestring(leaf.raw[start:end])
    if _agrees(memoryview(leaf.raw)[start:end], subparts(leaf.part)):
        return leaf.raw[start:end]
    return _serialised(leaf.part)


def _body_span(raw: Raw, entity: tuple[int, int]) -> tuple[int, int]:
    """The span of the body of the entity at ``entity`` in ``raw`` (after its headers)."""
    start, end = entity
    return start + body_start(memoryview(raw)[start:end]), end


_SPACE: Final = re.compile(rb"\s*")
_LINE: Final = re.compile(rb"[^\n]*\n")


def _agrees(body: memoryview, parsed: list[Message]) -> bool:
    """Whether raw ``body`` starts with the first header of the parsed message in it
    (read without copying ``body``: only its first 4 KiB)."""
    at = _space_end(body, 0)
    if not parsed:
        return at == len(body)
    first = next(iter(parsed[0].raw_items()), None)
    if first is None:
        return True
    name, value = first
    if bytes(body[at : at + 5]) == b"From " and parsed[0].get_unixfrom():
        line = _LINE.match(body, at)  # the mbox line the parser keeps aside
        at = line.end() if line else at
    head = bytes(body[at : at + len(name) + 1]).lower()
    return head == f"{name}:".lower().encode() and raw_bytes(str(value))[:20] in bytes(body[:4096])


def _space_end(body: memoryview, at: int) -> int:
    """The offset of the first byte at or after ``at`` that ``bytes.strip`` keeps."""
    match = _SPACE.match(body, at)
    return match.end() if match else at


def _serialised(part: Message) -> bytes:
    """The body of a ``message/*`` part: its sub-messages as bytes (CRLF line ends)."""
    try:
        return b"".join(sub.as_bytes(policy=_EML_POLICY) for sub in subparts(part))
    except PARSE_ERRORS:
        raise MessageUnparseable("an attached message cannot be re-serialised") from None


def _generated_name(part: Message, ctype: str, index: int) -> str:
    """A file name for an unnamed part: an attached message's subject, else by type."""
    if ctype == "text/calendar":
        return "invite.ics"
    extension = _EXTENSIONS.get(ctype) or mimetypes.guess_extension(ctype) or ".bin"
    inner = subparts(part)[:1] if ctype in _MESSAGES else []
    if inner and (subject := _safe_name(Headers(inner[0]).text("subject"))):
        return subject + extension
    return f"attachment-{index}{extension}"


def _safe_name(text: str) -> str:
    """``text`` usable as a file name: no path or reserved characters, at most 100 chars."""
    name = " ".join(_UNSAFE_NAME.sub("_", text).split()).strip(" .")
    return name[:_MAX_NAME].rstrip(" .")
