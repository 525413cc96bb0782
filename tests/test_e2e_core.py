"""End to end: a real relay on loopback, a real stand-in AhaSend API, real SMTP clients.

Every row of the outcome table in relay/replies.py is driven through the whole path:
smtplib → relay → HTTP → stand-in (which validates each request against the spec).
"""

from __future__ import annotations

import email.policy
import io
import json
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from relay.delivery.sender import Delivery
from relay.ops.log import configure
from tests.harness import RunningRelay, running_relay, settings_for
from tests.standin import Scripted, StandIn

pytestmark = pytest.mark.e2e
SMTP_POLICY = email.policy.default.clone(linesep="\r\n")  # what real clients put on the wire


@pytest.fixture
def relay(standin: StandIn) -> Iterator[RunningRelay]:
    with running_relay(settings_for(standin, ahasend_api_timeout=1.0)) as running:
        yield running


def message(**headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = headers.pop("From", "App <app@example.com>")
    msg["To"] = headers.pop("To", "Ann <ann@example.net>")
    msg["Subject"] = headers.pop("Subject", "Hello")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hi Ann.\n")
    return msg


def send(
    relay: RunningRelay,
    msg: EmailMessage | bytes,
    rcpts: list[str] | None = None,
    sender: str = "app@example.com",
) -> tuple[int, str]:
    """Send one transaction; return the DATA reply (code, text) or the first refusal."""
    raw = msg if isinstance(msg, bytes) else msg.as_bytes(policy=SMTP_POLICY)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as client:
        client.ehlo("client.test")
        code, text = client.mail(sender)
        assert code == 250, text
        for rcpt in rcpts or ["ann@example.net"]:
            code, text = client.rcpt(rcpt)
            assert code == 250, (code, text)
        code, text = client.data(raw)
        return code, text.decode()


def only_body(standin: StandIn) -> dict[str, Any]:
    [request] = standin.requests
    assert request.problems == []
    body: dict[str, Any] = request.json
    return body


def test_plain_message_is_forwarded(relay: RunningRelay, standin: StandIn) -> None:
    code, text = send(relay, message())
    body = only_body(standin)
    assert code == 250
    assert text == f"2.0.0 Queued: {standin.requests[0].message_ids[0]}"
    assert body["from"] == {"email": "app@example.com", "name": "App"}
    assert body["to"] == [{"email": "ann@example.net", "name": "Ann"}]
    assert body["subject"] == "Hello"
    assert body["text_content"] == "Hi Ann.\n"
    assert "cc" not in body
    assert "bcc" not in body


def test_envelope_decides_to_cc_bcc(relay: RunningRelay, standin: StandIn) -> None:
    msg = message(To="Ann <ann@example.net>, Zed <zed@example.net>", Cc="Bob <BOB@example.net>")
    rcpts = ["ann@example.net", "bob@example.net", "hidden@example.org"]
    code, _ = send(relay, msg, rcpts)
    body = only_body(standin)
    assert code == 250
    assert body["to"] == [{"email": "ann@example.net", "name": "Ann"}]
    assert [a["email"].lower() for a in body["cc"]] == ["bob@example.net"]
    assert body["bcc"] == [{"email": "hidden@example.org"}]


def test_request_carries_key_and_credentials(relay: RunningRelay, standin: StandIn) -> None:
    send(relay, message(Message_ID="<m1@example.com>"))
    [request] = standin.requests
    assert request.headers["authorization"] == f"Bearer {standin.api_key}"
    assert request.headers["idempotency-key"].startswith("relay-")
    assert request.headers["user-agent"].startswith("ahasend-relay/")


def test_resent_message_is_not_delivered_twice(relay: RunningRelay, standin: StandIn) -> None:
    msg = message(Message_ID="<same@example.com>")
    first, second = send(relay, msg), send(relay, msg)
    assert first[0] == second[0] == 250
    keys = {r.headers["idempotency-key"] for r in standin.requests}
    assert len(keys) == 1
    assert len(standin.accepted) == 1
    assert standin.requests[1].replayed


def test_same_message_id_other_recipients_is_a_new_delivery(
    relay: RunningRelay, standin: StandIn
) -> None:
    msg = message(Message_ID="<fanout@example.com>", To="ann@example.net, bob@example.net")
    assert send(relay, msg, ["ann@example.net"])[0] == 250
    assert send(relay, msg, ["bob@example.net"])[0] == 250
    assert len({r.headers["idempotency-key"] for r in standin.requests}) == 2
    assert len(standin.accepted) == 2


def test_without_message_id_each_transaction_is_new(relay: RunningRelay, standin: StandIn) -> None:
    raw = message().as_bytes()
    assert b"Message-ID" not in raw
    send(relay, raw)
    send(relay, raw)
    assert len({r.headers["idempotency-key"] for r in standin.requests}) == 2
    assert len(standin.accepted) == 2


@pytest.mark.parametrize(
    ("scripted", "expected"),
    [
        (Scripted(400, {"message": "from.email: domain not verified"}),
         "554 5.6.0 Rejected by AhaSend: 400 from.email: domain not verified"),
        (Scripted(401, {"message": "invalid api key"}),
         "451 4.3.5 Relay misconfigured, try again later"),
        (Scripted(403, {"message": "missing role"}),
         "550 5.7.1 Sending not permitted by AhaSend: 403 missing role"),
        (Scripted(404, {"message": "account not found"}),
         "451 4.3.5 Relay misconfigured, try again later"),
        (Scripted(409, {"message": "in progress"},
                  {"Retry-After": "1", "Idempotent-Replayed": "false"}),
         "451 4.4.5 Upstream API busy with this message, try again later"),
        (Scripted(413, {"message": "too big"}),
         "552 5.3.4 Message too big for system: 413 too big"),
        (Scripted(422, {"message": "idempotency key was already used"}),
         "554 5.6.0 Rejected by AhaSend: 422 idempotency key was already used"),
        (Scripted(429, {"message": "slow down"}, {"Retry-After": "2"}),
         "451 4.4.5 Upstream API rate limit reached, try again later"),
        (Scripted(500, {"message": "oops"}), "451 4.3.0 Upstream API error, try again later"),
        (Scripted(503, {"message": "maintenance"}),
         "451 4.3.0 Upstream API error, try again later"),
        (Scripted(418, {"message": "teapot"}),
         "451 4.3.0 Unexpected upstream API answer, try again later"),
        (Scripted(500, hang=True), "451 4.4.2 Upstream API timed out, try again later"),
        (Scripted(500, reset=True), "451 4.4.1 Upstream API unreachable, try again later"),
    ],
    ids=lambda v: str(v.status) + ("-hang" if v.hang else "-reset" if v.reset else "")
    if isinstance(v, Scripted) else "",
)  # fmt: skip
def test_upstream_outcome_table(
    relay: RunningRelay, standin: StandIn, scripted: Scripted, expected: str
) -> None:
    standin.script(scripted)
    code, text = send(relay, message())
    assert f"{code} {text}" == expected


def partial_202(standin: StandIn, statuses: list[str]) -> Scripted:
    emails = ["ann@example.net", "bob@example.net"]
    data = [
        {"object": "message", "id": f"<{i}@ahasend.test>" if s != "error" else None,
         "recipient": {"email": e, "name": ""}, "status": s,
         "error": "recipient is suppressed" if s == "error" else None}
        for i, (s, e) in enumerate(zip(statuses, emails, strict=True))
    ]  # fmt: skip
    return Scripted(202, {"object": "list", "data": data})


def test_partial_acceptance_is_250_with_notice(relay: RunningRelay, standin: StandIn) -> None:
    standin.script(partial_202(standin, ["queued", "error"]))
    code, text = send(relay, message(To="ann@example.net, bob@example.net"),
                      ["ann@example.net", "bob@example.net"])  # fmt: skip
    assert code == 250
    refused = "1 recipient(s) refused: bob@example.net (recipient is suppressed)"
    assert text == f"2.0.0 Partially queued: {refused}"


def test_nothing_queued_is_permanent(relay: RunningRelay, standin: StandIn) -> None:
    standin.script(partial_202(standin, ["error", "error"]))
    code, text = send(relay, message(To="ann@example.net, bob@example.net"),
                      ["ann@example.net", "bob@example.net"])  # fmt: skip
    assert code == 554
    assert text.startswith(
        "5.0.0 AhaSend queued no recipient: ann@example.net: recipient is suppressed"
    )


def test_unreachable_api_is_transient(standin: StandIn) -> None:
    settings = settings_for(standin, ahasend_api_base_url="http://127.0.0.1:9")
    with running_relay(settings) as relay:
        code, text = send(relay, message())
    assert f"{code} {text}" == "451 4.4.1 Upstream API unreachable, try again later"


def test_fifty_first_recipient_is_deferred(relay: RunningRelay, standin: StandIn) -> None:
    rcpts = [f"r{i}@example.net" for i in range(51)]
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as client:
        client.ehlo("client.test")
        client.mail("app@example.com")
        replies = [client.rcpt(r) for r in rcpts]
        assert all(code == 250 for code, _ in replies[:50])
        assert replies[50] == (452, b"4.5.3 Too many recipients in this transaction")
        code, _ = client.data(message(To="r0@example.net").as_bytes())
    assert code == 250
    body = only_body(standin)
    assert len(body["to"]) + len(body.get("bcc", [])) == 50


def test_oversize_message_is_refused(standin: StandIn) -> None:
    with running_relay(settings_for(standin, relay_max_message_size=10_000)) as relay:
        big = message()
        big.set_content("x" * 20_000)
        code, text = send(relay, big)
        assert f"{code} {text}" == "552 5.3.4 Too much mail data"
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as client:
            client.ehlo("client.test")
            code, reply = client.mail("app@example.com", ["SIZE=20000"])
        assert code == 552
        assert reply.startswith(b"5.3.4 ")
    assert standin.requests == []


def test_unparseable_message_is_refused(relay: RunningRelay, standin: StandIn) -> None:
    code, text = send(relay, b"Subject: no sender anywhere\r\n\r\nbody\r\n", sender="")
    assert code == 554
    assert text.startswith("5.6.0 Message could not be parsed")
    assert standin.requests == []


def test_invalid_ahasend_header_is_refused_by_name(relay: RunningRelay, standin: StandIn) -> None:
    code, text = send(relay, message(ahasend_sandbox_result="explode"))
    assert code == 554
    assert text.startswith("5.6.0 Invalid header: ahasend-sandbox-result")
    assert standin.requests == []


def test_ahasend_headers_become_fields(relay: RunningRelay, standin: StandIn) -> None:
    code, _ = send(relay, message(ahasend_tags="a, b", ahasend_sandbox="true"))
    body = only_body(standin)
    assert code == 250
    assert body["tags"] == ["a", "b"]
    assert body["sandbox"] is True
    assert not any(h.lower().startswith("ahasend-") for h in body.get("headers", {}))


class ExplodingSender:
    async def send(self, body: bytes, idempotency_key: str) -> Delivery:
        raise KeyError("internal detail")

    async def aclose(self) -> None:
        return None


def test_bug_gives_transient_reply_without_internals(standin: StandIn) -> None:
    out = io.StringIO()
    configure(fmt="json", stream=out)
    with running_relay(settings_for(standin), sender=ExplodingSender()) as relay:
        code, text = send(relay, message())
        # the session is still usable afterwards
        assert send(relay, message())[0] == 451
    assert f"{code} {text}" == "451 4.3.0 Local error in processing, try again later"
    assert "KeyError" in out.getvalue()


def test_ehlo_advertises_extensions(relay: RunningRelay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as client:
        code, text = client.ehlo("client.test")
    assert code == 250
    lines = text.decode().splitlines()
    assert lines[0] == "relay.test"
    for ext in ("SIZE 20971520", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES"):
        assert ext in lines


def test_aiosmtpd_replies_get_enhanced_codes(relay: RunningRelay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as client:
        client.ehlo("client.test")
        assert client.docmd("RCPT TO:<a@example.net>") == (503, b"5.5.1 need MAIL command")
        assert client.docmd("BOGUS") == (500, b'5.5.2 command "BOGUS" not recognized')
        assert client.docmd("MAIL FROM:<app@example.com>") == (250, b"2.1.0 Sender OK")
        assert client.docmd("RCPT TO:<a@example.net>") == (250, b"2.1.5 Recipient OK")
        assert client.docmd("NOOP") == (250, b"2.0.0 OK")


def test_smtputf8_and_8bit(relay: RunningRelay, standin: StandIn) -> None:
    raw = (
        "From: Jörg <jörg@exämple.com>\r\nTo: Zoë <zoë@example.net>\r\n"
        "Subject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nHallo Zoë\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as client:
        client.ehlo("client.test")
        client.mail("jörg@exämple.com", ["SMTPUTF8", "BODY=8BITMIME"])
        assert client.rcpt("zoë@example.net")[0] == 250
        code, _ = client.data(raw)
    body = only_body(standin)
    assert code == 250
    assert body["from"]["email"] == "jörg@exämple.com"
    assert body["to"][0]["email"] == "zoë@example.net"
    assert body["subject"] == "Grüße"
    assert body["text_content"] == "Hallo Zoë\n"


def test_api_key_never_logged(standin: StandIn) -> None:
    out = io.StringIO()
    configure(fmt="json", level="debug", stream=out, secrets=[standin.api_key])
    with running_relay(settings_for(standin)) as relay:
        send(relay, message())
        standin.script(Scripted(401, {"message": f"bad key {standin.api_key}"}))
        send(relay, message())
    logged = out.getvalue()
    assert "message" in [json.loads(line)["event"] for line in logged.splitlines()]
    assert standin.api_key not in logged


def test_one_canonical_log_event_per_message(relay: RunningRelay, standin: StandIn) -> None:
    out = io.StringIO()
    configure(fmt="json", stream=out)
    send(relay, message(Message_ID="<log@example.com>"))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    [event] = [e for e in events if e["event"] == "message"]
    assert event["mail_from"] == "app@example.com"
    assert event["rcpt_count"] == 1
    assert event["reply"] == 250
    assert event["upstream_status"] == 202
    assert event["message_ids"] == list(standin.requests[0].message_ids)
    assert event["session_id"]
    assert event["peer"].startswith("127.0.0.1:")
    assert isinstance(event["latency_ms"], float)


def test_swaks_with_attachment(relay: RunningRelay, standin: StandIn, tmp_path: Any) -> None:
    assert shutil.which("swaks"), "swaks missing: .ci/run installs it"
    attachment = tmp_path / "report.csv"
    attachment.write_text("a,b\n1,2\n")
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{relay.port}", "--from", "cron@example.com",
         "--to", "ops@example.net", "--header", "Subject: nightly report",
         "--body", "see attached", "--attach", f"@{attachment}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0 Queued: " in result.stdout
    body = only_body(standin)
    assert body["subject"] == "nightly report"
    assert body["to"] == [{"email": "ops@example.net"}]
    [attached] = body["attachments"]
    assert attached["file_name"] == "report.csv"
