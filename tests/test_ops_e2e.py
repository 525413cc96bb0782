"""Metrics, health endpoints and the canonical log line, on a real relay and stand-in API."""

from __future__ import annotations

import http.client
import smtplib
import socket
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.harness import RunningRelay, running_relay, settings_for
from tests.ops_support import relay_process, standin_env
from tests.standin import Scripted, StandIn
from tests.test_metrics import value

pytestmark = pytest.mark.e2e


@pytest.fixture
def relay(standin: StandIn) -> Iterator[RunningRelay]:
    settings = settings_for(standin, relay_metrics_port=0, ahasend_api_timeout=1.0)
    with running_relay(settings) as running:
        yield running


def admin_port(relay: RunningRelay) -> int:
    assert relay.server is not None
    assert relay.server.admin is not None
    return relay.server.admin.port


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read().decode()
        return response.status, body, dict(response.getheaders())
    finally:
        connection.close()


def message(subject: str = "hello", message_id: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "app@example.com", "user@example.org", subject
    if message_id:
        msg["Message-ID"] = message_id
    msg.set_content("Hello.\n")
    return msg


def send(port: int, *messages: EmailMessage) -> list[tuple[int, str]]:
    """Each message in one session; (code, text) of each DATA reply."""
    replies = []
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        for msg in messages:
            client.mail("app@example.com")
            client.rcpt("user@example.org")
            code, text = client.data(msg.as_bytes())
            replies.append((code, text.decode()))
    return replies


def test_metrics_count_messages_upstream_statuses_and_latency(
    relay: RunningRelay, standin: StandIn
) -> None:
    port = admin_port(relay)
    before = get(port, "/metrics")[1]
    # The start-up account read is the only upstream request so far.
    assert value(before, "ahasend_relay_upstream_responses_total", status="200") == 1
    assert value(before, "ahasend_relay_upstream_request_duration_seconds_count") == 1
    standin.script(Scripted(202), Scripted(202), Scripted(500))
    codes = [code for code, _ in send(relay.port, message("a"), message("b"), message("c"))]
    assert codes == [250, 250, 451]
    status, body, headers = get(port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    after = body
    assert value(after, "ahasend_relay_messages_total", result="accepted", code="250") == 2
    assert value(after, "ahasend_relay_messages_total", result="deferred", code="451") == 1
    assert value(after, "ahasend_relay_upstream_responses_total", status="202") == 2
    assert value(after, "ahasend_relay_upstream_responses_total", status="500") == 1
    assert value(after, "ahasend_relay_upstream_request_duration_seconds_count") == 4
    assert value(after, "ahasend_relay_upstream_request_duration_seconds_bucket", le="+Inf") == 4
    assert value(after, "ahasend_relay_sessions_open") is not None
    assert value(after, "ahasend_relay_auth_failures_total") == 0
    assert value(after, "ahasend_relay_messages_accepted_total", route="sent") == 2
    assert value(after, "ahasend_relay_transaction_duration_seconds_count") == 3


def sessions_open(relay: RunningRelay, expected: float) -> float:
    """The sessions_open gauge once it equals ``expected`` (closing is asynchronous)."""
    deadline = time.monotonic() + 5
    while True:
        found = value(get(admin_port(relay), "/metrics")[1], "ahasend_relay_sessions_open")
        assert found is not None
        if found == expected or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def test_sessions_open_counts_live_connections(relay: RunningRelay) -> None:
    assert sessions_open(relay, 0) == 0
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=5) as client:
        client.ehlo()
        assert sessions_open(relay, 1) == 1
    assert sessions_open(relay, 0) == 0


def test_rejected_message_is_counted_with_its_code(relay: RunningRelay, standin: StandIn) -> None:
    standin.script(Scripted(422))
    assert send(relay.port, message())[0][0] == 554
    found = get(admin_port(relay), "/metrics")[1]
    assert value(found, "ahasend_relay_messages_total", result="rejected", code="554") == 1
    assert value(found, "ahasend_relay_upstream_responses_total", status="422") == 1


def test_health_endpoints(relay: RunningRelay) -> None:
    port = admin_port(relay)
    assert get(port, "/healthz")[:2] == (200, "ok\n")
    assert get(port, "/readyz")[:2] == (200, "ready: listening, AhaSend reachable\n")
    assert get(port, "/readyz?verbose=1")[0] == 200
    assert get(port, "/nope")[0] == 404
    assert get(port, "/metrics", method="POST")[0] == 405
    status, body, headers = get(port, "/healthz", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, "", "3")


@pytest.mark.parametrize(
    "request_bytes", [b"garbage\r\n\r\n", b"GET /healthz\r\n\r\n", b"GET /" + b"x" * 9000]
)
def test_malformed_requests_get_400(relay: RunningRelay, request_bytes: bytes) -> None:
    with socket.create_connection(("127.0.0.1", admin_port(relay)), timeout=5) as sock:
        sock.sendall(request_bytes + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")


def test_readyz_follows_upstream_reachability(relay: RunningRelay, standin: StandIn) -> None:
    port = admin_port(relay)
    standin.script(Scripted(0, reset=True))
    assert send(relay.port, message())[0][0] == 451
    assert get(port, "/readyz")[:2] == (
        503, "not ready: AhaSend unreachable at the last request\n",
    )  # fmt: skip
    body = get(port, "/metrics")[1]
    assert value(body, "ahasend_relay_upstream_responses_total", status="unreachable") == 1
    assert send(relay.port, message())[0][0] == 250
    assert get(port, "/readyz")[:2] == (200, "ready: listening, AhaSend reachable\n")


def test_readyz_is_503_once_the_listener_stops(standin: StandIn) -> None:
    with running_relay(settings_for(standin, relay_metrics_port=0)) as relay:
        assert relay.server is not None
        relay.call(_close_listener(relay))
        assert get(admin_port(relay), "/readyz")[0] == 503


async def _close_listener(relay: RunningRelay) -> None:
    assert relay.server is not None
    relay.server.close_listeners()


def test_metrics_are_off_by_default_and_loopback_when_on(standin: StandIn) -> None:
    with running_relay(settings_for(standin)) as relay:
        assert relay.server is not None
        assert relay.server.admin is None
    settings = settings_for(standin, relay_metrics_port=0)
    assert settings.relay_metrics_host == "127.0.0.1"
    with running_relay(settings) as relay:
        assert relay.server is not None
        assert relay.server.admin is not None
        assert relay.server.admin.host == "127.0.0.1"


def test_one_json_line_per_message_ties_session_request_key_and_ids(
    tmp_path: Path, standin: StandIn
) -> None:
    with relay_process(tmp_path, **standin_env(standin)) as relay:
        send(relay.port, message("one", "<one@example.com>"), message("two"))
        assert relay.stop() == 0
        logged = relay.events()
    messages = [e for e in logged if e["event"] == "message"]
    [session] = [e for e in logged if e["event"] == "session"]
    assert len(messages) == 2
    session_id = session["session_id"]
    for n, (line, request) in enumerate(zip(messages, standin.requests, strict=True), start=1):
        assert line["session_id"] == session_id
        assert line["request_id"] == f"{session_id}.{n}"
        assert line["idempotency_keys"] == [request.headers["idempotency-key"]]
        assert line["upstream_status"] == 202
        assert line["reply"] == 250
        assert line["message_ids"] == request.message_ids
    assert "request_id" not in session
    assert session["transactions"] == 2


def test_failed_message_line_names_request_and_error(tmp_path: Path, standin: StandIn) -> None:
    standin.script(Scripted(401))
    with relay_process(tmp_path, **standin_env(standin)) as relay:
        assert send(relay.port, message())[0][0] == 451
        assert relay.stop() == 0
        logged = relay.events()
    [line] = [e for e in logged if e["event"] == "message"]
    assert (line["reply"], line["enhanced"], line["error"]) == (451, "4.3.5", "RelayMisconfigured")
    assert line["request_id"] == f"{line['session_id']}.1"
    [refusal] = [e for e in logged if e["event"] == "upstream_refused_credentials"]
    assert refusal["request_id"] == line["request_id"]  # the API call's line is tied in
    assert standin.api_key not in relay.log.read_text()
