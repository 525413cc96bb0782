"""End to end: RELAY_MAX_INFLIGHT_BYTES refuses DATA with 452 4.3.1 and is given back.

A real relay (port 0) forwards to the stand-in API, which holds the first message's
answer for a while, so that message stays in flight while a second client sends DATA.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Callable

import pytest

from relay.smtp.replies import INFLIGHT_BUDGET_FULL
from tests.harness import RunningRelay, running_relay, settings_for
from tests.standin import Scripted, StandIn

pytestmark = pytest.mark.e2e

FULL_TEXT = f"{INFLIGHT_BUDGET_FULL.enhanced} {INFLIGHT_BUDGET_FULL.text}"
HELD = 1.5
"""Seconds the stand-in holds the first message's answer."""


def message(subject: str, body_bytes: int) -> bytes:
    """A message of exactly ``len(head) + body_bytes`` octets, CRLF lines, no leading dot."""
    head = f"From: app@example.com\r\nTo: ann@example.net\r\nSubject: {subject}\r\n\r\n"
    line = "x" * 98 + "\r\n"
    body = (line * (body_bytes // len(line) + 1))[: body_bytes - 2] + "\r\n"
    return (head + body).encode("ascii")


def send(port: int, raw: bytes) -> tuple[int, str]:
    """MAIL, RCPT, DATA with smtplib; DATA's reply (the one to the DATA command if refused)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail("app@example.com")[0] == 250
        assert client.rcpt("ann@example.net")[0] == 250
        try:
            code, text = client.data(raw)
        except smtplib.SMTPDataError as exc:
            code, text = exc.smtp_code, exc.smtp_error
        return code, text.decode()


def in_background(call: Callable[[], tuple[int, str]]) -> Callable[[], tuple[int, str]]:
    """Run ``call`` in a thread; the returned function joins it and gives its result."""
    result: list[tuple[int, str]] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()

    def join() -> tuple[int, str]:
        thread.join(30)
        return result[0]

    return join


def used(relay: RunningRelay) -> int:
    assert relay.server is not None
    return relay.server.guard.inflight.used


def wait_until_used(relay: RunningRelay, at_least: int, timeout: float = 10.0) -> None:
    ends = time.monotonic() + timeout
    while used(relay) < at_least:
        assert time.monotonic() < ends, f"in flight: {used(relay)} bytes, not {at_least}"
        time.sleep(0.01)


def test_data_finding_the_budget_spent_gets_452_431_before_the_content(
    standin: StandIn,
) -> None:
    first = message("first", 30_000)
    budget = len(first) + len(b".\r\n")  # the first message's DATA section spends it all
    standin.script(Scripted(202, delay=HELD))
    settings = settings_for(standin, relay_max_inflight_bytes=budget, relay_max_message_size=budget)
    with running_relay(settings) as relay:
        pending = in_background(lambda: send(relay.port, first))
        wait_until_used(relay, budget)
        assert send(relay.port, message("second", 100)) == (452, FULL_TEXT)
        code, _ = pending()
        assert code == 250
        assert used(relay) == 0  # given back once the first message was delivered
        assert send(relay.port, message("third", 100))[0] == 250
    subjects = [r.json["subject"] for r in standin.requests if r.json]
    assert subjects == ["first", "third"]


def test_data_that_would_overrun_the_budget_is_read_refused_and_given_back(
    standin: StandIn,
) -> None:
    first = message("first", 30_000)
    budget = len(first) * 3 // 2
    standin.script(Scripted(202, delay=HELD))
    settings = settings_for(
        standin, relay_max_inflight_bytes=budget, relay_max_message_size=len(first) + 10
    )
    with running_relay(settings) as relay:
        pending = in_background(lambda: send(relay.port, first))
        wait_until_used(relay, len(first))
        assert send(relay.port, message("second", 30_000)) == (452, FULL_TEXT)
        assert used(relay) == len(first) + 3  # the refused one took nothing for good
        assert pending()[0] == 250
        assert used(relay) == 0
        assert send(relay.port, message("second again", 30_000))[0] == 250
        assert used(relay) == 0
    subjects = [r.json["subject"] for r in standin.requests if r.json]
    assert subjects == ["first", "second again"]
