"""AdminServer on its own: a failing metrics source, a silent client, HEAD."""

from __future__ import annotations

import asyncio

from relay.ops.admin import AdminServer


async def fetch(port: int, request: bytes, *, half_close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    if half_close:
        writer.write_eof()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    return response


def broken() -> str:
    raise RuntimeError("spool gone")


async def test_a_failing_metrics_source_is_a_500_not_a_crash() -> None:
    admin = AdminServer("127.0.0.1", 0, render=broken, ready=lambda: (True, "ready"))
    await admin.start()
    try:
        response = await fetch(admin.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
        healthy = await fetch(admin.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert healthy.startswith(b"HTTP/1.1 200 OK\r\n")
        assert healthy.endswith(b"\r\n\r\nok\n")
    finally:
        await admin.stop()


async def test_readyz_reports_the_reason() -> None:
    admin = AdminServer("127.0.0.1", 0, render=str, ready=lambda: (False, "not ready: x"))
    await admin.start()
    try:
        response = await fetch(admin.port, b"GET /readyz HTTP/1.0\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert response.endswith(b"\r\n\r\nnot ready: x\n")
    finally:
        await admin.stop()


async def test_a_client_that_closes_early_is_dropped_quietly() -> None:
    admin = AdminServer("127.0.0.1", 0, render=str, ready=lambda: (True, "ready"))
    await admin.start()
    try:
        assert await fetch(admin.port, b"GET /metr", half_close=True) == b""
    finally:
        await admin.stop()


async def test_metrics_and_readyz_are_refreshed_first_healthz_is_not() -> None:
    reads: list[int] = []

    async def refresh() -> None:
        reads.append(len(reads))

    admin = AdminServer(
        "127.0.0.1", 0, render=lambda: f"reads {len(reads)}\n",
        ready=lambda: (True, f"ready after {len(reads)} reads"), refresh=refresh,
    )  # fmt: skip
    await admin.start()
    try:
        assert (await fetch(admin.port, b"GET /metrics HTTP/1.0\r\n\r\n")).endswith(b"reads 1\n")
        assert (await fetch(admin.port, b"GET /healthz HTTP/1.0\r\n\r\n")).endswith(b"ok\n")
        ready = await fetch(admin.port, b"GET /readyz HTTP/1.0\r\n\r\n")
        assert ready.endswith(b"ready after 2 reads\n")
    finally:
        await admin.stop()
