"""Base64 attachment data left in the received message instead of copied out of it.

A ``RawBase64`` is an attachment's ``data`` by reference: the lines ``raw[start:end]`` of
the message as received (each ``[A-Za-z0-9+/=]...\\r\\n``), whose value is those bytes
without their CR/LF. ``relay.translate.elision`` makes one for a large, valid base64 leaf;
``relay.translate.wire`` writes it into the request body piece by piece, so the 20 MiB of
base64 in a large message never becomes a Python ``str`` or a second ``bytes``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from relay.translate.tree import Raw

__all__ = ["CHUNK", "RawBase64"]

CHUNK: Final = 64 * 1024
"""Bytes of the message read per piece of a streamed attachment (at most)."""

_LINE_ENDS: Final = b"\r\n"


class RawBase64:
    """``raw[start:end]`` (base64 lines ending in CRLF) without CR/LF, not yet copied.

    A plain class, not a dataclass: orjson would serialise a dataclass as an object
    instead of handing it to ``relay.translate.wire``'s ``default``.
    """

    __slots__ = ("end", "raw", "start")

    def __init__(self, raw: Raw, start: int, end: int) -> None:
        self.raw, self.start, self.end = raw, start, end

    def __len__(self) -> int:
        """Characters of the value: the slice without its CR and LF bytes."""
        breaks = self.raw.count(b"\r", self.start, self.end)
        return self.end - self.start - breaks - self.raw.count(b"\n", self.start, self.end)

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The value in pieces of at most ``size`` bytes (fewer once CR/LF are removed)."""
        view = memoryview(self.raw)
        for start in range(self.start, self.end, size):
            yield bytes(view[start : min(start + size, self.end)]).translate(None, _LINE_ENDS)

    def to_bytes(self) -> bytes:
        """The whole value as one ``bytes`` (a copy of the attachment)."""
        return b"".join(self.chunks())

    def __repr__(self) -> str:
        return f"RawBase64({len(self)} chars at {self.start}..{self.end})"
