"""The wire form of a payload: the JSON request body, serialised once.

``serialise`` gives ``bytes`` for a payload whose values are all in memory (every small
message). A payload holding ``rawslice.RawData`` attachment data (a large message, see
``relay.translate.elision``) gives a ``StreamedBody`` instead: the JSON around the data
serialised once, the data written from the received message piece by piece when the body
is sent, so a 20 MiB attachment is never copied into the body. Its bytes are exactly the
JSON the plain payload serialises to; a dry run logs it ``abbreviated`` (the data cut to
its first characters without being read further).
"""

from __future__ import annotations

import importlib
import json
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from relay.translate.rawslice import RawData

__all__ = ["DUMPS", "Body", "Dumps", "StreamedBody", "as_bytes", "json_dumps", "serialise"]

Dumps: TypeAlias = Callable[[Any, Callable[[Any], Any]], bytes]
_MARK: Final = "relay-raw-base64"


def _orjson_dumps() -> Dumps | None:
    try:
        orjson = importlib.import_module("orjson")
    except ImportError:
        return None
    dumps: Callable[..., bytes] = orjson.dumps
    return lambda payload, default: dumps(payload, default=default)


def json_dumps(payload: Any, default: Callable[[Any], Any]) -> bytes:
    """The stdlib's rendering of ``payload``, the same bytes as orjson's (the fallback)."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=default)
    return text.encode("utf-8")


DUMPS: Final[Dumps] = _orjson_dumps() or json_dumps
"""orjson's ``dumps`` when installed, else ``json_dumps``."""


@dataclass(frozen=True, slots=True)
class StreamedBody:
    """A request body in pieces: serialised JSON ``bytes`` and attachment data left in
    the received message. Can be sent any number of times (retries)."""

    pieces: tuple[bytes | RawData, ...]

    def __len__(self) -> int:
        """The body's exact length in bytes (its Content-Length)."""
        return sum(len(piece) for piece in self.pieces)

    def chunks(self) -> Iterator[bytes]:
        """The body from its start, in pieces of at most ``rawslice.CHUNK`` bytes of data."""
        for piece in self.pieces:
            if isinstance(piece, bytes):
                yield piece
            else:
                yield from piece.chunks()

    def to_bytes(self) -> bytes:
        """The whole body in memory (the spool, a bounce: one copy of it)."""
        return b"".join(self.chunks())

    def abbreviated(self, shown: int, cut: Callable[[str, int], str]) -> bytes:
        """The body with each piece of attachment data replaced by ``cut(first, length)``:
        its first ``shown`` characters and its length (a dry run's log line; the data
        itself is neither copied nor encoded beyond those characters)."""
        return b"".join(
            piece if isinstance(piece, bytes) else cut(_first(piece, shown), len(piece)).encode()
            for piece in self.pieces
        )


def _first(data: RawData, shown: int) -> str:
    """The first ``shown`` characters of ``data`` (all of it when shorter)."""
    first = b""
    for chunk in data.chunks(max(shown, 64)):
        first += chunk
        if len(first) >= shown:
            break
    return first[:shown].decode("ascii")


Body: TypeAlias = bytes | StreamedBody
"""What a ``Sender`` sends: a serialised request, in memory or streamed."""


def as_bytes(body: Body) -> bytes:
    """``body`` as one ``bytes`` (a ``StreamedBody`` materialised: a copy of it)."""
    return body if isinstance(body, bytes) else body.to_bytes()


def serialise(payload: dict[str, Any], dumps: Dumps = DUMPS) -> Body:
    """The request body: compact UTF-8 JSON, serialised once (module doc).

    ``dumps`` is orjson's when installed (a default dependency; ``json_dumps``, the stdlib
    json, is the fallback): the bytes come out directly: same output, ~30x less CPU, and
    no intermediate ``str``.
    """
    found: list[RawData] = []
    nonce: list[str] = []  # drawn at the first RawData: a small message needs none

    def placeholder(value: Any) -> str:
        if not isinstance(value, RawData):
            raise TypeError(f"{type(value).__name__} is not JSON serializable")
        nonce[:] = nonce or [secrets.token_hex(8)]
        found.append(value)
        return f"{_MARK}-{nonce[0]}-{len(found) - 1}"

    skeleton = dumps(payload, placeholder)
    if not found:
        return skeleton
    return StreamedBody(tuple(_pieces(skeleton, nonce[0], found)))


def _pieces(skeleton: bytes, nonce: str, found: list[RawData]) -> Iterator[bytes | RawData]:
    """``skeleton`` split at its placeholders, each replaced by its data (quotes kept)."""
    start = 0
    for match in re.finditer(rf"{_MARK}-{nonce}-(\d+)".encode("ascii"), skeleton):
        yield skeleton[start : match.start()]
        yield found[int(match.group(1))]
        start = match.end()
    yield skeleton[start:]
