"""Header values decoded as mail clients display them, and the headers forwarded.

Text (``decode_text_header``)
    Work on the raw bytes of the value: unfold first (CRLF before whitespace removed), then
    decode RFC 2047 encoded words. Whitespace between two adjacent encoded words is not
    displayed (RFC 2047 §6.2), and adjacent words in the same charset are joined *before*
    their bytes are decoded, so a character that an encoder split across two words (or a
    word folded in the middle, as Python's own generator does) comes out whole. Encoded
    text may hold raw 8-bit bytes; ``B`` words are base64-decoded leniently; ``Q`` words
    take ``_`` for a space. A word's charset maps as a body charset does
    (``relay.translate.charsets``; an unknown one reads as UTF-8, else windows-1252); a
    word whose charset is no mail charset (punycode, escape codecs) is shown as it is.
    Raw 8-bit bytes outside encoded words are UTF-8 when valid, else the message's own
    charset (its first declared text charset), else windows-1252. The result is one line:
    control characters become spaces; stripped.

Forwarded headers (``forwarded``)
    By allow-list (``_FORWARDED``): In-Reply-To, References, List-*, Auto-Submitted,
    Precedence, Keywords, Comments, Importance, Priority, Sensitivity, Organization,
    Thread-Topic, Thread-Index, Disposition-Notification-To, Return-Receipt-To,
    Feedback-ID, and X-* except transport noise (``_DROPPED_X``). Values decoded, one
    line, empty ones dropped; a repeated header keeps its first value, except Keywords,
    whose values are joined with ", ". Names keep their case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.message import Message
from typing import Final

from relay.translate.charsets import decode_text, refused
from relay.translate.transfer import b64decode_lenient

__all__ = ["Headers", "decode_text_header", "forwarded", "one_line", "raw_bytes", "scrub"]

_SURROGATES: Final = re.compile("[\ud800-\udfff]")
_FOLD: Final = re.compile(rb"\r?\n(?=[ \t])|\r?\n|\r")
_TEXT_FOLD: Final = re.compile(r"\r?\n|\r")
_CONTROLS: Final = re.compile(r"[\x00-\x1f\x7f]+")
_WORD: Final = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
_Q_ESCAPE: Final = re.compile(rb"=([0-9A-Fa-f]{2})")
_SPACE: Final = re.compile(rb"[ \t]*")

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


def scrub(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes) replaced by U+FFFD."""
    if text.isascii():  # the usual case, checked in C: no surrogate can be there
        return text
    return _SURROGATES.sub("\ufffd", text) if _SURROGATES.search(text) else text


def one_line(text: str) -> str:
    """``text`` unfolded, control characters turned into spaces, stripped, JSON-safe."""
    return scrub(_CONTROLS.sub(" ", _TEXT_FOLD.sub("", text))).strip()


def raw_bytes(value: str) -> bytes:
    """The bytes a parsed header value came from (8-bit bytes are surrogate escapes)."""
    return value.encode("utf-8", "surrogateescape")


def decode_text_header(value: str, fallback: str | None = None) -> str:
    """The displayed text of an unstructured header value (see the module doc)."""
    if value.isascii() and "=?" not in value:
        return one_line(value)
    data = _FOLD.sub(b"", raw_bytes(value))
    return one_line("".join(_decoded_pieces(data, fallback)))


def _decoded_pieces(data: bytes, fallback: str | None) -> Iterable[str]:
    """The decoded text of ``data``: plain runs and runs of adjacent encoded words."""
    words = _WordRun()
    position = 0
    for match in _WORD.finditer(data):
        between = data[position : match.start()]
        charset = match.group(1).split(b"*", 1)[0].decode("ascii", "replace").lower()
        decodable = not refused(charset)
        if not (decodable and words.open and _SPACE.fullmatch(between)):
            yield from words.flush()
            yield _plain(between, fallback)
        if decodable:
            yield from words.add(charset, _word_bytes(match.group(2), match.group(3)))
        else:
            yield from words.flush()
            yield _plain(match.group(0), fallback)
        position = match.end()
    yield from words.flush()
    yield _plain(data[position:], fallback)


class _WordRun:
    """Adjacent encoded words: bytes of one charset joined, decoded when the run ends."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.charset = ""
        self.open = False

    def add(self, charset: str, data: bytes) -> Iterable[str]:
        """Append a word's bytes; a change of charset ends the bytes gathered so far."""
        if self.open and charset != self.charset:
            yield from self._decoded()
        self.data += data
        self.charset, self.open = charset, True

    def flush(self) -> Iterable[str]:
        """End the run: its decoded text, if any."""
        if self.open:
            yield from self._decoded()
        self.open = False

    def _decoded(self) -> Iterable[str]:
        yield decode_text(bytes(self.data), self.charset)
        self.data = bytearray()


def _plain(data: bytes, fallback: str | None) -> str:
    """Header text outside encoded words: ASCII, else UTF-8, else ``fallback``'s charset."""
    if data.isascii():
        return data.decode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return decode_text(data, fallback)


def _word_bytes(encoding: bytes, text: bytes) -> bytes:
    """The bytes an encoded word's text stands for."""
    if encoding in b"bB":
        return b64decode_lenient(text)
    return _Q_ESCAPE.sub(lambda m: bytes.fromhex(m.group(1).decode()), text.replace(b"_", b" "))


class Headers:
    """The raw headers of a message, decoded the defect-tolerant way (module doc)."""

    def __init__(self, msg: Message, fallback_charset: str | None = None) -> None:
        self.items: list[tuple[str, str]] = [(n, str(v)) for n, v in msg.raw_items()]
        self.fallback = fallback_charset

    def values(self, name: str) -> list[str]:
        """The raw values of every header called ``name`` (lower case)."""
        return [v for n, v in self.items if n.lower() == name]

    def prefixed(self, prefix: str) -> list[tuple[str, str]]:
        """(name, decoded value) of every header whose name starts with ``prefix``."""
        return [(n, self.decode(v)) for n, v in self.items if n.lower().startswith(prefix)]

    def text(self, name: str) -> str:
        """The decoded first value of header ``name``; "" when absent."""
        values = self.values(name)
        return self.decode(values[0]) if values else ""

    def decode(self, value: str) -> str:
        """``value`` decoded as unstructured text."""
        return decode_text_header(value, self.fallback)


def forwarded(heads: Headers) -> dict[str, str]:
    """The headers to forward (allow-list, see the module doc), decoded, one value each."""
    chosen: dict[str, tuple[str, str]] = {}
    for name, raw in heads.items:
        key = name.lower()
        if not _is_forwarded(key) or not (value := heads.decode(raw)):
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
