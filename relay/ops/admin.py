"""A tiny HTTP/1.1 server for operators: ``/metrics``, ``/healthz`` and ``/readyz``.

It runs on the relay's own event loop (``asyncio.start_server``), answers GET and HEAD
only, one request per connection (``Connection: close``), and reads at most a few
kilobytes of request head, so it cannot be used to exhaust the relay. It listens on
``RELAY_METRICS_HOST`` (loopback by default) and only when ``RELAY_METRICS_PORT`` is set.

- ``/healthz``: 200 while the process serves this request (liveness);
- ``/readyz``: 200 when ``ready()`` says so, else 503, with the reason in the body;
- ``/metrics``: ``render()`` in the Prometheus text format.

Before ``/metrics`` and ``/readyz`` the server awaits ``refresh()`` (when given), so that
sources that need I/O (the spool's stats) are read at scrape time, off the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from relay.ops.log import get_logger

__all__ = ["AdminListenError", "AdminServer", "Readiness"]

log = get_logger("relay.ops.admin")
Readiness = Callable[[], tuple[bool, str]]
"""Returns (ready, reason): the reason is shown in the /readyz body."""

_MAX_HEAD = 8192
_READ_TIMEOUT = 5.0
_PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class AdminListenError(OSError):
    """The metrics port could not be bound; ``str()`` names the address."""


class AdminServer:
    """Serves the three endpoints on ``host:port``. ``start`` → ``stop``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        render: Callable[[], str],
        ready: Readiness,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.host, self._port = host, port
        self._render, self._ready, self._refresh = render, ready, refresh
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None, "not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self._port, limit=_MAX_HEAD
            )
        except OSError as exc:
            why = exc.strerror or str(exc)
            message = f"cannot serve metrics on {self.host}:{self._port}: {why}"
            raise AdminListenError(message) from exc
        log.info("admin_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
        except asyncio.LimitOverrunError:
            await _write(writer, 400, "text/plain", b"request head too large\n")
            return
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            writer.close()
            return
        status, ctype, body = await self._respond(head)
        await _write(writer, status, ctype, body.encode(), head_only=head.startswith(b"HEAD "))

    async def _respond(self, head: bytes) -> tuple[int, str, str]:
        """(status, content type, body) for a request ``head``."""
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, "text/plain", "bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, "text/plain", "method not allowed\n"
        try:
            if self._refresh is not None and target in (b"/metrics", b"/readyz"):
                await self._refresh()
            return self._route(target)
        except Exception:
            log.exception("admin_error", target=target.decode("latin-1"))
            return 500, "text/plain", "internal error\n"

    def _route(self, target: bytes) -> tuple[int, str, str]:
        if target == b"/metrics":
            return 200, _PROMETHEUS_TYPE, self._render()
        if target == b"/healthz":
            return 200, "text/plain", "ok\n"
        if target == b"/readyz":
            ready, reason = self._ready()
            return (200 if ready else 503), "text/plain", reason + "\n"
        return 404, "text/plain", "not found\n"


async def _write(
    writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes, *, head_only: bool = False
) -> None:
    """Send the response (headers only for HEAD) and close the connection."""
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(ConnectionError):
        writer.write(head.encode("ascii") + (b"" if head_only else body))
        await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
