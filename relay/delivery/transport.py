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
library read it (``relay.config`` does). So with TLS: one context (``trust_context``:
``SSL_CERT_FILE``/``SSL_CERT_DIR`` as ``relay.config`` read them, else certifi's bundle)
verifies the API's certificate and an ``https://`` proxy's, with either transport, and
both are built with ``trust_env=False`` (httpx would read ``SSL_CERT_FILE`` itself, and
its proxy connections would trust the system's store besides certifi's, aiohttp's not).

Errors keep httpx's types: the aiohttp transport maps its exceptions to
``httpx.TimeoutException`` / ``httpx.TransportError`` subclasses (timeouts and unreachable
servers kept apart), which ``relay.delivery.api`` already turns into transient replies.
"""

from __future__ import annotations

import importlib
import ssl
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Literal

import httpx

from relay.delivery.proxy import ProxyURL
from relay.errors import ConfigError

__all__ = ["TransportChoice", "build_transport", "trust_context"]

TransportChoice = Literal["auto", "httpx", "aiohttp"]


def build_transport(
    choice: str,
    max_connections: int,
    importer: Callable[[str], ModuleType] = importlib.import_module,
    proxy: ProxyURL | None = None,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncBaseTransport:
    """The transport ``choice`` names, through ``proxy`` (None: direct connections).

    ``verify`` checks the API's certificate and an https proxy's: the settings'
    ``api_trust``, or True (certifi's bundle) or False (no check); ``importer`` imports
    ``relay.delivery.aiohttp_transport`` (a seam for tests).
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    if isinstance(verify, ssl.SSLContext):
        context = verify
    else:
        context = httpx.create_ssl_context(verify=verify, trust_env=False)
    via = proxy.to_httpx(context) if proxy is not None else None

    def own() -> httpx.AsyncHTTPTransport:
        return httpx.AsyncHTTPTransport(limits=limits, proxy=via, verify=context, trust_env=False)

    if choice == "httpx":
        return own()
    try:
        module = importer("relay.delivery.aiohttp_transport")
    except ImportError:
        if choice == "aiohttp":
            raise ConfigError(
                "AHASEND_API_TRANSPORT: httpx-aiohttp is not installed (pip install httpx-aiohttp)"
            ) from None
        return own()
    transport: httpx.AsyncBaseTransport = module.RelayAiohttpTransport(
        limits=limits, proxy=via, verify=context, trust_env=False
    )
    return transport


def trust_context(cafile: Path | None = None, capath: Path | None = None) -> ssl.SSLContext:
    """A client context trusting the CAs in ``cafile`` and/or ``capath`` (SSL_CERT_FILE,
    SSL_CERT_DIR: OpenSSL's file of PEM certificates, directory of hashed names), else
    certifi's bundle, what httpx and aiohttp trust by default. ValueError names the
    variable when one cannot be used."""
    if capath is not None and not capath.is_dir():
        raise ValueError(f"SSL_CERT_DIR: {capath} is not a directory")
    if cafile is None and capath is None:
        return httpx.create_ssl_context(trust_env=False)
    try:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    except ssl.SSLError:
        raise ValueError(f"SSL_CERT_FILE: {cafile} holds no PEM certificate") from None
    except OSError as exc:
        raise ValueError(f"SSL_CERT_FILE: cannot read {cafile}: {exc.strerror or exc}") from None
