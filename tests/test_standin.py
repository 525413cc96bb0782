"""The stand-in AhaSend API, driven over real HTTP with httpx."""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests import spec
from tests.standin import (
    IN_PROGRESS_MESSAGE,
    MISMATCH_MESSAGE,
    Recorded,
    Scripted,
    StandIn,
)

VALID: dict[str, Any] = {
    "from": {"email": "app@example.com", "name": "App"},
    "to": [{"email": "ann@example.net", "name": "Ann"}, {"email": "zed@example.net"}],
    "cc": [{"email": "bob@example.net", "name": "Bob"}],
    "bcc": [{"email": "hidden@example.org"}],
    "reply_to": {"email": "support@example.com"},
    "subject": "Hello",
    "text_content": "Hi Ann.\n",
    "html_content": "<p>Hi Ann.</p>",
    "headers": {"X-Mailer": "test"},
    "attachments": [
        {"data": "a,b\n", "content_type": "text/csv", "file_name": "r.csv"},
        {
            "base64": True,
            "data": base64.b64encode(b"\x89PNG...").decode(),
            "content_type": "image/png",
            "file_name": "logo.png",
            "content_id": "<logo@example.com>",
            "content_disposition": "inline",
        },
    ],
    "tags": ["t"],
    "sandbox": True,
    "sandbox_result": "deliver",
    "tracking": {"open": False, "click": None},
    "retention": {"metadata": 1, "data": 0},
}


@pytest.fixture
def client(standin: StandIn) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {standin.api_key}"}
    with httpx.Client(base_url=standin.base_url, headers=headers, timeout=5.0) as http:
        yield http


def conversation(standin: StandIn) -> str:
    return f"/v2/accounts/{standin.account_id}/messages/conversation"


def post(
    client: httpx.Client, standin: StandIn, body: Any = VALID, **headers: str
) -> httpx.Response:
    """POST ``body`` as JSON (``bytes`` verbatim) to the conversation endpoint."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} | {
        k.replace("_", "-"): v for k, v in headers.items()
    }
    return client.post(conversation(standin), content=content, headers=sent)


def assert_error(response: httpx.Response, status: int, fragment: str = "") -> None:
    """``status``, a spec-valid ErrorResponse, and ``fragment`` in its message."""
    assert response.status_code == status, response.text
    assert spec.errors("ErrorResponse", response.json()) == []
    assert fragment in response.json()["message"]


def mutated(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    change(body)
    return body


def test_valid_request_is_accepted_with_spec_valid_body(
    client: httpx.Client, standin: StandIn
) -> None:
    spec.assert_valid_request(VALID)
    response = post(client, standin, Idempotency_Key="k" * 255)
    assert response.status_code == 202, response.text
    body = response.json()
    assert spec.errors("CreateMessageResponse", body) == []
    assert "idempotent-replayed" not in response.headers
    assert [d["recipient"] for d in body["data"]] == [
        {"email": "ann@example.net", "name": "Ann"},
        {"email": "zed@example.net", "name": ""},
        {"email": "bob@example.net", "name": "Bob"},
        {"email": "hidden@example.org", "name": ""},
    ]
    assert {d["status"] for d in body["data"]} == {"queued"}
    [recorded] = standin.requests
    assert recorded.problems == []
    assert recorded.response_status == 202
    assert recorded.json == VALID
    assert json.loads(recorded.body) == VALID
    assert recorded.headers["authorization"] == f"Bearer {standin.api_key}"
    assert recorded.idempotency_key == "k" * 255
    assert recorded.message_ids == [d["id"] for d in body["data"]]
    assert all(i.startswith("<") and i.endswith("@ahasend.test>") for i in recorded.message_ids)
    assert len(set(recorded.message_ids)) == 4
    assert standin.accepted == [recorded]


def test_minimal_request_is_accepted(client: httpx.Client, standin: StandIn) -> None:
    body = {"from": {"email": "a@example.com"}, "to": [{"email": "b@example.net"}],
            "subject": "", "html_content": ""}  # fmt: skip
    assert post(client, standin, body).status_code == 202


def test_fresh_ids_per_request(client: httpx.Client, standin: StandIn) -> None:
    post(client, standin)
    post(client, standin)
    first, second = standin.requests
    assert not set(first.message_ids) & set(second.message_ids)


def _too_many(body: dict[str, Any]) -> None:
    body["to"] = [{"email": f"t{i}@example.net"} for i in range(30)]
    body["cc"] = [{"email": f"c{i}@example.net"} for i in range(20)]


def _fifty(body: dict[str, Any]) -> None:
    body["to"] = [{"email": f"t{i}@example.net"} for i in range(30)]
    body["cc"] = [{"email": f"c{i}@example.net"} for i in range(19)]


INVALID: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "no-content": (lambda b: [b.pop("text_content"), b.pop("html_content")],
                   "either text_content or html_content is required"),
    "no-subject": (lambda b: b.pop("subject"), "'subject' is a required property"),
    "no-to": (lambda b: b.pop("to"), "'to' is a required property"),
    "empty-to": (lambda b: b.update(to=[]), "to: [] should be non-empty"),
    "bad-email": (lambda b: b["to"][0].update(email="not-an-email"), "to/0/email"),
    "bad-enum": (lambda b: b.update(sandbox_result="explode"), "sandbox_result"),
    "retention": (lambda b: b.update(retention={"metadata": 0}), "retention/metadata"),
    "header-not-string": (lambda b: b.update(headers={"X-N": 1}), "headers/X-N"),
    "unknown-top": (lambda b: b.update(substitutions={}), "['substitutions']"),
    "unknown-address": (lambda b: b["to"][1].update(substitutions={}), "to/1: unknown field"),
    "unknown-from": (lambda b: b["from"].update(display="x"), "from: unknown field"),
    "unknown-attachment": (lambda b: b["attachments"][0].update(filename="x"),
                           "attachments/0: unknown field(s) not defined by Attachment"),
    "unknown-tracking": (lambda b: b["tracking"].update(opens=True), "tracking: unknown"),
    "too-many": (_too_many, "must not exceed 50 (got 51)"),
    "cc-header": (lambda b: b["headers"].update(CC="x@example.net"), "cc header"),
    "reply-to-header": (lambda b: b["headers"].update({"Reply-To": "x@example.net"}),
                        "reply-to header"),
    "bad-base64": (lambda b: b["attachments"][1].update(data="not base64!"), "attachments/1/data"),
    "cid-brackets": (lambda b: b["attachments"][1].update(content_id="logo@example.com"),
                     "angle brackets"),
    "past-schedule": (lambda b: b.update(schedule={"first_attempt": "2020-01-01T00:00:00Z"}),
                      "schedule/first_attempt: must be in the future"),
}  # fmt: skip


@pytest.mark.parametrize("case", INVALID)
def test_invalid_body_is_400_naming_the_problem(
    client: httpx.Client, standin: StandIn, case: str
) -> None:
    change, fragment = INVALID[case]
    response = post(client, standin, mutated(change))
    assert_error(response, 400, fragment)
    [recorded] = standin.requests
    assert recorded.response_status == 400
    assert any(fragment in p for p in recorded.problems), recorded.problems
    assert standin.accepted == []
    assert recorded.message_ids == []


VALID_VARIANTS: dict[str, Callable[[dict[str, Any]], object]] = {
    "fifty-recipients": _fifty,
    "only-text": lambda b: b.pop("html_content"),
    "only-html": lambda b: b.pop("text_content"),
    "cc-header-without-cc": lambda b: [b.pop("cc"), b["headers"].update(Cc="x@example.net")],
    "reply-to-header-without-param": lambda b: [
        b.pop("reply_to"), b["headers"].update({"reply-to": "x@example.net"})
    ],
    "base64-with-line-breaks": lambda b: b["attachments"][1].update(
        data=base64.encodebytes(b"x" * 200).decode()
    ),
    "future-schedule": lambda b: b.update(schedule={
        "first_attempt": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        "expires": (datetime.now(UTC) + timedelta(days=8, minutes=-1)).isoformat(),
    }),
    "non-base64-data-is-text": lambda b: b["attachments"][0].update(data="not base64!"),
}  # fmt: skip


@pytest.mark.parametrize("case", VALID_VARIANTS)
def test_rule_edges_are_accepted(client: httpx.Client, standin: StandIn, case: str) -> None:
    response = post(client, standin, mutated(VALID_VARIANTS[case]))
    assert response.status_code == 202, response.text
    assert standin.requests[0].problems == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"{not json", "body is not valid JSON"), (b"", "body is not valid JSON"),
     (b"[]", "<root>: [] is not of type 'object'")],
)  # fmt: skip
def test_malformed_body_is_400(
    client: httpx.Client, standin: StandIn, body: bytes, fragment: str
) -> None:
    assert_error(post(client, standin, body), 400, fragment)
    assert standin.requests[0].json is None or body == b"[]"


def test_content_type_must_be_json(client: httpx.Client, standin: StandIn) -> None:
    response = post(client, standin, Content_Type="text/plain")
    assert_error(response, 400, "Content-Type must be application/json")
    ok = post(client, standin, Content_Type="application/json; charset=utf-8")
    assert ok.status_code == 202


def test_idempotency_key_longer_than_255_is_400(client: httpx.Client, standin: StandIn) -> None:
    assert_error(post(client, standin, Idempotency_Key="k" * 256), 400, "Idempotency-Key")
    assert standin.requests[0].problems


@pytest.mark.parametrize(
    ("authorization", "fragment"),
    [(None, "missing Authorization"), ("Bearer nope", "invalid API key"),
     ("aha-sk-test", "malformed"), ("bearer aha-sk-test", "malformed")],
)  # fmt: skip
def test_bearer_key_is_required(standin: StandIn, authorization: str | None, fragment: str) -> None:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    with httpx.Client(base_url=standin.base_url, timeout=5.0) as http:
        response = http.post(conversation(standin), json=VALID, headers=headers)
        assert_error(response, 401, fragment)
        ping = http.get("/v2/ping", headers=headers)
        assert_error(ping, 401, fragment)
    [recorded] = standin.requests
    assert recorded.response_status == 401
    assert recorded.problems == [response.json()["message"]]


def test_other_account_is_404(client: httpx.Client, standin: StandIn) -> None:
    path = "/v2/accounts/00000000-0000-4000-8000-000000000000/messages/conversation"
    assert_error(client.post(path, json=VALID), 404, "account not found")
    assert standin.requests[0].problems


@pytest.mark.parametrize(
    "path", ["/v2/accounts/x/messages", "/v1/send", "/v2/accounts/a/messages/conversation/"]
)
def test_other_path_is_404(client: httpx.Client, standin: StandIn, path: str) -> None:
    assert_error(client.post(path, json=VALID), 404, f"no such endpoint: POST {path}")
    assert standin.requests[0].problems == [f"no such endpoint: POST {path}"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_conversation_is_post_only(client: httpx.Client, standin: StandIn, method: str) -> None:
    response = client.request(method, conversation(standin))
    assert_error(response, 405, f"method {method} not allowed")
    assert response.headers["allow"] == "POST"


def test_ping(client: httpx.Client, standin: StandIn) -> None:
    response = client.get("/v2/ping")
    assert response.status_code == 200
    assert response.json() == {"message": "pong"}
    assert spec.errors("SuccessResponse", response.json()) == []
    assert_error(client.post("/v2/ping"), 405)
    assert standin.requests == []
    assert [p.response_status for p in standin.probes] == [200, 405]


def test_account(client: httpx.Client, standin: StandIn) -> None:
    response = client.get(f"/v2/accounts/{standin.account_id}")
    assert response.status_code == 200
    assert spec.errors("Account", response.json()) == []
    assert response.json()["id"] == standin.account_id
    other = client.get("/v2/accounts/00000000-0000-4000-8000-000000000000")
    assert_error(other, 404, "account not found")
    assert standin.requests == []


def test_idempotent_replay(client: httpx.Client, standin: StandIn) -> None:
    first = post(client, standin, Idempotency_Key="key-1")
    second = post(client, standin, Idempotency_Key="key-1")
    assert first.status_code == second.status_code == 202
    assert second.content == first.content
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    original, replay = standin.requests
    assert (original.replayed, replay.replayed) == (False, True)
    assert replay.message_ids == original.message_ids
    assert standin.accepted == [original]


def test_idempotency_key_with_other_body_is_422(client: httpx.Client, standin: StandIn) -> None:
    assert post(client, standin, Idempotency_Key="key-2").status_code == 202
    other = mutated(lambda b: b.update(subject="Changed"))
    response = post(client, standin, other, Idempotency_Key="key-2")
    assert_error(response, 422, MISMATCH_MESSAGE)
    assert response.json() == {"message": MISMATCH_MESSAGE}
    assert "idempotent-replayed" not in response.headers
    assert "retry-after" not in response.headers
    assert len(standin.accepted) == 1


def test_idempotency_key_in_progress_is_409(standin: StandIn) -> None:
    standin.delay = 1.0
    responses: list[httpx.Response] = []

    def send() -> None:
        headers = {"Authorization": f"Bearer {standin.api_key}", "Idempotency-Key": "key-3"}
        with httpx.Client(base_url=standin.base_url, headers=headers, timeout=5.0) as http:
            responses.append(http.post(conversation(standin), json=VALID))

    first = threading.Thread(target=send)
    first.start()
    time.sleep(0.3)  # the first request is now being delayed
    send()
    [conflict] = responses
    assert_error(conflict, 409, IN_PROGRESS_MESSAGE)
    assert conflict.headers["idempotent-replayed"] == "false"
    assert conflict.headers["retry-after"] == "1"
    first.join()
    assert responses[1].status_code == 202
    standin.delay = 0.0
    send()
    assert responses[2].headers["idempotent-replayed"] == "true"
    assert [r.response_status for r in standin.requests] == [409, 202, 202]
    assert len(standin.accepted) == 1


def test_5xx_releases_the_key(client: httpx.Client, standin: StandIn) -> None:
    standin.script(Scripted(503), Scripted(429, headers={"Retry-After": "2"}))
    assert_error(post(client, standin, Idempotency_Key="key-4"), 503, "Service Unavailable")
    limited = post(client, standin, Idempotency_Key="key-4")
    assert_error(limited, 429)
    assert limited.headers["retry-after"] == "2"
    fresh = post(client, standin, Idempotency_Key="key-4")
    assert fresh.status_code == 202
    assert "idempotent-replayed" not in fresh.headers
    assert not any(r.replayed for r in standin.requests)


def test_4xx_outcome_is_stored_and_replayed(client: httpx.Client, standin: StandIn) -> None:
    standin.script(Scripted(400, {"message": "from.email: domain not verified"}))
    post(client, standin, Idempotency_Key="key-5")
    replay = post(client, standin, Idempotency_Key="key-5")
    assert_error(replay, 400, "domain not verified")
    assert replay.headers["idempotent-replayed"] == "true"


def test_invalid_requests_do_not_touch_the_key(client: httpx.Client, standin: StandIn) -> None:
    bad = mutated(lambda b: b.pop("subject"))
    assert post(client, standin, bad, Idempotency_Key="key-6").status_code == 400
    assert post(client, standin, Idempotency_Key="key-6").status_code == 202


def test_clear_can_forget_idempotency_keys(client: httpx.Client, standin: StandIn) -> None:
    post(client, standin, Idempotency_Key="key-7")
    standin.clear()
    assert standin.requests == []
    assert post(client, standin, Idempotency_Key="key-7").headers["idempotent-replayed"] == "true"
    standin.clear(idempotency=True)
    assert "idempotent-replayed" not in post(client, standin, Idempotency_Key="key-7").headers


def test_script_is_fifo_then_default(client: httpx.Client, standin: StandIn) -> None:
    data = [{"object": "message", "id": None, "recipient": {"email": "ann@example.net", "name": ""},
             "status": "error", "error": "recipient is suppressed"},
            {"object": "message", "id": "<1@ahasend.test>",
             "recipient": {"email": "bob@example.net", "name": ""}, "status": "queued",
             "error": None}]  # fmt: skip
    standin.script(
        Scripted(500, {"message": "oops"}),
        Scripted(202, {"object": "list", "data": data}, {"X-Extra": "1"}),
        Scripted(502, b"<html>bad gateway</html>", {"Content-Type": "text/html"}),
        Scripted(200),
    )
    assert standin.pending_script == 4
    assert_error(post(client, standin), 500, "oops")
    partial = post(client, standin)
    assert partial.status_code == 202
    assert partial.headers["x-extra"] == "1"
    assert partial.json()["data"] == data
    html = post(client, standin)
    assert (html.status_code, html.text) == (502, "<html>bad gateway</html>")
    assert html.headers["content-type"] == "text/html"
    ok = post(client, standin)
    assert ok.status_code == 200
    assert spec.errors("CreateMessageResponse", ok.json()) == []
    assert post(client, standin).status_code == 202
    assert [r.response_status for r in standin.requests] == [500, 202, 502, 200, 202]
    assert standin.requests[1].message_ids == ["<1@ahasend.test>"]
    assert standin.requests[0].message_ids == []
    assert len(standin.accepted) == 3


def test_script_is_not_consumed_by_invalid_requests(client: httpx.Client, standin: StandIn) -> None:
    standin.script(Scripted(503))
    assert post(client, standin, {"nope": 1}).status_code == 400
    assert post(client, standin).status_code == 503


def test_hang_until_client_times_out(client: httpx.Client, standin: StandIn) -> None:
    standin.script(Scripted(500, hang=True))
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            conversation(standin),
            json=VALID,
            headers={"Idempotency-Key": "key-8"},
            timeout=httpx.Timeout(5.0, read=0.3),
        )
    assert 0.3 <= time.monotonic() - started < 2
    [hung] = standin.wait_for(1)
    assert hung.response_status == 0
    # the client gave up: the key is released and the next request is answered normally
    response = post(client, standin, Idempotency_Key="key-8")
    assert response.status_code == 202
    assert "idempotent-replayed" not in response.headers


def test_reset_is_a_connection_error(client: httpx.Client, standin: StandIn) -> None:
    standin.script(Scripted(202, reset=True))
    with pytest.raises(httpx.TransportError) as caught:
        post(client, standin)
    assert not isinstance(caught.value, httpx.TimeoutException)
    assert standin.requests[0].response_status == 0
    assert standin.accepted == []
    assert post(client, standin).status_code == 202


def test_delay_models_latency(client: httpx.Client, standin: StandIn) -> None:
    standin.delay = 0.2
    standin.script(Scripted(202, delay=0.1))
    started = time.monotonic()
    post(client, standin)
    assert time.monotonic() - started >= 0.3
    standin.delay = 0.0
    started = time.monotonic()
    post(client, standin)
    assert time.monotonic() - started < 0.2


def test_wait_for(client: httpx.Client, standin: StandIn) -> None:
    def later() -> None:
        time.sleep(0.1)
        post(client, standin)
        post(client, standin)

    sender = threading.Thread(target=later)
    sender.start()
    requests = standin.wait_for(2, timeout=5)
    sender.join()
    assert len(requests) == 2
    assert all(isinstance(r, Recorded) for r in requests)
    with pytest.raises(TimeoutError, match="2 of 3 requests"):
        standin.wait_for(3, timeout=0.1)


def test_keep_alive(client: httpx.Client, standin: StandIn) -> None:
    post(client, standin)
    post(client, standin)
    client.get("/v2/ping")
    first, second = standin.requests
    assert first.connection == second.connection == standin.probes[0].connection
    assert standin.connections == 1
    closing = post(client, standin, Connection="close")
    assert closing.headers["connection"] == "close"
    post(client, standin)
    assert standin.requests[3].connection != standin.requests[2].connection
    assert standin.connections == 2


def test_chunked_request_body(client: httpx.Client, standin: StandIn) -> None:
    raw = json.dumps(VALID).encode()
    chunks = iter([raw[:10], raw[10:]])
    response = client.post(
        conversation(standin), content=chunks, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text
    assert standin.requests[0].json == VALID
    assert standin.requests[0].headers["transfer-encoding"] == "chunked"


def test_without_validation_anything_is_accepted() -> None:
    with (
        StandIn(validate=False, record_bodies=False) as standin,
        httpx.Client(base_url=standin.base_url, timeout=5.0) as http,
    ):
        auth = {"Authorization": f"Bearer {standin.api_key}"}
        response = http.post(conversation(standin), content=b"junk", headers=auth)
        assert response.status_code == 202
        assert response.json() == {"object": "list", "data": []}
        assert http.post(conversation(standin), json=VALID, headers=auth).status_code == 202
        assert http.post(conversation(standin), json=VALID).status_code == 401
        junk, valid, _ = standin.requests
        assert (junk.body, junk.json, valid.body, valid.json) == (b"", None, b"", None)
        assert len(valid.message_ids) == 4


def test_custom_credentials() -> None:
    with StandIn(api_key="aha-sk-other", account_id="11111111-2222-4333-8444-555555555555") as s:
        assert s.base_url.startswith("http://127.0.0.1:")
        headers = {"Authorization": "Bearer aha-sk-other"}
        with httpx.Client(base_url=s.base_url, headers=headers, timeout=5.0) as http:
            assert post(http, s).status_code == 202
            assert s.requests[0].path.startswith("/v2/accounts/11111111-2222")


def test_every_response_body_is_spec_valid(client: httpx.Client, standin: StandIn) -> None:
    """Whatever the stand-in says on its own (not scripted bodies) is valid per the spec."""
    post(client, standin, Idempotency_Key="v")
    post(client, standin, Idempotency_Key="v")
    post(client, standin, mutated(lambda b: b.pop("subject")), Idempotency_Key="v")
    post(client, standin, mutated(lambda b: b.update(subject="x")), Idempotency_Key="v")
    standin.script(Scripted(503), Scripted(202), Scripted(418))
    for _ in range(3):
        post(client, standin)
    client.get(conversation(standin))
    client.post("/elsewhere", json={})
    client.get("/v2/ping", headers={"Authorization": "Bearer x"})
    schemas = {200: "CreateMessageResponse", 202: "CreateMessageResponse"}
    statuses = set()
    for recorded in [*standin.requests, *standin.probes]:
        schema = schemas.get(recorded.response_status, "ErrorResponse")
        assert spec.errors(schema, json.loads(recorded.response_body)) == [], recorded
        statuses.add(recorded.response_status)
    assert statuses == {202, 400, 401, 404, 405, 418, 422, 503}


def test_stop_is_clean_and_final() -> None:
    standin = StandIn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        standin.start()
        url = standin.base_url
        standin.script(Scripted(500, hang=True))
        with httpx.Client(timeout=5.0) as http:
            auth = {"Authorization": f"Bearer {standin.api_key}"}

            def hang() -> None:
                with pytest.raises(httpx.TransportError):
                    http.post(url + conversation(standin), json=VALID, headers=auth)

            hung = threading.Thread(target=hang)
            # a connection left open (and a hung request) must not block or leak on stop()
            idle = httpx.Client(timeout=5.0)
            idle.get(url + "/v2/ping")
            hung.start()
            time.sleep(0.1)
            standin.stop()
            hung.join(5)
            idle.close()
        standin.stop()  # idempotent
        with pytest.raises(httpx.ConnectError), httpx.Client() as http:
            http.get(url + "/v2/ping")
        with pytest.raises(RuntimeError):
            _ = standin.base_url
