"""The bytes of an attached message exactly as they were received.

A ``message/rfc822`` part is sent as an ``.eml`` file byte for byte, so that a DKIM
signature inside a forwarded message still verifies: re-serialising the parsed tree would
refold headers, respace them and rewrite line ends. ``entity_bytes(raw, path)`` finds the
entity at ``path`` (child indices from the root) in ``raw`` by splitting it the way the
stdlib parser does (headers end at the first blank or non-header line; a delimiter line is
``--boundary`` then optional ``--`` and blanks; the line break before a delimiter belongs to
it). The caller checks the result against the parsed tree and falls back to re-serialising
when they disagree, so a message the stdlib read differently is never sent wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.message import Message
from typing import Final

from relay.translate.tree import Raw, boundary, content_type, subparts

__all__ = ["body_bytes", "entity_bytes"]

_LINE: Final = re.compile(rb"[^\r\n]*(?:\r\n|\n|\r)?")
_FIELD: Final = re.compile(rb"[\x21-\x39\x3b-\x7e]*:|[ \t]|From ")
_BLANK: Final = re.compile(rb"\r?\n|\r")


def entity_bytes(raw: Raw, root: Message, path: Sequence[int]) -> Raw | None:
    """The raw bytes of the entity at ``path`` below ``root`` (parsed from ``raw``), or None."""
    part, data = root, raw
    for index in path:
        body = data[body_start(data) :]
        if content_type(part).startswith("message/"):
            children: list[Raw] = [body]
        else:
            children = _children(body, boundary(part))
        parts = subparts(part)
        if index >= len(children) or index >= len(parts):
            return None
        part, data = parts[index], children[index]
    return data


def body_bytes(entity: Raw) -> Raw:
    """The body of a raw entity: what follows its header block."""
    return entity[body_start(entity) :]


def body_start(entity: Raw) -> int:
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


def _children(body: Raw, boundary: str | None) -> list[Raw]:
    """The raw sub-entities of a multipart body split at ``boundary``'s delimiter lines."""
    if not boundary:
        return []
    delimiter = re.compile(
        rb"(?:\r\n|\n|\r|^)--" + re.escape(boundary.encode("utf-8", "surrogateescape"))
        + rb"(--)?[ \t]*(?:\r\n|\n|\r|$)",
        re.MULTILINE,
    )  # fmt: skip
    children: list[Raw] = []
    start: int | None = None
    for match in delimiter.finditer(body):
        if start is not None:
            children.append(body[start : match.start()])
        if match.group(1):
            return children
        start = match.end()
    if start is not None:
        children.append(body[start:])
    return children
