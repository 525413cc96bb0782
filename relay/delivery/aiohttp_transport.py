"""httpx-aiohttp's transport, with network errors classified as httpx's own transport would.

``httpx_aiohttp`` maps every ``aiohttp.ClientConnectionError`` (connection refused, reset,
server disconnected) to ``httpx.ConnectTimeout``; the relay would then answer "timed out"
(451 4.4.2) when the API is in fact unreachable (451 4.4.1). Only aiohttp's timeouts stay
timeouts here; every other connection failure becomes ``httpx.ConnectError``. Imported
only when the transport is chosen (see ``relay.delivery.transport``).

Through a proxy, aiohttp sends the proxy's headers (``Proxy-Authorization``) only on the
``CONNECT`` of an https URL; a plain http URL, forwarded by absolute URI, gets them here on
the request itself (what httpx's own transport does), or the proxy would answer 407.
"""

from __future__ import annotations

import httpx
from httpx_aiohttp import AiohttpTransport

__all__ = ["RelayAiohttpTransport"]


class RelayAiohttpTransport(AiohttpTransport):
    """``AiohttpTransport`` that tells timeouts from unreachable servers."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.proxy is not None and request.url.scheme == "http":
            for name, value in self.proxy.headers.items():
                request.headers.setdefault(name, value)
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectTimeout as exc:
            if isinstance(exc.__cause__, TimeoutError):  # aiohttp's timeouts subclass it
                raise
            raise httpx.ConnectError(str(exc) or type(exc.__cause__).__name__) from exc.__cause__
