"""Translate one received message into ``CreateConversationMessageRequest`` bodies.

Pure: bytes and the SMTP envelope in, JSON-ready dicts out; no I/O, no logging, no clock.
``translate`` raises only ``MessageUnparseable`` or ``InvalidHeader`` (both
``PermanentError``); the stdlib's parse errors on defective input are caught where they can
happen and replaced by a fallback, so broken real-world mail still yields a request.

Addresses
    ``from`` is the From header's mailbox; with several mailboxes, the Sender header's (else
    the first); without a usable one, the envelope sender. Neither: ``MessageUnparseable``.
    Delivery follows the envelope. ``to`` / ``cc`` are the To / Cc mailboxes (groups
    included) that are envelope recipients, in header order with the header's display
    name; ``bcc`` is every other envelope recipient, in envelope order. Matching is on the
    lower-cased addr-spec; the envelope's spelling is sent. A Bcc header is never used.
    When no recipient is in To but some are in Cc, the Cc list becomes ``to``. When no
    recipient is in To or Cc (``undisclosed-recipients:;``, an alias list expanded by the
    client), there is ONE REQUEST PER ENVELOPE RECIPIENT, each ``to: [{"email": rcpt}]``
    without cc/bcc, so no recipient learns another's address. A recipient without a
    domain cannot be sent through the API: ``MessageUnparseable``.

Bodies
    The first text/plain, text/html and text/x-amp-html leaves that are not attachments
    (no ``Content-Disposition: attachment``, no file name) are ``text_content``,
    ``html_content`` and ``amp_content``, wherever they sit in the multipart tree. Text is
    decoded with the declared charset (escape and IDNA codecs refused), else UTF-8, else
    Latin-1, and line ends become ``\\n``; raw 8-bit header bytes are read the same way.
    Empty bodies are omitted; when the message has no non-empty text or HTML body
    (only attachments, an empty body) ``text_content`` is ``"\\n"`` (an empty line), since
    the API refuses a request with neither. A multipart part whose boundary is missing is
    read as text/plain, so its content is not lost.

Attachments
    Every other leaf, including further text parts and attached messages (``message/*``,
    sent as the re-serialised message, ``.eml`` for rfc822). ``file_name`` comes from the
    Content-Disposition filename or Content-Type name (RFC 2231 and RFC 2047 decoded, path
    stripped), else the attached message's Subject, else ``attachment-<n><ext>``. A part
    that is not ``Content-Disposition: attachment`` and has a Content-ID is sent inline
    with the id in angle brackets; an attachment-disposition part is sent as
    ``content_disposition: "attachment"`` (its Content-ID dropped, so it stays
    downloadable). Base64 parts whose payload is valid base64 are passed on as they are.

Headers (``headers``)
    Forwarded, by allow-list (see ``_FORWARDED``): In-Reply-To, References, List-*,
    Auto-Submitted, Precedence, Keywords, Comments, Importance, Priority, Sensitivity,
    Organization, Thread-Topic, Thread-Index, Disposition-Notification-To,
    Return-Receipt-To, Feedback-ID, and X-* except transport noise (``_DROPPED_X``:
    X-Original-To, X-Envelope-*, X-Received, X-Spam-*, X-MS-Exchange-*, ...). Everything
    else is dropped, notably Date (set by AhaSend when it sends, which may be scheduled),
    Message-ID (AhaSend generates one), Received, DKIM/ARC, Content-*, addresses, Subject
    and every ``ahasend-*`` header (see ``relay.translate.directives``). Values are decoded and
    unfolded to one line; empty values are dropped. A repeated header keeps its first
    value, except Keywords, whose values are joined with ", ". Names keep their case.

Every string is valid for JSON: undecodable bytes become U+FFFD, never lone surrogates.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import email
import email.errors
import email.feedparser
import email.policy
import email.utils
import mimetypes
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, Final

from relay.errors import MessageUnparseable
from relay.translate.directives import PREFIX, directive_fields
from relay.translate.hostile import harden

__all__ = ["EMPTY_BODY", "Translated", "translate", "usable_recipient"]

EMPTY_BODY: Final = "\n"
"""``text_content`` of a message with no text or HTML body: the API requires one of them."""

_POLICY: Final = email.policy.default
_FEED_CHUNK: Final = 8192
_EML_POLICY: Final = email.policy.default.clone(linesep="\r\n", refold_source="none")
# What the stdlib raises on defective input (UnicodeError and HeaderParseError included).
_PARSE_ERRORS: Final = (
    email.errors.MessageError,
    ValueError,
    LookupError,
    IndexError,
    TypeError,
    AttributeError,
    RecursionError,
)
_NOT_MAIL_CHARSETS: Final = frozenset({"punycode", "idna", "unicode-escape", "raw-unicode-escape"})
_NOT_MAIL_WORD: Final = re.compile(r"=\?(?:punycode|idna|(?:raw[-_])?unicode[-_]escape)\b", re.I)
_SURROGATES: Final = re.compile("[\ud800-\udfff]")
_FOLD: Final = re.compile(r"\r?\n|\r")
_CONTROLS: Final = re.compile(r"[\x00-\x1f\x7f]+")
_WHITESPACE: Final = str.maketrans("", "", " \t\r\n\v\f")
_BASE64: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_CONTENT_TYPE: Final = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_SIMPLE_MAILBOX: Final = re.compile(
    rf"[ \t]*(?:((?:{_ATOM}[ \t]+)*{_ATOM})?[ \t]*<({_ADDR_SPEC})>|({_ADDR_SPEC}))[ \t]*"
)
_UNQUOTED_NAME: Final = re.compile(r"(?:^|;)\s*(?:file)?name\s*=\s*([^\s\";][^;]*)", re.IGNORECASE)
_UNSAFE_NAME: Final = re.compile(r'[\\/:*?"<>|]+')
_MAX_NAME = 100

_BODY_FIELDS: Final = {
    "text/plain": "text_content",
    "text/html": "html_content",
    "text/x-amp-html": "amp_content",
}
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
_FORWARDED: Final = frozenset(
    {
        "in-reply-to",
        "references",
        "auto-submitted",
        "precedence",
        "keywords",
        "comments",
        "importance",
        "priority",
        "sensitivity",
        "organization",
        "thread-topic",
        "thread-index",
        "disposition-notification-to",
        "return-receipt-to",
        "feedback-id",
    }
)
_DROPPED_X: Final = (
    "x-original-to",
    "x-envelope-",
    "x-delivered-to",
    "x-rcpt-to",
    "x-apparently-to",
    "x-received",
    "x-originating-ip",
    "x-authentication-warning",
    "x-spam-",
    "x-virus-",
    "x-ms-exchange-",
    "x-google-",
    "x-gm-",
    "x-forwarded-",
    "x-return-path",
    "x-originalarrivaltime",
    "x-mozilla-",
    "x-pop3-",
    "x-uidl",
    "x-sieve",
    "x-mdaemon-",
    "x-ironport-",
)
_JOINED: Final = frozenset({"keywords"})


@dataclass(frozen=True, slots=True)
class Translated:
    """The requests for one message: normally one; one per recipient when all are hidden."""

    payloads: list[dict[str, Any]]
    message_id: str | None
    attachment_count: int


def translate(raw: bytes, mail_from: str, rcpt_tos: Sequence[str]) -> Translated:
    """The API requests for message ``raw`` sent by ``mail_from`` to ``rcpt_tos``.

    Raises ``MessageUnparseable`` (no usable sender or recipient, unreadable message) or
    ``InvalidHeader`` (an ``ahasend-*`` header has an invalid value); nothing else.
    """
    msg = _parse(raw)
    heads = _Headers(msg)
    recipients = _envelope(rcpt_tos)
    base: dict[str, Any] = {"from": _sender(heads, mail_from), "subject": heads.text("subject")}
    if reply_to := heads.mailbox("reply-to"):
        base["reply_to"] = reply_to
    content = _Content.of(msg)
    base.update(content.fields())
    if forwarded := _forwarded(heads.items):
        base["headers"] = forwarded
    base.update(directive_fields(heads.prefixed(PREFIX)))
    payloads = [harden(payload) for payload in _addressed(base, heads, recipients)]
    return Translated(payloads, heads.text("message-id") or None, len(content.attachments))


def _parse(raw: bytes) -> Message:
    """The message tree of ``raw``; ``MessageUnparseable`` if even the parser gives up."""
    try:
        return _feed(raw)
    except _PARSE_ERRORS as exc:
        raise MessageUnparseable(
            f"MIME structure cannot be parsed ({type(exc).__name__})"
        ) from None


def _feed(raw: bytes) -> Message:
    """``email.message_from_bytes(raw, policy=_POLICY)``, fed in chunks.

    Same tree (the feed parser is chunk-agnostic and ASCII/surrogateescape decodes byte by
    byte), but without the whole-message ``str`` and the ``StringIO`` that
    ``message_from_bytes`` builds (4 bytes per character): for a 20 MiB message the parse
    peaks ~100 MiB lower (measured by the benchmark, bench/README.md).
    """
    parser = email.feedparser.BytesFeedParser(policy=_POLICY)
    for start in range(0, len(raw), _FEED_CHUNK):
        parser.feed(raw[start : start + _FEED_CHUNK])
    return parser.close()


# -- strings ---------------------------------------------------------------------------


def _scrub(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes) replaced by U+FFFD."""
    return _SURROGATES.sub("\ufffd", text) if _SURROGATES.search(text) else text


def _fix_8bit(value: str) -> str:
    """A header value whose raw 8-bit bytes (surrogate-escaped) are decoded as UTF-8 or Latin-1."""
    if not _SURROGATES.search(value):
        return value
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeError:
        return _scrub(value)
    try:
        return data.decode("utf-8")
    except UnicodeError:
        return data.decode("latin-1")


def _one_line(text: str) -> str:
    """``text`` unfolded, control characters turned into spaces, stripped, JSON-safe."""
    return _scrub(_CONTROLS.sub(" ", _FOLD.sub("", text))).strip()


def _decoded(raw: str) -> str:
    """The text of an unstructured header value: 8-bit and RFC 2047 decoded, one line."""
    value = _fix_8bit(raw)
    if "=?" in value and not _NOT_MAIL_WORD.search(value):
        with contextlib.suppress(*_PARSE_ERRORS):
            value = str(_POLICY.header_factory("x-text", value))
    return _one_line(value)


def _decode_text(data: bytes, charset: str | None) -> str:
    """``data`` decoded with ``charset``, else UTF-8, else Latin-1; line ends become \\n."""
    for candidate in (_text_codec(charset), "utf-8"):
        if candidate:
            try:
                return _scrub(data.decode(candidate).replace("\r\n", "\n"))
            except (LookupError, ValueError):  # binary codecs; undecodable data
                continue
    return _scrub(data.decode("latin-1").replace("\r\n", "\n"))


def _text_codec(charset: str | None) -> str | None:
    """The codec for a declared ``charset``; None when unknown or not a mail charset.

    Escape and IDNA codecs are refused: they are no mail charsets, may produce lone
    surrogates, and punycode decodes in quadratic time (a cheap denial of service).
    """
    try:
        name = codecs.lookup(charset).name if charset else None
    except (LookupError, ValueError):  # unknown; or a NUL in the name
        return None
    return None if name in _NOT_MAIL_CHARSETS else name


# -- headers ---------------------------------------------------------------------------

Mailbox = tuple[str, str]
"""(display name, addr-spec), both decoded."""


class _Headers:
    """The raw headers of a message, with defect-tolerant decoding."""

    def __init__(self, msg: Message) -> None:
        self.items: list[tuple[str, str]] = [(n, str(v)) for n, v in msg.raw_items()]

    def values(self, name: str) -> list[str]:
        """The raw values of every header called ``name`` (lower case)."""
        return [v for n, v in self.items if n.lower() == name]

    def prefixed(self, prefix: str) -> list[tuple[str, str]]:
        """(name, decoded value) of every header whose name starts with ``prefix``."""
        return [(n, _decoded(v)) for n, v in self.items if n.lower().startswith(prefix)]

    def text(self, name: str) -> str:
        """The decoded first value of header ``name``; "" when absent."""
        values = self.values(name)
        return _decoded(values[0]) if values else ""

    def mailboxes(self, name: str) -> list[Mailbox]:
        """The usable mailboxes of every header ``name``, group members included."""
        found = [box for raw in self.values(name) for box in _mailboxes(raw)]
        return [(n, a) for n, a in found if _usable(a)]

    def mailbox(self, name: str) -> dict[str, str] | None:
        """The first usable mailbox of header ``name`` as an API ``Address``."""
        boxes = self.mailboxes(name)
        return _address(*boxes[0]) if boxes else None


def _mailboxes(raw: str) -> list[Mailbox]:
    """The mailboxes of an address-list value; ``getaddresses`` when the parser fails."""
    value = _fix_8bit(raw)
    if (simple := _simple_mailboxes(value)) is not None:
        return simple
    try:
        parsed = _POLICY.header_factory("to", value)
        pairs = [(a.display_name, a.addr_spec) for a in parsed.addresses]
    except _PARSE_ERRORS:
        pairs = _legacy_mailboxes(value)
    return [(_one_line(n), _one_line(a)) for n, a in pairs]


def _legacy_mailboxes(value: str) -> list[Mailbox]:
    """``email.utils.getaddresses`` on ``value``; no mailbox when it fails too."""
    try:
        found = email.utils.getaddresses([_FOLD.sub("", value)])
    except _PARSE_ERRORS:
        return []
    return [(_decoded(name), addr) for name, addr in found]


def _simple_mailboxes(value: str) -> list[Mailbox] | None:
    """The mailboxes of a plain list (``a@x, Name <b@y>``) without the full parser; else None.

    The stdlib's address parser costs ~0.1 ms per header; this covers the common forms
    (ASCII dot-atoms, unquoted names) and gives the same result (tested against it).
    """
    if "=?" in value:  # encoded words look like atoms but need decoding
        return None
    found = []
    for item in _FOLD.sub("", value).split(","):
        match = _SIMPLE_MAILBOX.fullmatch(item)
        if match is None:
            return None
        name, angled, bare = match.groups()
        found.append((" ".join((name or "").split()), angled or bare))
    return found


def _usable(addr: str) -> bool:
    """Whether ``addr`` looks like local@domain (the API checks the rest)."""
    local, at, domain = addr.rpartition("@")
    return bool(at and local and domain) and " " not in domain


def _address(name: str, addr: str) -> dict[str, str]:
    """An API ``Address``; ``name`` omitted when empty."""
    return {"email": addr, "name": name} if name else {"email": addr}


def _envelope_address(value: str) -> str:
    """An SMTP envelope path without brackets and spaces, JSON-safe."""
    return _one_line(value).strip("<> ")


def _sender(heads: _Headers, mail_from: str) -> dict[str, str]:
    """``from``: From's mailbox (Sender's if From has several), else the envelope sender."""
    authors = heads.mailboxes("from")
    if len(authors) > 1:
        return heads.mailbox("sender") or _address(*authors[0])
    if authors:
        return _address(*authors[0])
    envelope = _envelope_address(mail_from)
    if not _usable(envelope):
        raise MessageUnparseable("no sender address: no usable From and an empty envelope sender")
    return {"email": envelope}


def usable_recipient(rcpt: str) -> bool:
    """Whether the envelope recipient ``rcpt`` is one ``translate`` can send to (local@domain)."""
    return _usable(_envelope_address(rcpt))


def _envelope(rcpt_tos: Sequence[str]) -> list[str]:
    """The envelope recipients, cleaned and deduplicated (case-insensitively), in order."""
    seen: dict[str, str] = {}
    for rcpt in map(_envelope_address, rcpt_tos):
        if not _usable(rcpt):
            raise MessageUnparseable(f"recipient {rcpt!r} is not a usable address")
        seen.setdefault(rcpt.lower(), rcpt)
    if not seen:
        raise MessageUnparseable("no recipients")
    return list(seen.values())


def _visible(boxes: Iterable[Mailbox], pending: dict[str, str]) -> list[dict[str, str]]:
    """The mailboxes of ``boxes`` still in ``pending`` (lower -> envelope), taken out of it."""
    found = []
    for name, addr in boxes:
        rcpt = pending.pop(addr.lower(), None)
        if rcpt is not None:
            found.append(_address(name, rcpt))
    return found


def _addressed(base: dict[str, Any], heads: _Headers, rcpts: list[str]) -> list[dict[str, Any]]:
    """``base`` addressed to the envelope recipients (see the module doc for the rules)."""
    pending = {r.lower(): r for r in rcpts}
    to = _visible(heads.mailboxes("to"), pending)
    cc = _visible(heads.mailboxes("cc"), pending)
    bcc = [{"email": r} for r in pending.values()]
    if not to and not cc:
        return [{**base, "to": [{"email": r}]} for r in rcpts]
    if not to:
        to, cc = cc, []
    payload = {**base, "to": to}
    payload.update((k, v) for k, v in (("cc", cc), ("bcc", bcc)) if v)
    return [payload]


def _forwarded(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The headers to forward (allow-list, see the module doc), decoded, one value each."""
    chosen: dict[str, tuple[str, str]] = {}
    for name, raw in items:
        key = name.lower()
        if not _is_forwarded(key) or not (value := _decoded(raw)):
            continue
        if key not in chosen:
            chosen[key] = (name, value)
        elif key in _JOINED:
            chosen[key] = (chosen[key][0], f"{chosen[key][1]}, {value}")
    return dict(chosen.values())


def _is_forwarded(key: str) -> bool:
    """Whether a header named ``key`` (lower case) is forwarded to the recipient."""
    if key in _FORWARDED or key.startswith("list-"):
        return True
    return key.startswith("x-") and not key.startswith(_DROPPED_X)


# -- parts -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Content:
    """The bodies and attachments found in a message tree."""

    bodies: dict[str, str] = field(default_factory=dict)
    attachments: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, msg: Message) -> _Content:
        """Bodies and attachments of ``msg`` (see the module doc)."""
        content = cls()
        for part, ctype in _leaves(msg):
            content.add(part, ctype)
        return content

    def add(self, part: Message, ctype: str) -> None:
        """File leaf ``part`` of type ``ctype`` as a body or an attachment."""
        slot = _BODY_FIELDS.get(ctype)
        if slot and slot not in self.bodies and not _is_attachment(part):
            self.bodies[slot] = _decode_text(_payload_bytes(part), _charset(part))
        else:
            self.attachments.append(_attachment(part, ctype, len(self.attachments) + 1))

    def fields(self) -> dict[str, Any]:
        """The request fields: non-empty bodies (or ``EMPTY_BODY``) and ``attachments``."""
        found: dict[str, Any] = {k: v for k, v in self.bodies.items() if v}
        if not (found.get("text_content") or found.get("html_content")):
            found["text_content"] = EMPTY_BODY
        if self.attachments:
            found["attachments"] = self.attachments
        return found


def _leaves(msg: Message) -> Iterator[tuple[Message, str]]:
    """(part, content type) of every leaf in document order; ``message/*`` parts are leaves."""
    stack = [msg]
    while stack:
        part = stack.pop()
        ctype = _content_type(part)
        if ctype.startswith("multipart/"):
            if part.is_multipart():
                stack.extend(reversed(_subparts(part)))
                continue
            ctype = "text/plain"  # no usable boundary: keep the text rather than lose it
        yield part, ctype


def _subparts(part: Message) -> list[Message]:
    """The sub-messages of a part whose payload is a list (``part.is_multipart()``)."""
    return [sub for sub in _raw_payload(part) or () if isinstance(sub, Message)]


def _raw_payload(part: Message) -> Any:
    """The payload as the parser left it: a list of parts or the transfer-encoded text.

    ``part.get_payload()`` is avoided on text: for 8-bit content it decodes with the
    declared charset, which can raise or, with ``charset=punycode``, take quadratic time.
    """
    return getattr(part, "_payload", None)


def _content_type(part: Message) -> str:
    """The part's ``type/subtype`` (lower case); application/octet-stream if unreadable."""
    try:
        ctype = part.get_content_type()
    except _PARSE_ERRORS:
        return "application/octet-stream"
    return ctype if _CONTENT_TYPE.fullmatch(ctype) else "application/octet-stream"


def _raw_header(part: Message, name: str) -> str:
    """The first raw value of the part's header ``name`` (lower case), one line; "" if none."""
    for key, value in part.raw_items():
        if key.lower() == name:
            return _one_line(str(value))
    return ""


def _disposition(part: Message) -> str | None:
    """The part's Content-Disposition type (lower case), or None."""
    try:
        return part.get_content_disposition()
    except _PARSE_ERRORS:
        return _raw_header(part, "content-disposition").split(";", 1)[0].strip().lower() or None


def _charset(part: Message) -> str | None:
    """The part's declared charset, or None."""
    try:
        return part.get_content_charset()
    except _PARSE_ERRORS:
        return None


def _file_name(part: Message) -> str:
    """The part's file name (RFC 2231 / RFC 2047 decoded, without a path); "" if none.

    An unquoted value is read from the raw header, where the stdlib parser would cut
    ``name=My file.pdf`` at the space or give up on ``name==?utf-8?b?...?=``.
    """
    name = _unquoted_name(part)
    if not name:
        try:
            name = part.get_filename() or ""
        except _PARSE_ERRORS:
            name = ""
    name = _decoded(name) if "=?" in name else _one_line(_fix_8bit(name))
    return re.split(r"[\\/]", name)[-1].strip()


def _unquoted_name(part: Message) -> str:
    """An unquoted, non-RFC 2231 ``filename=`` / ``name=`` value of the raw headers, or ""."""
    for header in ("content-disposition", "content-type"):
        if match := _UNQUOTED_NAME.search(_raw_header(part, header)):
            return match.group(1).strip()
    return ""


def _is_attachment(part: Message) -> bool:
    """Whether a text part is an attachment rather than a body."""
    return _disposition(part) == "attachment" or bool(_file_name(part))


def _content_id(part: Message) -> str | None:
    """The part's Content-ID in angle brackets, or None."""
    inner = _raw_header(part, "content-id").strip().strip("<>").strip()
    return f"<{inner}>" if inner else None


def _payload_bytes(part: Message) -> bytes:
    """The decoded content of a leaf part; its raw text when decoding fails."""
    try:
        data = part.get_payload(decode=True)
    except _PARSE_ERRORS:
        data = None
    if isinstance(data, bytes):
        return data
    raw = _raw_payload(part)
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def _attachment(part: Message, ctype: str, index: int) -> dict[str, Any]:
    """The API ``Attachment`` for leaf ``part``; ``index`` (1-based) names unnamed ones."""
    attachment: dict[str, Any] = {
        "base64": True,
        "data": _base64_data(part),
        "content_type": ctype,
        "file_name": _file_name(part) or _generated_name(part, ctype, index),
    }
    disposition, cid = _disposition(part), _content_id(part)
    if cid and disposition != "attachment":
        attachment.update(content_id=cid, content_disposition="inline")
    elif disposition == "attachment":
        attachment["content_disposition"] = "attachment"
    return attachment


def _base64_data(part: Message) -> str:
    """The part's content as base64 without line breaks, reusing valid base64 payloads."""
    if part.is_multipart():
        return base64.b64encode(_serialised(part)).decode("ascii")
    payload = _raw_payload(part)
    if isinstance(payload, str) and _raw_header(part, "content-transfer-encoding").lower() == (
        "base64"
    ):
        stripped = payload.translate(_WHITESPACE)
        if len(stripped) % 4 == 0 and _BASE64.fullmatch(stripped):
            return stripped
    return base64.b64encode(_payload_bytes(part)).decode("ascii")


def _serialised(part: Message) -> bytes:
    """The body of a ``message/*`` part: its sub-messages as bytes (CRLF line ends)."""
    try:
        return b"".join(sub.as_bytes(policy=_EML_POLICY) for sub in _subparts(part))
    except _PARSE_ERRORS:
        raise MessageUnparseable("an attached message cannot be re-serialised") from None


def _generated_name(part: Message, ctype: str, index: int) -> str:
    """A file name for an unnamed part: an attached message's subject, else by type."""
    extension = _EXTENSIONS.get(ctype) or mimetypes.guess_extension(ctype) or ".bin"
    inner = _subparts(part)[:1] if ctype in ("message/rfc822", "message/global") else []
    if inner and (subject := _safe_name(_Headers(inner[0]).text("subject"))):
        return subject + extension
    return f"attachment-{index}{extension}"


def _safe_name(text: str) -> str:
    """``text`` usable as a file name: no path or reserved characters, at most 100 chars."""
    name = " ".join(_UNSAFE_NAME.sub("_", text).split()).strip(" .")
    return name[:_MAX_NAME].rstrip(" .")
