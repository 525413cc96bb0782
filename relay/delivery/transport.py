"""Which HTTP transport carries the AhaSend client's requests (the client stays httpx).

``AHASEND_API_TRANSPORT`` picks it: ``httpx`` (httpx's own, httpcore), ``aiohttp``
(``relay.delivery.aiohttp_transport``: httpx-aiohttp's transport, i.e. aiohttp's connection pool
and HTTP/1.1 parser behind httpx's API; fails with ``ConfigError`` when not installed),
or ``auto`` (aiohttp when importable, else httpx's own). The benchmark
(bench/README.md) measured httpx's own transport at ~2.6 ms CPU per request with 50
requests in flight against ~0.26 ms for the aiohttp one (encode/httpx#3215), so the
relay prefers it; it is a default dependency, httpx's own transport the fallback where
it is not importable.

Both carry the egress proxy ``relay.delivery.proxy`` chose (``AHASEND_API_PROXY``, else the
environment's ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``/``NO_PROXY``), passed explicitly:
httpx ignores the environment once a transport is given, and the relay never lets a
library read it (``relay.config`` does).

Errors keep httpx's types: the aiohttp transport maps its exceptions to
``httpx.TimeoutException`` / ``httpx.TransportError`` subclasses (timeouts and unreachable
servers kept apart), which ``relay.delivery.api`` already turns into transient replies.
"""

from __future__ import annotations

import importlib
import ssl
from collections.abc import Callable
from types import ModuleType
from typing import Literal

import httpx

from relay.delivery.proxy import ProxyURL
from relay.errors import ConfigError

__all__ = ["TransportChoice", "build_transport"]

TransportChoice = Literal["auto", "httpx", "aiohttp"]


def build_transport(
    choice: str,
    max_connections: int,
    importer: Callable[[str], ModuleType] = importlib.import_module,
    proxy: ProxyURL | None = None,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncBaseTransport:
    """The transport ``choice`` names, through ``proxy`` (None: direct connections).

    ``importer`` imports ``relay.delivery.aiohttp_transport`` and ``verify`` is how the
    API's certificate is checked (the system's CAs; a test CA's context): seams for tests.
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    via = proxy.to_httpx() if proxy is not None else None
    if choice == "httpx":
        return httpx.AsyncHTTPTransport(limits=limits, proxy=via, verify=verify)
    try:
        module = importer("relay.delivery.aiohttp_transport")
    except ImportError:
        if choice == "aiohttp":
            raise ConfigError(
                "AHASEND_API_TRANSPORT: httpx-aiohttp is not installed (pip install httpx-aiohttp)"
            ) from None
        return httpx.AsyncHTTPTransport(limits=limits, proxy=via, verify=verify)
    transport: httpx.AsyncBaseTransport = module.RelayAiohttpTransport(
        limits=limits, proxy=via, verify=verify
    )
    return transport
