"""Attachment data left in the received message instead of copied out of it.

A ``RawData`` is an attachment's ``data`` (base64 without line breaks) by reference to a
span ``raw[start:end]`` of the message as received; ``relay.translate.wire`` writes it
into the request body piece by piece, so a 20 MiB attachment in a large message never
becomes a Python ``str`` or a second ``bytes``. Two kinds:

- ``RawBase64``: the span is base64 lines (each ``[A-Za-z0-9+/=]...\\r\\n``), whose value
  is those bytes without their CR/LF (``relay.translate.elision`` makes one for a large,
  valid base64 leaf);
- ``RawEncoded``: the span is the bytes themselves (an attached message sent as received,
  ``relay.translate.attachments.verbatim_body``), base64-encoded as it is written.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Final

from relay.translate.tree import Raw

__all__ = ["CHUNK", "RawBase64", "RawData", "RawEncoded"]

CHUNK: Final = 64 * 1024
"""Bytes of the message read per piece of a streamed attachment (at most)."""

_LINE_ENDS: Final = b"\r\n"


class RawData:
    """Base64 data by reference to ``raw[start:end]``, not yet copied.

    Plain classes, not dataclasses: orjson would serialise a dataclass as an object
    instead of handing it to ``relay.translate.wire``'s ``default``.
    """

    __slots__ = ("end", "raw", "start")

    def __init__(self, raw: Raw, start: int, end: int) -> None:
        self.raw, self.start, self.end = raw, start, end

    def __len__(self) -> int:
        """Characters of the base64 value."""
        raise NotImplementedError

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The base64 value in pieces of at most ``size`` bytes."""
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The whole value as one ``bytes`` (a copy of the attachment)."""
        return b"".join(self.chunks())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} chars at {self.start}..{self.end})"


class RawBase64(RawData):
    """``raw[start:end]`` (base64 lines ending in CRLF) without CR/LF."""

    __slots__ = ()

    def __len__(self) -> int:
        """Characters of the value: the slice without its CR and LF bytes."""
        breaks = self.raw.count(b"\r", self.start, self.end)
        return self.end - self.start - breaks - self.raw.count(b"\n", self.start, self.end)

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The value in pieces of at most ``size`` bytes (fewer once CR/LF are removed)."""
        view = memoryview(self.raw)
        for start in range(self.start, self.end, size):
            yield bytes(view[start : min(start + size, self.end)]).translate(None, _LINE_ENDS)


class RawEncoded(RawData):
    """``raw[start:end]`` base64-encoded (no line breaks), piece by piece."""

    __slots__ = ()

    def __len__(self) -> int:
        """Characters of the value: 4 per started 3 bytes."""
        return 4 * -(-(self.end - self.start) // 3)

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The value in pieces of at most ``size`` bytes; each encodes a multiple of 3
        bytes (but the last), so the pieces join into the encoding of the whole."""
        view = memoryview(self.raw)
        step = max(3, size // 4 * 3)
        for start in range(self.start, self.end, step):
            yield base64.b64encode(view[start : min(start + step, self.end)])
