"""Secrets never reach the log, whatever key or text they hide in."""

from __future__ import annotations

import io
import json

import structlog

from relay.ops.log import configure, get_logger


def test_secret_values_and_keys_are_scrubbed_from_json() -> None:
    out = io.StringIO()
    scrubber = configure(fmt="json", secrets=["aha-sk-supersecret"], stream=out)
    scrubber.add("hunter2")
    log = get_logger("t")
    log.info("x", password="hunter2", note="key aha-sk-supersecret in text",
             nested={"authorization": "Bearer z", "ok": ["hunter2 here"]})  # fmt: skip
    try:
        raise RuntimeError("failed with aha-sk-supersecret")
    except RuntimeError:
        log.exception("boom")
    text = out.getvalue()
    assert "aha-sk-supersecret" not in text
    assert "hunter2" not in text
    first = json.loads(text.splitlines()[0])
    assert first["password"] == "[REDACTED]"
    assert first["nested"]["authorization"] == "[REDACTED]"
    assert "RuntimeError" in text


def test_contextvars_are_merged_and_console_format_works() -> None:
    out = io.StringIO()
    configure(fmt="console", stream=out)
    structlog.contextvars.bind_contextvars(session_id="abc123")
    try:
        get_logger("t").info("hello")
    finally:
        structlog.contextvars.clear_contextvars()
    assert "session_id=abc123" in out.getvalue()


def test_level_filters() -> None:
    out = io.StringIO()
    configure(fmt="json", level="warning", stream=out)
    get_logger("t").info("quiet")
    get_logger("t").warning("loud")
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["loud"]


def test_tracebacks_carry_no_local_variables() -> None:
    out = io.StringIO()
    configure(fmt="json", stream=out)

    def fails(body: bytes) -> None:
        start_of_body = body[:40].decode()
        raise ValueError(f"cannot read {len(start_of_body)} chars")

    try:
        fails(b"Subject: Private\r\n\r\nConfidential salary figures")
    except ValueError:
        get_logger("t").exception("internal_error")
    text = out.getvalue()
    assert "ValueError" in text
    assert "Confidential" not in text
    assert "Private" not in text
    assert '"locals"' not in text
