"""AHASEND_API_TRANSPORT: the aiohttp-backed transport keeps the client's contract.

The AhaSendClient runs on the transport against a real HTTP server on loopback (a tiny
asyncio server answering what each test scripts), so statuses, bodies, timeouts and
refused connections go through aiohttp for real.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType

import httpx
import pytest

from relay.delivery.api import AhaSendClient
from relay.delivery.transport import build_transport
from relay.errors import ConfigError
from relay.smtp import replies as r

pytest.importorskip("httpx_aiohttp")
ACCOUNT = "7b0ef6a2-6a4c-4b1e-9d4e-2a6f0b8c1d11"
QUEUED = {"object": "list", "data": [{"object": "message", "id": "<m1@aha.test>",
          "recipient": {"email": "a@x.test"}, "status": "queued"}]}  # fmt: skip


def _missing(name: str) -> ModuleType:
    raise ImportError(name)


def test_httpx_choice_keeps_httpx_own_transport() -> None:
    assert type(build_transport("httpx", 10)) is httpx.AsyncHTTPTransport


def test_auto_without_httpx_aiohttp_falls_back_to_httpx() -> None:
    assert type(build_transport("auto", 10, importer=_missing)) is httpx.AsyncHTTPTransport


def test_aiohttp_choice_without_httpx_aiohttp_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="AHASEND_API_TRANSPORT"):
        build_transport("aiohttp", 10, importer=_missing)


@asynccontextmanager
async def http_server(status: int, body: object, hang: bool = False) -> AsyncIterator[str]:
    """A loopback server answering every request with ``status`` and JSON ``body``."""
    seen: list[bytes] = []
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await answer(reader, writer)
        finally:
            writer.close()
            handlers.discard(task)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        seen.append(await reader.readexactly(length))
        if hang:
            await asyncio.sleep(5)
        payload = json.dumps(body).encode()
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (status, len(payload), payload))  # fmt: skip
        await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def client(base_url: str, timeout: float = 2.0) -> AhaSendClient:
    return AhaSendClient(base_url=base_url, api_key="aha-sk-k", account_id=ACCOUNT,
                         timeout=timeout, transport=build_transport("aiohttp", 4))  # fmt: skip


async def test_202_becomes_a_delivery() -> None:
    async with http_server(202, QUEUED) as url:
        api = client(url)
        try:
            delivery = await api.send(b'{"subject":"x"}', "key-1")
        finally:
            await api.aclose()
    assert delivery.status == 202
    assert delivery.message_ids == ("<m1@aha.test>",)


async def test_error_status_maps_like_httpx_own_transport() -> None:
    async with http_server(503, {"message": "down"}) as url:
        api = client(url)
        try:
            with pytest.raises(r.UpstreamServerError, match="503 down"):
                await api.send(b"{}", "key-2")
        finally:
            await api.aclose()


async def test_refused_connection_is_unreachable_not_a_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = client(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(r.UpstreamUnreachable):
            await api.send(b"{}", "key-3")
    finally:
        await api.aclose()


async def test_silent_server_is_a_timeout() -> None:
    async with http_server(202, QUEUED, hang=True) as url:
        api = client(url, timeout=0.3)
        try:
            with pytest.raises(r.UpstreamTimeout):
                await api.send(b"{}", "key-4")
        finally:
            await api.aclose()


def test_transport_is_an_httpx_transport() -> None:
    assert isinstance(build_transport("auto", 4), httpx.AsyncBaseTransport)
