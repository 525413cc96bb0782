"""One log stream: every line a real relay process writes is one JSON object, library
records included (scrubbed, with the session's context); the message line is greppable."""

from __future__ import annotations

import io
import json
import logging
import smtplib
import socket
import warnings
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import structlog

from relay.ops.log import configure, recipient_hash
from tests.ops_support import relay_process, standin_env
from tests.standin import Scripted, StandIn

pytestmark = pytest.mark.e2e
OUT_OF_TURN = "ZM9VOMJHCG=="  # what a client sends when it pipelines AUTH data too early


def message(message_id: str = "<m1@example.com>") -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "app@example.com", "alice@example.org", "hi"
    msg["Message-ID"] = message_id
    msg.set_content("Hello.\n")
    return msg


def send(port: int, recipients: list[str], msg: EmailMessage) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.mail("app@example.com")
        for rcpt in recipients:
            client.rcpt(rcpt)
        return client.data(msg.as_bytes())[0]


def out_of_turn_command(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        stream = sock.makefile("rwb")
        stream.readline()
        for line in (b"EHLO client.test\r\n", OUT_OF_TURN.encode() + b"\r\n", b"QUIT\r\n"):
            stream.write(line)
            stream.flush()
            while (reply := stream.readline())[3:4] == b"-":
                pass
            assert reply[:1] in (b"2", b"5"), reply


def probe(port: int) -> None:
    """What ``ahasend-relay healthcheck`` and load balancers do: greeting, QUIT."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10):
        pass


def every_line_is_json(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines
    parsed = []
    for line in lines:
        event = json.loads(line)  # raises on a raw text line
        assert isinstance(event, dict), line
        assert {"event", "level", "timestamp"} <= event.keys(), line
        parsed.append(event)
    return parsed


@pytest.mark.parametrize("level", ["info", "debug"])
def test_every_line_of_the_process_is_json(tmp_path: Path, standin: StandIn, level: str) -> None:
    env = standin_env(standin, RELAY_LOG_LEVEL=level, RELAY_METRICS_PORT="0")
    with relay_process(tmp_path, **env) as relay:
        relay.wait_admin()
        out_of_turn_command(relay.port)
        probe(relay.port)
        assert send(relay.port, ["alice@example.org", "bob@example.org"], message()) == 250
        assert relay.stop() == 0
    events = every_line_is_json(relay.log)
    text = relay.log.read_text()
    assert OUT_OF_TURN not in text
    assert standin.api_key not in text
    [unrecognised] = [e for e in events if "unrecognised" in e["event"]]
    assert unrecognised["logger_name"] == "mail.log"
    assert unrecognised["level"] == "warning"
    assert unrecognised["session_id"]  # the library's line carries the session's context
    assert "[REDACTED] (12 characters)" in unrecognised["event"]
    [line] = [e for e in events if e["event"] == "message"]
    assert line["to"] == ["alice@example.org", "bob@example.org"]
    assert line["msgid"] == "<m1@example.com>"
    assert line["upstream_status"] == 202
    sessions = [e for e in events if e["event"] == "session"]
    if level == "info":  # the probe and the out-of-turn session sent no MAIL: debug
        assert [s["transactions"] for s in sessions] == [1]
    else:
        assert sorted(s["transactions"] for s in sessions) == [0, 0, 1]
        assert {s["level"] for s in sessions if s["transactions"] == 0} == {"debug"}
        # The request's own debug line (send bypasses httpx's client, and its INFO line).
        upstreams = [e for e in events if e["event"] == "upstream_response"]
        assert [(u["method"], u["status"]) for u in upstreams] == [("GET", 200), ("POST", 202)]
        upstream = upstreams[-1]  # the start-up account read came first
        assert upstream["path"].endswith("/messages/conversation")
        assert upstream["idempotency_key"] == line["idempotency_keys"][0]


def test_upstream_status_is_null_when_spooled(tmp_path: Path, standin: StandIn) -> None:
    standin.script(*[Scripted(503)] * 3)
    env = standin_env(standin, RELAY_SPOOL_DIR=str(tmp_path / "spool"), RELAY_RETRY_DEADLINE="0",
                      RELAY_SPOOL_RETRY_MIN="3600")  # fmt: skip
    with relay_process(tmp_path, **env) as relay:
        assert send(relay.port, ["alice@example.org"], message()) == 250
        assert relay.stop() == 0
    [line] = [e for e in every_line_is_json(relay.log) if e["event"] == "message"]
    assert line["spooled"]
    assert line["upstream_status"] is None


def test_upstream_status_is_null_in_dry_run(tmp_path: Path) -> None:
    with relay_process(tmp_path, "--dry-run") as relay:
        assert send(relay.port, ["alice@example.org"], message()) == 250
        assert relay.stop() == 0
    [line] = [e for e in every_line_is_json(relay.log) if e["event"] == "message"]
    assert line["upstream_status"] is None
    assert line["reply"] == 250


@pytest.mark.parametrize("mode", ["hash", "none"])
def test_recipients_can_be_hashed_or_dropped(tmp_path: Path, standin: StandIn, mode: str) -> None:
    with relay_process(tmp_path, **standin_env(standin, RELAY_LOG_RECIPIENTS=mode)) as relay:
        assert send(relay.port, ["Alice@Example.org"], message()) == 250
        assert relay.stop() == 0
    assert "alice@example.org" not in relay.log.read_text().lower()
    [line] = [e for e in every_line_is_json(relay.log) if e["event"] == "message"]
    assert line["rcpt_count"] == 1
    if mode == "hash":
        assert line["to"] == [recipient_hash("alice@example.org")]
        assert line["to"][0].startswith("sha256:")
        assert len(line["to"][0]) == 23
    else:
        assert "to" not in line


def refusing_202(refused: str, *, queued: str = "alice@example.org") -> Scripted:
    """A 202 queuing ``queued`` and refusing ``refused`` (suppressed)."""
    data = [
        {"object": "message", "id": "<q@ahasend.test>", "recipient": {"email": queued, "name": ""},
         "status": "queued", "error": None},
        {"object": "message", "id": None, "recipient": {"email": refused, "name": "Bob Secret"},
         "status": "error", "error": "recipient is suppressed"},
    ]  # fmt: skip
    return Scripted(202, {"object": "list", "data": data})


@pytest.mark.parametrize("mode", ["hash", "none"])
def test_no_log_line_shows_a_recipient_unless_asked(
    tmp_path: Path, standin: StandIn, mode: str
) -> None:
    """Refused recipients, NothingQueued details and dry-run payloads too."""
    both = ["Alice@Example.org", "bob@example.net"]
    standin.script(refusing_202("bob@example.net"))
    standin.script(Scripted(202, {"object": "list", "data": [
        {"object": "message", "id": None, "recipient": {"email": r.lower(), "name": ""},
         "status": "error", "error": "recipient is suppressed"} for r in both]}))  # fmt: skip
    env = standin_env(standin, RELAY_LOG_RECIPIENTS=mode, RELAY_LOG_LEVEL="debug")
    with relay_process(tmp_path, **env) as relay:
        assert send(relay.port, both, message()) == 250  # bob refused inside the 202
        assert send(relay.port, both, message("<m2@example.com>")) == 554  # nothing queued
        assert relay.stop() == 0
    with relay_process(tmp_path, "--dry-run", RELAY_LOG_RECIPIENTS=mode) as dry:
        assert send(dry.port, both, message("<m3@example.com>")) == 250
        assert dry.stop() == 0
    for log in (relay.log, dry.log):
        text = log.read_text(encoding="utf-8").lower()
        assert "example.org" not in text, log
        assert "bob@example.net" not in text, log
        assert "bob secret" not in text
    events = every_line_is_json(relay.log) + every_line_is_json(dry.log)
    [refused] = [e for e in events if e["event"] == "recipients_refused"]
    shown = [{"recipient": recipient_hash("bob@example.net")}] if mode == "hash" else [{}]
    assert refused["refused"] == [s | {"reason": "recipient is suppressed"} for s in shown]
    [dry_run] = [e for e in events if e["event"] == "dry_run"]
    if mode == "hash":
        assert dry_run["payload"]["to"] == [{"email": recipient_hash("alice@example.org")}]
    else:
        assert "to" not in dry_run["payload"]
    assert {e["event"] for e in events} >= {"message", "recipients_refused", "dry_run"}


# -- in-process: the stdlib route -----------------------------------------------------------


@pytest.fixture
def restore_logging() -> Any:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if type(h).__name__ == "_StdlibHandler"]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def test_stdlib_records_are_scrubbed_and_rendered_like_ours(restore_logging: Any) -> None:
    out = io.StringIO()
    configure(fmt="json", level="info", secrets=["aha-sk-hidden"], stream=out)
    logging.getLogger("httpx").info("quiet below warning at info level")
    logging.getLogger("asyncio").warning("key aha-sk-hidden in %s", "text")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # pytest records warnings itself; hand them to logging as a plain process would.
        logging.captureWarnings(False)
        logging.captureWarnings(True)
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    try:
        raise ValueError("boom aha-sk-hidden")
    except ValueError:
        logging.getLogger("aiohttp.client").exception("failed")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["logger_name"], e["level"]) for e in events] == [
        ("asyncio", "warning"), ("py.warnings", "warning"), ("aiohttp.client", "error"),
    ]  # fmt: skip
    assert "aha-sk-hidden" not in out.getvalue()
    assert events[0]["event"] == "key [REDACTED] in text"
    assert events[2]["exception"][0]["exc_type"] == "ValueError"


def test_console_format_renders_stdlib_records_too(restore_logging: Any) -> None:
    out = io.StringIO()
    configure(fmt="console", level="debug", stream=out)
    logging.getLogger("mail.log").debug("peer said hello")
    [line] = out.getvalue().splitlines()
    assert "peer said hello" in line
    assert "[mail.log]" in line


def test_configure_again_replaces_the_stdlib_route(restore_logging: Any) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure(fmt="json", stream=first)
    configure(fmt="json", stream=second)
    logging.getLogger("asyncio").error("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1
