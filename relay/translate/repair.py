"""Broken-but-common messages mended the way mainstream mail clients read them.

Before parsing (``mend_raw``), on the top-level header block only:

- a UTF-8 byte-order mark before the headers (Outlook exports, some PHP scripts) is
  removed; the stdlib would take the first header for body text and lose the rest;
- a junk line inside the header block (no ``Name:`` and not a continuation line) that is
  followed by more header lines up to the blank line is dropped, so the headers after it
  are kept (the stdlib ends the headers at such a line and sends them as body text);
  ``Subject : x`` (space before the colon) is read as ``Subject: x``. When the line is
  followed by non-header text the block really ends there (a message without the blank
  line): nothing changes.

After parsing (``mend_tree``): a multipart whose boundary the stdlib could not read
(``boundary=----=_NextPart_000`` unquoted, with characters a token may not hold) is parsed
again with the boundary as written, when the body holds that delimiter.
"""

from __future__ import annotations

import re
from email.message import Message
from typing import Final

from relay.translate.tree import boundary, feed, raw_header, raw_payload

__all__ = ["mend_raw", "mend_tree"]

_BOM: Final = b"\xef\xbb\xbf"
_HEADER_SCAN: Final = 256 * 1024
_LINE: Final = re.compile(rb"[^\r\n]*(?:\r\n|\n|\r)?")
_FIELD: Final = re.compile(rb"[\x21-\x39\x3b-\x7e]+:|[ \t]|From ")
_SPACED_FIELD: Final = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]+:")
_BLANK: Final = re.compile(rb"\r?\n|\r")
_RAW_BOUNDARY: Final = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^\s;"]+))', re.IGNORECASE)


def mend_raw(raw: bytes) -> bytes:
    """``raw`` with a leading BOM removed and its header block mended (module doc)."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    lines = _LINE.findall(raw[:_HEADER_SCAN])
    for index, line in enumerate(lines):
        if not line or _BLANK.fullmatch(line):
            return raw  # the usual case: every header line was a header line
        if not _FIELD.match(line):
            return _mended(raw, lines, index)
    return raw


def _mended(raw: bytes, lines: list[bytes], first: int) -> bytes:
    """``raw`` with its header block rebuilt from ``lines``, junk lines dropped.

    Unchanged unless every line from ``first`` to the blank line is a header line, a
    spaced field name (``Subject :``) or junk that more header lines follow.
    """
    kept, end = list(lines[:first]), None
    for index in range(first, len(lines)):
        line = lines[index]
        if not line or _BLANK.fullmatch(line):
            end = index
            break
        if _FIELD.match(line):
            kept.append(line)
        elif spaced := _SPACED_FIELD.match(line):
            kept.append(spaced.group(1) + b":" + line[spaced.end() :])
        elif not _FIELD.match(lines[index + 1] if index + 1 < len(lines) else b""):
            return raw  # body text: the header block really ends here
    if end is None:
        return raw
    return b"".join(kept) + raw[sum(map(len, lines[:end])) :]


def mend_tree(msg: Message) -> None:
    """Re-parse, in place, every multipart whose boundary the stdlib misread (module doc)."""
    stack = [msg]
    while stack:
        part = stack.pop()
        if part.get_content_maintype() != "multipart":
            continue
        if not part.is_multipart():
            _reparse(part)
        if part.is_multipart():
            stack.extend(p for p in raw_payload(part) if isinstance(p, Message))


def _reparse(part: Message) -> None:
    """Parse ``part``'s text body with the boundary its raw Content-Type spells."""
    match = _RAW_BOUNDARY.search(raw_header(part, "content-type"))
    body = raw_payload(part)
    if not match or not isinstance(body, str):
        return
    written = match.group(1) or match.group(2)
    if written == boundary(part) or f"--{written}" not in body:
        return
    head = f'Content-Type: multipart/mixed; boundary="{written}"\r\n\r\n'
    fixed = feed((head + body).encode("utf-8", "surrogateescape"))
    if fixed.is_multipart():
        part.set_payload(raw_payload(fixed))
        part.set_param("boundary", written)

