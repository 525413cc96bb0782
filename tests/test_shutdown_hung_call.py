"""End to end: shutdown while an API call hangs past ``RELAY_SHUTDOWN_TIMEOUT``.

The client always gets a reply: with a spool the request is spooled with the
Idempotency-Key of the abandoned call and answered 250 (then delivered once by the next
relay on that spool); without one it is answered ``421 4.3.2``. Never a silent close:
a client still uploading its DATA when the grace period ends gets ``421 4.3.2`` too.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from relay.delivery.spool import SpoolEntry, SqliteSpool
from tests.harness import RunningRelay, running_relay, settings_for
from tests.rawsmtp import RawSMTP
from tests.standin import Scripted, StandIn

pytestmark = pytest.mark.e2e

GRACE = 1.0
QUEUED = b"2.0.0 Queued for delivery: spool id 1"
SHUTTING_DOWN = b"4.3.2 Service shutting down, try again later"


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "App <app@example.com>"
    msg["To"] = "ann@example.net"
    msg["Subject"] = "Hung at shutdown"
    msg["Message-ID"] = "<hung@example.com>"
    msg.set_content("Body.\n")
    return msg


def stop_during_hung_call(standin: StandIn, **overrides: Any) -> tuple[tuple[int, bytes], float]:
    """Send one message, stop the relay while the stand-in hangs on it.

    Returns the DATA reply and the seconds from the stop to that reply; asserts the
    session is closed afterwards.
    """
    standin.script(Scripted(0, hang=True))
    # The API timeout is far longer than the grace period: the call is still running.
    relay = RunningRelay(
        settings_for(standin, ahasend_api_timeout=60.0, relay_spool_lease=120.0, **overrides)
    ).start()
    client = smtplib.SMTP("127.0.0.1", relay.port, timeout=30)
    client.ehlo("client.test")
    client.mail("app@example.com")
    client.rcpt("ann@example.net")
    replies: list[tuple[tuple[int, bytes], float]] = []

    def data() -> None:
        reply = client.data(message().as_bytes())
        replies.append((reply, time.monotonic()))

    thread = threading.Thread(target=data)
    thread.start()
    try:
        standin.wait_for(1)
    finally:
        stopped = time.monotonic()
        relay.stop(timeout=GRACE)
    thread.join(10)
    try:
        assert client.noop()[0] == 421  # then the session was closed
    finally:
        client.close()
    [(reply, at)] = replies
    return reply, at - stopped


def entries_in(spool_dir: Path) -> list[SpoolEntry]:
    async def read() -> list[SpoolEntry]:
        spool = SqliteSpool(spool_dir)
        try:
            return await spool.entries()
        finally:
            await spool.close()

    return asyncio.run(read())


def test_with_a_spool_the_hung_call_is_spooled_answered_250_and_delivered_once(
    standin: StandIn, tmp_path: Path
) -> None:
    reply, after = stop_during_hung_call(
        standin, relay_spool_dir=tmp_path, relay_spool_retry_min=0.1
    )
    assert reply == (250, QUEUED)
    assert GRACE * 0.9 <= after <= GRACE + 4.0
    [attempted] = standin.requests
    [entry] = entries_in(tmp_path)
    assert entry.state == "queued"
    assert entry.idempotency_key == attempted.idempotency_key
    assert standin.accepted == []
    settings = settings_for(standin, relay_spool_dir=tmp_path, relay_spool_retry_min=0.1)
    with running_relay(settings):  # the next relay on this spool delivers it
        deadline = time.monotonic() + 15
        while not standin.accepted and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a second delivery would show up now
    [delivered] = standin.accepted
    assert delivered.idempotency_key == attempted.idempotency_key
    assert delivered.json["subject"] == "Hung at shutdown"
    [entry] = entries_in(tmp_path)
    assert entry.state == "delivered"


def test_without_a_spool_the_hung_call_is_answered_421(standin: StandIn) -> None:
    reply, after = stop_during_hung_call(standin)
    assert reply == (421, SHUTTING_DOWN)
    assert GRACE * 0.9 <= after <= GRACE + 4.0
    assert len(standin.requests) == 1
    assert standin.accepted == []


def test_a_client_still_uploading_when_the_grace_period_ends_gets_421(standin: StandIn) -> None:
    relay = RunningRelay(settings_for(standin)).start()
    with RawSMTP(relay.port) as smtp:
        assert smtp.cmd("EHLO client.test").startswith("250")
        smtp.envelope("app@example.com", "ann@example.net")
        smtp.send(b"Subject: never finished\r\n\r\nThe first line")
        started = time.monotonic()
        relay.stop(timeout=GRACE)
        assert time.monotonic() - started <= GRACE + 2.0  # no extra wait: not delivering
        assert smtp.reply() == "421 " + SHUTTING_DOWN.decode()
        assert smtp.closed()
    assert standin.requests == []
