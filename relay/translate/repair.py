"""Broken-but-common messages mended the way mainstream mail clients read them.

Before parsing (``mend_raw``), on the top-level header block only:

- a UTF-8 byte-order mark before the headers (Outlook exports, some PHP scripts) is
  removed, and so are blanks before the first header; the stdlib would take the first
  header for body text and lose the rest;
- a junk line inside the header block (no ``Name:`` and not a continuation line) that is
  followed by more header lines up to the blank line is dropped, so the headers after it
  are kept (the stdlib ends the headers at such a line and sends them as body text);
  ``Subject : x`` (space before the colon) is read as ``Subject: x``, and a line after
  one that ends with ``;`` as the parameter whose indent was lost (``name="a.zip"``).
  When the line is followed by non-header text the block really ends there (a message
  without the blank line): nothing changes.

After parsing (``mend_tree``): a multipart whose boundary the stdlib could not read
(``boundary=----=_NextPart_000`` unquoted, with characters a token may not hold) is parsed
again with the boundary as written, when the body holds that delimiter; a part whose header
block the stdlib cut short at such a line is parsed again with its block mended as above.
"""

from __future__ import annotations

import email.errors
import re
from email.message import Message
from typing import Final

from relay.translate.tree import Raw, boundary, content_type, feed, raw_header, raw_payload

__all__ = ["mend_raw", "mend_tree"]

_BOM: Final = b"\xef\xbb\xbf"
_HEADER_SCAN: Final = 256 * 1024
_LINE: Final = re.compile(rb"[^\r\n]*(?:\r\n|\n|\r)?")
_FIELD: Final = re.compile(rb"[\x21-\x39\x3b-\x7e]+:|[ \t]|From ")
_SPACED_FIELD: Final = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]+:")
_BLANK: Final = re.compile(rb"\r?\n|\r")
_CLEAN_HEAD: Final = re.compile(
    rb"(?:[\x21-\x39\x3b-\x7e]+:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)+\r\n"
)
"""A header block of ``name:`` fields (and their continuation lines), CRLF, then the blank
line: what ``mend_raw`` leaves as it is, recognised in one C-speed match."""
_RAW_BOUNDARY: Final = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^\s;"]+))', re.IGNORECASE)


def mend_raw(raw: Raw) -> Raw:
    """``raw`` with a leading BOM removed and its header block mended (module doc)."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    if raw[:1] in (b" ", b"\t") and _FIELD.match(raw.lstrip(b" \t")):
        raw = raw.lstrip(b" \t")  # " From: ..." on the first line
    if _CLEAN_HEAD.match(raw):
        return raw  # the usual case (the line-by-line scan below finds the same)
    scanned = raw[:_HEADER_SCAN]
    for match in _LINE.finditer(scanned):  # lazily: the usual header block is short
        kind = _kind(match.group())
        if kind == "end":
            return raw  # the usual case: every header line was a header line
        if kind != "field":
            return _mended(raw, _LINE.findall(scanned))
    return raw


def _kind(line: bytes) -> str:
    """What a header-block line is: ``end`` (blank), ``field``, ``spaced`` or ``junk``."""
    if not line or _BLANK.fullmatch(line):
        return "end"
    if _SPACED_FIELD.match(line):
        return "spaced"
    return "field" if _FIELD.match(line) else "junk"


def _mended(raw: Raw, lines: list[bytes]) -> Raw:
    """``raw`` with its header block rebuilt from ``lines``, junk lines dropped.

    Unchanged unless the block ends with a blank line and each junk line in it is followed
    by a header line (else the junk is body text: the header block really ends there).
    """
    kept: list[bytes] = []
    for index, line in enumerate(lines):
        kind = _kind(line)
        if kind == "end":
            return b"".join(kept) + raw[sum(map(len, lines[:index])) :]
        if kind == "spaced":
            spaced = _SPACED_FIELD.match(line)
            assert spaced is not None
            kept.append(spaced.group(1) + b":" + line[spaced.end() :])
        elif kind == "field":
            kept.append(line)
        elif kept and kept[-1].rstrip().endswith(b";"):
            kept.append(b" " + line)  # a parameter whose folding lost its indent
        elif index + 1 >= len(lines) or _kind(lines[index + 1]) in ("end", "junk"):
            return raw
    return raw


def mend_tree(msg: Message) -> None:
    """Mend, in place, parts the stdlib misread (module doc)."""
    stack = [msg]
    while stack:
        part = stack.pop()
        if part.get_content_maintype() != "multipart":
            continue
        if not part.is_multipart():
            _reparse(part)
        if part.is_multipart():
            children = raw_payload(part)
            for index, child in enumerate(children):
                if isinstance(child, Message):
                    children[index] = _mended_part(child)
            stack.extend(p for p in children if isinstance(p, Message))


def _mended_part(part: Message) -> Message:
    """``part`` parsed again with its header block mended, when the stdlib cut it short."""
    body = raw_payload(part)
    if not isinstance(body, str) or not any(
        isinstance(d, email.errors.MissingHeaderBodySeparatorDefect) for d in part.defects
    ):
        return part
    head = "".join(f"{name}: {value}\r\n" for name, value in part.raw_items())
    raw = (head + body).encode("utf-8", "surrogateescape")
    mended = mend_raw(raw)
    return part if mended == raw else feed(mended)


def _reparse(part: Message) -> None:
    """Parse ``part``'s text body with the boundary its raw Content-Type spells."""
    match = _RAW_BOUNDARY.search(raw_header(part, "content-type"))
    body = raw_payload(part)
    if not match or not isinstance(body, str):
        return
    written = match.group(1) or match.group(2)
    if written == boundary(part) or f"--{written}" not in body:
        return
    head = f'Content-Type: {content_type(part)}; boundary="{written}"\r\n\r\n'
    fixed = feed((head + body).encode("utf-8", "surrogateescape"))
    if fixed.is_multipart():
        part.set_payload(raw_payload(fixed))
        part.set_param("boundary", written)
