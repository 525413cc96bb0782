"""The bytes of an attached message exactly as they were received.

A ``message/rfc822`` part is sent as an ``.eml`` file byte for byte, so that a DKIM
signature inside a forwarded message still verifies: re-serialising the parsed tree would
refold headers, respace them and rewrite line ends. ``entity_span(raw, root, path)`` finds the
entity at ``path`` (child indices from the root) in ``raw`` by splitting it the way the
stdlib parser does (headers end at the first blank or non-header line; a delimiter line is
``--boundary`` then optional ``--`` and blanks; the line break before a delimiter belongs to
it). The caller checks the result against the parsed tree and falls back to re-serialising
when they disagree, so a message the stdlib read differently is never sent wrong. It works
on spans of one ``memoryview``: a 20 MiB forwarded message is not copied to be found.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.message import Message
from typing import Final

from relay.translate.tree import Raw, boundary, content_type, subparts

__all__ = ["body_start", "entity_span"]

_LINE: Final = re.compile(rb"[^\r\n]*(?:\r\n|\n|\r)?")
_FIELD: Final = re.compile(rb"[\x21-\x39\x3b-\x7e]*:|[ \t]|From ")
_BLANK: Final = re.compile(rb"\r?\n|\r")


def entity_span(raw: Raw, root: Message, path: Sequence[int]) -> tuple[int, int] | None:
    """Where the entity at ``path`` below ``root`` (parsed from ``raw``) is in ``raw``:
    ``(start, end)``, or None. Nothing of ``raw`` is copied."""
    view = memoryview(raw)
    part, start, end = root, 0, len(raw)
    for index in path:
        body = start + body_start(view[start:end])
        if content_type(part).startswith("message/"):
            children = [(body, end)]
        else:
            children = [(body + s, body + e) for s, e in _children(view[body:end], boundary(part))]
        parts = subparts(part)
        if index >= len(children) or index >= len(parts):
            return None
        part, (start, end) = parts[index], children[index]
    return start, end


def body_start(entity: Raw | memoryview) -> int:
    """Where the body of a raw entity starts (the stdlib's end-of-headers rule)."""
    offset = 0
    for number, line in enumerate(_LINE.finditer(entity)):
        text = line.group()
        if not text:
            break
        if _BLANK.fullmatch(text):
            return offset + len(text)
        if not _FIELD.match(text) or (number == 0 and text.startswith(b" ")):
            break
        offset += len(text)
    return offset


def _children(body: memoryview, boundary: str | None) -> list[tuple[int, int]]:
    """The spans of the raw sub-entities of a multipart body split at ``boundary``'s
    delimiter lines."""
    if not boundary:
        return []
    delimiter = re.compile(
        rb"(?:\r\n|\n|\r|^)--" + re.escape(boundary.encode("utf-8", "surrogateescape"))
        + rb"(--)?[ \t]*(?:\r\n|\n|\r|$)",
        re.MULTILINE,
    )  # fmt: skip
    children: list[tuple[int, int]] = []
    start: int | None = None
    for match in delimiter.finditer(body):
        if start is not None:
            children.append((start, match.start()))
        if match.group(1):
            return children
        start = match.end()
    if start is not None:
        children.append((start, len(body)))
    return children
