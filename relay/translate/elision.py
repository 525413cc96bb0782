"""Parsing a large message without turning its big base64 attachments into Python text.

The stdlib feed parser keeps a base64 leaf as one ``str`` per line, then joins them: a
20 MiB attachment costs ~50 MiB at that moment, and ``relay.translate.attachments`` then
copies it again. ``parse`` (for a message over ``ELIDE.message`` bytes, 256 KiB) first finds
the runs of base64 lines (``_RUN``, at least ``ELIDE.run`` bytes, 64 KiB, each starting a
line) and feeds
the parser the message with each run replaced by one placeholder line: a token (letters
and digits, so a line the parser treats exactly as it treats a base64 line: not a header,
not a boundary) with a per-call random nonce and the run's index, then CRLF. The token
plus CRLF stands for the run, the token alone for the run without its last CRLF (which
the parser drops before a boundary).

After the parse each placeholder is put back (``_settle``) so that the tree is the one the
plain parse gives, except in two kinds of parts whose data is then left in ``raw``
(``Parsed.lazy``, by ``id`` of the part):

- a leaf that is safe to leave by reference (a ``rawslice.RawBase64``): its payload is
  exactly one placeholder, it is base64 (``Content-Transfer-Encoding``), its base64 is
  valid (what ``relay.translate.attachments`` passes on as it is), it is neither
  ``message/*`` nor multipart nor a leaf that may be read as body text
  (``parts.read_as_text``: an inline text/plain, text/html or AMP leaf; a text attachment
  such as a CSV report is safe), it has no parse defect, and no ``message/*`` is above it
  (its bytes are used whole);
- an attached message sent as received (``attachments.verbatim_body``; a
  ``rawslice.RawEncoded`` of its bytes), not inside another one nor in signed content
  whose signature part comes first (``parts.keeps_places``): its
  own tree keeps its placeholders, since nothing reads it but its headers (the fallback,
  re-serialising it, is only taken when ``verbatim_body`` finds no such bytes).

Smaller messages take the plain parse: same tree, same CPU as before.
"""

from __future__ import annotations

import email.feedparser
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Final

from relay.translate.attachments import verbatim_body
from relay.translate.parts import keeps_places, read_as_text
from relay.translate.rawslice import RawBase64, RawData, RawEncoded
from relay.translate.tree import (
    POLICY,
    Raw,
    content_type,
    feed,
    raw_header,
    raw_payload,
    single_part_head,
    subparts,
)

__all__ = ["ELIDE", "ElideAt", "Parsed", "parse"]


@dataclass(frozen=True, slots=True)
class ElideAt:
    """When runs are left out: in a message over ``message`` bytes, the runs of at least
    ``run`` bytes."""

    message: int
    run: int


ELIDE: Final = ElideAt(message=256 * 1024, run=64 * 1024)
_RUN: Final = re.compile(rb"^(?:[A-Za-z0-9+/=]{1,998}\r\n)++", re.MULTILINE)
"""Possessive (``++``): a plain ``+`` keeps a backtracking frame per line, 1.5x the
message size for a 20 MiB run (measured); this one scans in constant memory."""
_FEED_CHUNK: Final = 8192
_PREFIX: Final = "RelayElided"
_CRLF: Final = "\r\n"


@dataclass(frozen=True, slots=True)
class Parsed:
    """A parsed tree and its leaves whose base64 stays in the raw message (by ``id``)."""

    msg: Message
    lazy: dict[int, RawData] = field(default_factory=dict)


def parse(raw: Raw, elide: ElideAt | None = ELIDE) -> Parsed:
    """The tree of ``raw`` (``tree.feed``'s), large base64 leaves by reference (module doc).

    ``elide`` None parses every message the plain way (for tests comparing both).
    """
    runs = _runs(raw, elide.run) if elide is not None and len(raw) > elide.message else []
    if not runs:
        return Parsed(feed(raw))
    elided = _Elided(raw, runs)
    msg = elided.single_part() or elided.fed()
    return Parsed(msg, elided.settle(msg))


def _runs(raw: Raw, least: int) -> list[tuple[int, int]]:
    """The (start, end) of each run of base64 lines at least ``least`` bytes long."""
    return [m.span() for m in _RUN.finditer(raw) if m.end() - m.start() >= least]


class _Elided:
    """``raw`` with its runs replaced by placeholder lines, and the way back."""

    def __init__(self, raw: Raw, runs: list[tuple[int, int]]) -> None:
        self._raw, self._runs = raw, runs
        self._token = f"{_PREFIX}{secrets.token_hex(8)}N"
        self._find = re.compile(re.escape(self._token) + r"(\d+)")

    def fed(self) -> Message:
        """The feed parser's tree of the elided message (fed in chunks, never copied)."""
        parser = email.feedparser.BytesFeedParser(policy=POLICY)
        for piece in self._pieces(0):
            parser.feed(piece)
        return parser.close()

    def single_part(self) -> Message | None:
        """``tree.feed``'s single-part shortcut with the elided body, or None."""
        found = single_part_head(self._raw)
        if found is None or self._runs[0][0] < found[1]:
            return None
        msg, body = found
        text = b"".join(self._pieces(body)).decode("ascii", "surrogateescape")
        msg.set_payload(text)
        return msg

    def _pieces(self, offset: int) -> Iterator[bytes]:
        """The elided message from ``offset``: slices of ``raw`` and placeholder lines."""
        view = memoryview(self._raw)
        for index, (start, end) in enumerate([*self._runs, (len(self._raw), len(self._raw))]):
            for chunk in range(offset, start, _FEED_CHUNK):
                yield bytes(view[chunk : min(chunk + _FEED_CHUNK, start)])
            if end > start:
                yield f"{self._token}{index}{_CRLF}".encode("ascii")
            offset = end

    def settle(self, msg: Message) -> dict[int, RawData]:
        """Every placeholder of ``msg`` put back, but in the safe leaves (module doc).

        Below a ``message/*`` part nothing is left by reference (such a part is sent whole:
        as received, or re-serialised from its restored tree); below a ``multipart/signed``
        whose signature part comes before signed content, no attached message is
        (``Content``'s paths skip the signature parts, so there its bytes are looked for at
        another place on the plain parse)."""
        lazy: dict[int, RawData] = {}
        stack: list[tuple[Message, tuple[int, ...], bool, bool]] = [(msg, (), False, False)]
        while stack:
            part, path, in_message, in_signed = stack.pop()
            self._restore_edges(part)
            found = None if in_message or in_signed else self._verbatim(msg, path, part)
            if found is not None:
                lazy[id(part)] = found  # its own tree keeps its placeholders (unread)
                continue
            if part.is_multipart():
                ctype = content_type(part)
                moved = ctype == "multipart/signed" and not keeps_places(part)
                below = (in_message or ctype.startswith("message/"), in_signed or moved)
                stack.extend((sub, (*path, i), *below) for i, sub in enumerate(subparts(part)))
                continue
            leaf = None if in_message else self._lazy(part)
            if leaf is not None:
                lazy[id(part)] = leaf
            elif isinstance(payload := raw_payload(part), str) and self._token in payload:
                part.set_payload(self._find.sub(self._run_text, payload))
        return lazy

    def _lazy(self, part: Message) -> RawData | None:
        """The leaf's data by reference when the leaf is safe to leave so, else None."""
        payload = raw_payload(part)
        if not isinstance(payload, str) or part.defects:
            return None
        match = self._find.fullmatch(payload.removesuffix(_CRLF))
        if match is None or raw_header(part, "content-transfer-encoding").lower() != "base64":
            return None
        ctype = content_type(part)
        if ctype.startswith(("message/", "multipart/")) or read_as_text(part, ctype):
            return None
        start, end = self._runs[int(match.group(1))]
        return RawBase64(self._raw, start, end) if _valid(self._raw, start, end) else None

    def _verbatim(self, root: Message, path: tuple[int, ...], part: Message) -> RawEncoded | None:
        """An attached message's data as its bytes in ``raw``, when it is sent as received
        (``attachments.verbatim_body``), else None."""
        if not content_type(part).startswith("message/") or not part.is_multipart():
            return None
        found = verbatim_body(self._raw, root, path, part)
        return None if found is None else RawEncoded(self._raw, *found)

    def _restore_edges(self, part: Message) -> None:
        """A multipart's preamble and epilogue with their placeholders put back."""
        for name in ("preamble", "epilogue"):
            text = getattr(part, name, None)
            if isinstance(text, str) and self._token in text:
                setattr(part, name, self._find.sub(self._run_text, text))

    def _run_text(self, match: re.Match[str]) -> str:
        """A placeholder's run as the parser would have read it (its last CRLF apart)."""
        start, end = self._runs[int(match.group(1))]
        return self._raw[start : end - len(_CRLF)].decode("ascii")


def _valid(raw: Raw, start: int, end: int) -> bool:
    """Whether the run, without CR/LF, is base64 that is passed on as it is: a length
    that is a multiple of 4, ``=`` only as its last one or two characters."""
    breaks = raw.count(b"\n", start, end)
    if (end - start - 2 * breaks) % 4:
        return False
    pad = raw.find(b"=", start, end)
    if pad < 0:
        return True
    tail = bytes(raw[pad:end]) if end - pad <= 8 else b""
    return tail.translate(None, b"\r\n") in (b"=", b"==")
