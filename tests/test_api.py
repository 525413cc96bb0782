"""AhaSendClient: HTTP statuses and network failures become the right RelayError.

Unit tests of the one module, with httpx's MockTransport injected as the transport.
End-to-end coverage of the same table against a real HTTP server is in test_e2e_*.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from relay.delivery.api import USER_AGENT, AhaSendClient
from relay.smtp import replies as r

ACCOUNT = "7b0ef6a2-6a4c-4b1e-9d4e-2a6f0b8c1d11"


def client_for(handler: Any) -> AhaSendClient:
    return AhaSendClient(
        base_url="https://api.test", api_key="aha-sk-k", account_id=ACCOUNT,
        timeout=1.0, transport=httpx.MockTransport(handler),
    )  # fmt: skip


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return handler


def item(status: str, email: str, error: str | None = None) -> dict[str, Any]:
    mid = f"<{email}.id@ahasend.test>" if status != "error" else None
    return {"object": "message", "id": mid, "recipient": {"email": email, "name": ""},
            "status": status, "error": error}  # fmt: skip


async def test_request_shape() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"object": "list", "data": [item("queued", "a@x.test")]})

    client = client_for(handler)
    delivery = await client.send(b'{"k":1}', "key-1")
    await client.aclose()
    request = seen[0]
    assert request.method == "POST"
    assert request.url.path == f"/v2/accounts/{ACCOUNT}/messages/conversation"
    assert request.headers["authorization"] == "Bearer aha-sk-k"
    assert request.headers["idempotency-key"] == "key-1"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.content == b'{"k":1}'
    assert request.headers["content-length"] == "7"
    assert request.headers["host"] == "api.test"
    assert delivery.message_ids == ("<a@x.test.id@ahasend.test>",)


async def test_send_keeps_a_path_in_the_base_url_as_the_client_does() -> None:
    """``send`` bypasses the AsyncClient: its URL is still the client's merge of the two."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"object": "list", "data": [item("queued", "a@x.test")]})

    client = AhaSendClient(
        base_url="https://gw.test/ahasend", api_key="aha-sk-k", account_id=ACCOUNT,
        transport=httpx.MockTransport(handler),
    )  # fmt: skip
    await client.send(b"{}", "key-1")
    await client.ping()
    await client.aclose()
    assert [str(r.url) for r in seen] == [
        f"https://gw.test/ahasend/v2/accounts/{ACCOUNT}/messages/conversation",
        "https://gw.test/ahasend/v2/ping",
    ]
    assert seen[0].headers["authorization"] == seen[1].headers["authorization"]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, r.UpstreamRejected),
        (401, r.RelayMisconfigured),
        (403, r.UpstreamForbidden),
        (404, r.RelayMisconfigured),
        (407, r.RelayMisconfigured),  # the egress proxy refused the relay's credentials
        (409, r.UpstreamBusy),
        (413, r.MessageTooLarge),
        (422, r.UpstreamRejected),
        (429, r.UpstreamThrottled),
        (500, r.UpstreamServerError),
        (503, r.UpstreamServerError),
        (418, r.UpstreamUnexpected),
    ],
)
async def test_status_maps_to_error(status: int, error: type[r.RelayError]) -> None:
    client = client_for(answer(status, {"message": "why not"}))
    with pytest.raises(error) as info:
        await client.send(b"{}", "k")
    await client.aclose()
    assert type(info.value) is error
    assert info.value.detail == f"{status} why not"


async def test_retry_after_is_kept() -> None:
    client = client_for(answer(429, {"message": "slow"}, {"Retry-After": "7"}))
    with pytest.raises(r.UpstreamThrottled) as info:
        await client.send(b"{}", "k")
    await client.aclose()
    assert info.value.retry_after == 7.0


async def test_error_without_json_body_uses_reason() -> None:
    client = client_for(lambda req: httpx.Response(502, content=b"<html>bad gateway</html>"))
    with pytest.raises(r.UpstreamServerError) as info:
        await client.send(b"{}", "k")
    assert info.value.detail == "502 Bad Gateway"
    await client.aclose()


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (httpx.ConnectError("refused"), r.UpstreamUnreachable),
        (httpx.ReadError("reset"), r.UpstreamUnreachable),
        (httpx.RemoteProtocolError("eof"), r.UpstreamUnreachable),
        (httpx.ReadTimeout("slow"), r.UpstreamTimeout),
        (httpx.ConnectTimeout("slow"), r.UpstreamTimeout),
    ],
)
async def test_network_failures(exc: Exception, error: type[r.RelayError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    client = client_for(handler)
    with pytest.raises(error):
        await client.send(b"{}", "k")
    await client.aclose()


async def test_partial_202_reports_failures() -> None:
    body = {
        "object": "list",
        "data": [item("queued", "a@x.test"), item("error", "b@x.test", "suppressed")],
    }
    client = client_for(answer(202, body))
    delivery = await client.send(b"{}", "k")
    await client.aclose()
    assert delivery.message_ids == ("<a@x.test.id@ahasend.test>",)
    assert delivery.failures == (("b@x.test", "suppressed"),)


async def test_202_with_nothing_queued_is_permanent() -> None:
    body = {"object": "list", "data": [item("error", "b@x.test", "suppressed")]}
    client = client_for(answer(202, body))
    with pytest.raises(r.NothingQueued, match=r"b@x\.test: suppressed"):
        await client.send(b"{}", "k")
    await client.aclose()


async def test_replay_header_is_seen() -> None:
    body = {"object": "list", "data": [item("scheduled", "a@x.test")]}
    client = client_for(answer(202, body, {"Idempotent-Replayed": "true"}))
    delivery = await client.send(json.dumps({}).encode(), "k")
    await client.aclose()
    assert delivery.replayed
    assert delivery.message_ids == ("<a@x.test.id@ahasend.test>",)


async def test_ping() -> None:
    client = client_for(answer(200, {"message": "pong"}))
    await client.ping()
    await client.aclose()
    client = client_for(answer(401, {"message": "no"}))
    with pytest.raises(r.RelayMisconfigured):
        await client.ping()
    await client.aclose()
