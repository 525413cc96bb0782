"""End to end: the SMTP idle timer measures the client, never the relay's own work.

``RELAY_SMTP_TIMEOUT`` stops once the DATA section is read (translation, the API call,
in-transaction retries, the spool) and restarts after the reply. A slow API is answered
and logged; an idle client is still cut with ``421 4.4.2``, before and after a message.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import structlog

from relay.ops.log import configure
from tests.harness import RunningRelay, running_relay, settings_for
from tests.rawsmtp import RawSMTP
from tests.standin import Scripted, StandIn

pytestmark = pytest.mark.e2e

SMTP_TIMEOUT = 1.0
IDLE_REPLY = "421 4.4.2 Timeout exceeded, closing connection"
CONTENT = (
    b"From: App <app@example.com>\r\nTo: ann@example.net\r\nSubject: Slow\r\n"
    b"Message-ID: <slow@example.com>\r\n\r\nBody.\r\n"
)


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """The relay's JSON log lines, as written."""
    out = io.StringIO()
    configure(fmt="json", stream=out)
    try:
        yield out
    finally:
        structlog.reset_defaults()


def message_lines(out: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in out.getvalue().splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("event") == "message"]


def transaction(
    smtp: RawSMTP, halves: tuple[bytes, bytes] = (CONTENT, b""), pause: float = 0.0
) -> str:
    """EHLO, envelope, DATA sent in two halves ``pause`` seconds apart; the DATA reply."""
    assert smtp.cmd("EHLO client.test").startswith("250")
    smtp.envelope("app@example.com", "ann@example.net")
    smtp.send(halves[0])
    time.sleep(pause)
    smtp.send(halves[1] + b".\r\n")
    return smtp.reply()


def relay_for(standin: StandIn, **overrides: Any) -> AbstractContextManager[RunningRelay]:
    settings = settings_for(standin, relay_smtp_timeout=SMTP_TIMEOUT, **overrides)
    return running_relay(settings)


def idle_until_cut(smtp: RawSMTP) -> float:
    """Seconds until the relay cuts the idle connection with ``421 4.4.2`` (asserted)."""
    started = time.monotonic()
    assert smtp.reply() == IDLE_REPLY
    assert smtp.closed()
    return time.monotonic() - started


def test_an_api_answer_slower_than_the_idle_timeout_is_answered_and_logged(
    standin: StandIn, logs: io.StringIO
) -> None:
    standin.script(Scripted(202, delay=2.5 * SMTP_TIMEOUT))
    with relay_for(standin) as relay, RawSMTP(relay.port) as smtp:
        reply = transaction(smtp)
        assert reply.startswith("250 2.0.0 Queued: ")
        assert smtp.cmd("NOOP") == "250 2.0.0 OK"  # the session outlived the wait
    assert len(standin.accepted) == 1
    [line] = message_lines(logs)
    assert line["reply"] == 250
    assert line["latency_ms"] >= 2500


def test_a_slow_failing_api_gets_its_4xx_not_a_timeout(standin: StandIn, logs: io.StringIO) -> None:
    standin.script(Scripted(503, delay=2.5 * SMTP_TIMEOUT))
    with relay_for(standin) as relay, RawSMTP(relay.port) as smtp:
        assert transaction(smtp) == "451 4.3.0 Upstream API error, try again later"
    [line] = message_lines(logs)
    assert line["reply"] == 451


def test_a_slow_api_with_a_spool_is_queued_not_a_timeout(
    standin: StandIn, tmp_path: Path, logs: io.StringIO
) -> None:
    standin.script(Scripted(503, delay=2.5 * SMTP_TIMEOUT))
    with relay_for(standin, relay_spool_dir=tmp_path) as relay, RawSMTP(relay.port) as smtp:
        assert transaction(smtp) == "250 2.0.0 Queued for delivery: spool id 1"
    [line] = message_lines(logs)
    assert (line["reply"], line["spooled"]) == (250, [1])


def test_the_idle_timer_restarts_after_the_reply(standin: StandIn) -> None:
    standin.script(Scripted(202, delay=1.5 * SMTP_TIMEOUT))
    with relay_for(standin) as relay, RawSMTP(relay.port) as smtp:
        assert transaction(smtp).startswith("250 ")
        waited = idle_until_cut(smtp)
    assert 0.7 * SMTP_TIMEOUT <= waited <= 3 * SMTP_TIMEOUT  # a fresh, full period


def test_an_idle_client_is_still_cut(standin: StandIn) -> None:
    with relay_for(standin) as relay, RawSMTP(relay.port) as smtp:
        assert smtp.cmd("EHLO client.test").startswith("250")
        waited = idle_until_cut(smtp)
    assert waited <= 3 * SMTP_TIMEOUT
    assert standin.requests == []


def test_a_client_stalling_inside_data_is_still_cut(standin: StandIn) -> None:
    """The pause starts once the DATA section is complete, not at the DATA command."""
    with relay_for(standin) as relay, RawSMTP(relay.port) as smtp:
        assert smtp.cmd("EHLO client.test").startswith("250")
        smtp.envelope("app@example.com", "ann@example.net")
        smtp.send(CONTENT[:40])
        idle_until_cut(smtp)
    assert standin.requests == []
