"""httpx-aiohttp's transport, with network errors classified as httpx's own transport would,
and the response read whole in one call.

``httpx_aiohttp`` maps every ``aiohttp.ClientConnectionError`` (connection refused, reset,
server disconnected) to ``httpx.ConnectTimeout``; the relay would then answer "timed out"
(451 4.4.2) when the API is in fact unreachable (451 4.4.1). Only aiohttp's timeouts stay
timeouts here; every other connection failure becomes ``httpx.ConnectError``.

A request with its body in memory (every small message) or streamed with its
``Content-Length`` (a large message, ``relay.translate.wire.StreamedBody``: aiohttp sends
it as it is read, with that length, never chunked nor copied whole) is sent without a
proxy by aiohttp directly and its answer read with one ``read()``: httpx-aiohttp wraps
the answer in a stream that httpx then reads in 16 KiB chunks through two layers of
iterators, ~5 % of the relay's CPU per small message. Anything else (a stream of unknown
length, a proxy) takes httpx-aiohttp's own way. Imported only when the transport is chosen (see
``relay.delivery.transport``).

Through a proxy, aiohttp sends the proxy's headers (``Proxy-Authorization``) only on the
``CONNECT`` of an https URL; a plain http URL, forwarded by absolute URI, gets them here on
the request itself (what httpx's own transport does), or the proxy would answer 407.
"""

from __future__ import annotations

from typing import cast

import httpx
from aiohttp import ClientSession, ClientTimeout
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions

__all__ = ["RelayAiohttpTransport"]


class RelayAiohttpTransport(AiohttpTransport):
    """``AiohttpTransport`` that tells timeouts from unreachable servers."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.proxy is not None and request.url.scheme == "http":
            for name, value in self.proxy.headers.items():
                request.headers.setdefault(name, value)
        try:
            return await self._exchange(request)
        except httpx.ConnectTimeout as exc:
            if isinstance(exc.__cause__, TimeoutError):  # aiohttp's timeouts subclass it
                raise
            raise httpx.ConnectError(str(exc) or type(exc.__cause__).__name__) from exc.__cause__

    async def _exchange(self, request: httpx.Request) -> httpx.Response:
        if self.proxy is not None:
            return await super().handle_async_request(request)
        body: bytes | httpx.AsyncByteStream
        try:
            body = request.content
        except httpx.RequestNotRead:  # streamed: its Content-Length is set (AhaSendClient)
            if "content-length" not in request.headers:
                return await super().handle_async_request(request)
            body = cast(httpx.AsyncByteStream, request.stream)
        return await self._read_whole(request, body)

    async def _read_whole(
        self, request: httpx.Request, body: bytes | httpx.AsyncByteStream
    ) -> httpx.Response:
        """``request`` sent by aiohttp, the answer read in one go. ``body`` is in memory
        or a stream of known length (aiohttp sends it as read, not chunked)."""
        if not isinstance(self.client, ClientSession):
            self.client = self.get_client()
        timeout = request.extensions.get("timeout", {})
        with map_aiohttp_exceptions():
            async with self.client.request(
                request.method, str(request.url), headers=request.headers, data=body or None,
                allow_redirects=False, auto_decompress=False, compress=False,
                timeout=ClientTimeout(sock_connect=timeout.get("connect"),
                                      sock_read=timeout.get("read"), connect=timeout.get("pool")),
                server_hostname=request.extensions.get("sni_hostname"),
            ) as answer:  # fmt: skip
                content = await answer.read()
        extensions = {"http_version": b"HTTP/1.1"}
        if answer.reason:
            extensions["reason_phrase"] = answer.reason.encode()
        return httpx.Response(
            answer.status, headers=answer.raw_headers, content=content, request=request,
            extensions=extensions,
        )  # fmt: skip
