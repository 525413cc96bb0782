"""A lean stand-in for the AhaSend API: any request, any path, answers a canned 202.

Built to set the upstream limit in the benchmark, so it does as little as possible: an
``asyncio.Protocol`` speaking HTTP/1.1 with keep-alive, which counts request bodies
(``Content-Length`` or chunked) without keeping them and answers every POST with ``202``
and a fixed ``CreateMessageResponse``-shaped JSON body (every other method gets ``200``).
``--delay-ms`` holds each answer back to model the network to the real API.

Run as its own process: ``python -m bench.standin --port 0`` prints ``{"port": N}`` on
one line once it listens, then serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Final, cast

from bench.loops import new_event_loop
from bench.serving import serve_until_signalled

_BODY: Final = json.dumps(
    {
        "object": "list",
        "data": [
            {
                "object": "message",
                "id": "00000000-0000-4000-8000-000000000202",
                "recipient": {"email": "bench@example.com"},
                "status": "queued",
            }
        ],
    },
    separators=(",", ":"),
).encode()


def _response(status: bytes) -> bytes:
    head = (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n"
    )
    return head + _BODY


_ACCEPTED: Final = _response(b"202 Accepted")
_OK: Final = _response(b"200 OK")


class _HTTP(asyncio.Protocol):
    """One keep-alive connection: head, then a body counted and dropped, then the answer."""

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._buf = bytearray()
        self._remaining = -1  # body bytes still to skip; -1 while reading a head
        self._chunked = False
        self._answer = _ACCEPTED
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while self._step():
            pass

    def _step(self) -> bool:
        """Consume what the buffer allows; True when progress was made and more may follow."""
        if self._remaining < 0:
            return self._read_head()
        if self._chunked:
            return self._read_chunk()
        take = min(self._remaining, len(self._buf))
        del self._buf[:take]
        self._remaining -= take
        if self._remaining == 0:
            self._finish()
            return True
        return False

    def _read_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._buf[:end]).lower()
        del self._buf[: end + 4]
        self._answer = _ACCEPTED if head.startswith(b"post") else _OK
        self._chunked = b"transfer-encoding: chunked" in head
        self._remaining = 0 if self._chunked else _content_length(head)
        if not self._chunked and self._remaining == 0:
            self._finish()
        return True

    def _read_chunk(self) -> bool:
        """Skip one chunk (``size CRLF data CRLF``); the zero chunk ends the body."""
        if self._remaining > 0:
            take = min(self._remaining, len(self._buf))
            del self._buf[:take]
            self._remaining -= take
            return self._remaining == 0
        end = self._buf.find(b"\r\n")
        if end < 0:
            return False
        line = bytes(self._buf[:end]).split(b";")[0].strip()
        if not line:  # the CRLF closing the previous chunk
            del self._buf[: end + 2]
            return True
        size = int(line, 16)
        if size == 0:
            if len(self._buf) < end + 4:
                return False
            del self._buf[: end + 4]
            self._finish()
            return True
        del self._buf[: end + 2]
        self._remaining = size
        return True

    def _finish(self) -> None:
        self._remaining, self._chunked = -1, False
        answer, transport = self._answer, self._transport
        assert transport is not None
        if self._delay > 0:
            asyncio.get_running_loop().call_later(self._delay, _write, transport, answer)
        else:
            transport.write(answer)


def _write(transport: asyncio.Transport, data: bytes) -> None:
    if not transport.is_closing():
        transport.write(data)


def _content_length(head: bytes) -> int:
    marker = b"\r\ncontent-length:"
    start = head.find(marker)
    if start < 0:
        return 0
    end = head.find(b"\r\n", start + len(marker))
    return int(head[start + len(marker) : end if end >= 0 else None])


async def serve(host: str, port: int, delay: float) -> None:
    """Listen, print the bound port as JSON on stdout, serve until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _HTTP(delay), host, port, backlog=1024)
    await serve_until_signalled(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.standin", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    args = parser.parse_args(argv)
    loop = new_event_loop(args.loop)
    try:
        loop.run_until_complete(serve(args.host, args.port, args.delay_ms / 1000))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
