"""End to end: retries, the spool and bounces with a real relay, stand-in and smtplib.

Fault injection happens in the stand-in API (scripted statuses, Retry-After, hang, reset,
slow answers, or the whole API down); the relay is driven as an application would.
"""

from __future__ import annotations

import asyncio
import base64
import email.policy
import io
import json
import os
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog

from relay.config import Settings
from relay.delivery.api import AhaSendClient
from relay.delivery.policy import SpoolPolicy
from relay.delivery.spool import SpoolEntry, SpoolStats, SqliteSpool
from relay.delivery.worker import SpoolWorker
from relay.ops.log import configure
from relay.translate.elision import ELIDE
from relay.translate.message import translate
from relay.translate.wire import StreamedBody, serialise
from tests.fakes import one_route
from tests.harness import RunningRelay, free_port, running_relay, settings_for
from tests.rawsmtp import RawSMTP
from tests.standin import Scripted, StandIn

pytestmark = pytest.mark.e2e
T = TypeVar("T")

QUEUED_FOR_DELIVERY = "2.0.0 Queued for delivery"


class PortStandIn(StandIn):
    """A stand-in that binds a chosen port, so it can go down and come back at one URL."""

    def __init__(self, port: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fixed_port = port

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", self._fixed_port)

    def relay_settings(self, **more: Any) -> Settings:
        """A relay sending for real to this stand-in's fixed port, up or not (``settings_for``
        with ``more``)."""
        return settings_for(
            None, relay_dry_run=False, ahasend_api_key=self.api_key,
            ahasend_account_id=self.account_id,
            ahasend_api_base_url=f"http://127.0.0.1:{self._fixed_port}", **more,
        )  # fmt: skip


def message(
    subject: str = "Hello", message_id: str | None = None, to: str = "ann@example.net"
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "App <app@example.com>"
    msg["To"] = to
    msg["Subject"] = subject
    if message_id:
        msg["Message-ID"] = message_id
    msg.set_content(f"Body of {subject}.\n")
    return msg


def send(
    relay: RunningRelay, msg: EmailMessage, sender: str = "app@example.com",
    rcpts: tuple[str, ...] = ("ann@example.net",),
) -> tuple[int, str]:  # fmt: skip
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail(sender)[0] == 250
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(msg.as_bytes())
        return code, text.decode()


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    ends = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > ends:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


@pytest.fixture
def retrying_relay(standin: StandIn) -> Iterator[RunningRelay]:
    settings = settings_for(standin, ahasend_api_timeout=0.5, relay_retry_deadline=8.0)
    with running_relay(settings) as relay:
        yield relay


IN_PROGRESS = {"Idempotent-Replayed": "false", "Retry-After": "1"}


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param([Scripted(500), Scripted(503)], id="5xx"),
        pytest.param([Scripted(429, headers={"Retry-After": "1"})], id="429-retry-after"),
        pytest.param([Scripted(429), Scripted(429)], id="429-no-retry-after"),
        pytest.param([Scripted(409, headers=IN_PROGRESS)], id="409-in-progress"),
        pytest.param([Scripted(0, hang=True)], id="hang-past-timeout"),
        pytest.param([Scripted(0, reset=True)], id="connection-reset"),
    ],
)
def test_transient_faults_are_retried_with_one_key(
    retrying_relay: RunningRelay, standin: StandIn, faults: list[Scripted]
) -> None:
    standin.script(*faults)
    code, text = send(retrying_relay, message(message_id="<fault@example.com>"))
    assert code == 250
    assert text.startswith("2.0.0 Queued: ")
    assert len(standin.requests) == len(faults) + 1
    assert len({r.idempotency_key for r in standin.requests}) == 1
    assert len(standin.accepted) == 1


def test_retry_after_is_waited_for(retrying_relay: RunningRelay, standin: StandIn) -> None:
    standin.script(Scripted(429, headers={"Retry-After": "1"}))
    send(retrying_relay, message())
    first, second = standin.requests
    assert second.received_at - first.received_at >= 0.9


def test_a_slow_answer_is_waited_for_not_retried(
    retrying_relay: RunningRelay, standin: StandIn
) -> None:
    standin.script(Scripted(202, delay=0.3))
    assert send(retrying_relay, message())[0] == 250
    assert len(standin.requests) == 1


def test_without_spool_a_lasting_outage_is_a_4xx_after_the_deadline(standin: StandIn) -> None:
    standin.script(*[Scripted(503)] * 50)
    settings = settings_for(standin, relay_retry_deadline=1.0)
    with running_relay(settings) as relay:
        code, text = send(relay, message(message_id="<down@example.com>"))
    assert (code, text) == (451, "4.3.0 Upstream API error, try again later")
    assert len(standin.requests) >= 2
    assert len({r.idempotency_key for r in standin.requests}) == 1


def test_permanent_errors_are_not_retried_nor_spooled(standin: StandIn, tmp_path: Path) -> None:
    standin.script(Scripted(422, {"message": "invalid from"}))
    settings = settings_for(standin, relay_retry_deadline=5.0, relay_spool_dir=tmp_path)
    with running_relay(settings) as relay:
        code, text = send(relay, message())
    assert (code, text) == (554, "5.6.0 Rejected by AhaSend: 422 invalid from")
    assert len(standin.requests) == 1
    assert entries_in(tmp_path) == []


def test_with_spool_a_lasting_outage_is_queued_then_delivered(
    standin: StandIn, tmp_path: Path
) -> None:
    standin.script(*[Scripted(503)] * 3)
    settings = settings_for(
        standin, relay_retry_deadline=0, relay_spool_dir=tmp_path, relay_spool_retry_min=0.1
    )
    with running_relay(settings) as relay:
        code, text = send(relay, message("Spooled"))
        assert (code, text) == (250, f"{QUEUED_FOR_DELIVERY}: spool id 1")
        wait_until(lambda: len(standin.accepted) == 1)
    keys = [r.idempotency_key for r in standin.requests]
    assert len(keys) == 4
    assert len(set(keys)) == 1
    assert standin.accepted[0].json["subject"] == "Spooled"
    [entry] = entries_in(tmp_path)
    assert (entry.state, entry.attempts) == ("delivered", 3)
    assert entry.message_ids == tuple(standin.accepted[0].message_ids)


def entries_in(spool_dir: Path) -> list[SpoolEntry]:
    """The spool's entries, read through a connection of its own."""
    return asyncio.run(_read(spool_dir, lambda spool: spool.entries()))


def stats_of(spool_dir: Path) -> SpoolStats:
    return asyncio.run(_read(spool_dir, lambda spool: spool.stats()))


async def _read(spool_dir: Path, query: Callable[[SqliteSpool], Awaitable[T]]) -> T:
    spool = SqliteSpool(spool_dir)
    try:
        return await query(spool)
    finally:
        await spool.close()


def test_outage_every_message_delivered_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    api = PortStandIn(port)  # not started yet: the API is down, connections are refused
    settings = api.relay_settings(
        relay_retry_deadline=0.5, relay_spool_dir=tmp_path, relay_spool_retry_min=0.2,
        relay_spool_retry_max=0.5,
    )  # fmt: skip
    sent = {f"Outage {i}": f"rcpt{i}@example.net" for i in range(12)}
    with running_relay(settings) as relay:
        for subject, rcpt in sent.items():
            code, text = send(relay, message(subject, to=rcpt), rcpts=(rcpt,))
            assert code == 250
            assert text.startswith(QUEUED_FOR_DELIVERY)
        with api:
            wait_until(lambda: len(api.accepted) >= len(sent), timeout=15)
            time.sleep(0.5)  # anything sent twice would show up now
            accepted = list(api.accepted)
    assert all(r.problems == [] for r in accepted)
    assert Counter(r.json["subject"] for r in accepted) == Counter(sent.keys())
    for r in accepted:
        subject = r.json["subject"]
        assert [a["email"] for a in r.json["to"]] == [sent[subject]]
        assert r.json["text_content"].rstrip() == f"Body of {subject}."
    assert len({r.idempotency_key for r in accepted}) == len(sent)


def test_a_crash_after_the_api_accepted_does_not_send_twice(
    standin: StandIn, tmp_path: Path
) -> None:
    """The worker resends a row whose delivery was never recorded: AhaSend replays."""
    body = (
        b'{"from":{"email":"app@example.com"},"to":[{"email":"ann@example.net"}],'
        b'"subject":"Once","text_content":"x"}'
    )
    spool = SqliteSpool(tmp_path)

    async def scenario() -> SpoolEntry | None:
        entry_id = await spool.add(body, "relay-crash-window", mail_from="app@example.com",
                                   rcpt_tos=["ann@example.net"], error="UpstreamTimeout",
                                   first_retry=0, max_age=60)  # fmt: skip
        client = AhaSendClient(base_url=standin.base_url, api_key=standin.api_key,
                               account_id=standin.account_id)  # fmt: skip
        await client.send(body, "relay-crash-window")  # accepted, then "the relay died"
        worker = SpoolWorker(spool, one_route(client), SpoolPolicy())
        await worker.run_once()
        await client.aclose()
        entry = await spool.get(entry_id)
        await spool.close()
        return entry

    entry = asyncio.run(scenario())
    assert entry is not None
    assert entry.state == "delivered"
    assert len(standin.requests) == 2
    assert len(standin.accepted) == 1
    assert standin.requests[1].replayed


@pytest.mark.parametrize(("envelope_sender", "bounced"), [("app@example.com", True), ("", False)])
def test_a_permanent_rejection_of_a_spooled_message_bounces(
    standin: StandIn, tmp_path: Path, envelope_sender: str, bounced: bool
) -> None:
    standin.script(Scripted(503), Scripted(422, {"message": "recipient domain blocked"}))
    settings = settings_for(
        standin, relay_retry_deadline=0, relay_spool_dir=tmp_path, relay_spool_retry_min=0.1,
        relay_bounce_notices=True, relay_bounce_from="postmaster@example.com",
    )  # fmt: skip
    with running_relay(settings) as relay:
        code, _ = send(relay, message("Doomed"), sender=envelope_sender)
        assert code == 250
        wait_until(lambda: stats_of(tmp_path).dead == 1)
        if bounced:
            wait_until(lambda: len(standin.requests) == 3)
        else:
            time.sleep(0.3)
    [entry] = entries_in(tmp_path)
    assert entry.last_error == "422 recipient domain blocked"
    assert entry.bounced is bounced
    if not bounced:
        assert len(standin.requests) == 2
        return
    notice = standin.requests[2]
    assert notice.problems == []
    assert notice.accepted
    assert notice.json["to"] == [{"email": "app@example.com"}]
    assert notice.json["from"]["email"] == "postmaster@example.com"
    assert "Doomed" in notice.json["subject"]
    assert "422 recipient domain blocked" in notice.json["text_content"]


def test_shutdown_spools_a_transaction_that_is_still_retrying(
    standin: StandIn, tmp_path: Path
) -> None:
    standin.script(*[Scripted(503)] * 100)
    settings = settings_for(standin, relay_retry_deadline=60.0, relay_spool_dir=tmp_path)
    relay = RunningRelay(settings).start()
    client = smtplib.SMTP("127.0.0.1", relay.port, timeout=30)
    client.ehlo("client.test")
    client.mail("app@example.com")
    client.rcpt("ann@example.net")
    replies: list[tuple[int, bytes]] = []
    data = threading.Thread(target=lambda: replies.append(client.data(message().as_bytes())))
    data.start()
    try:
        standin.wait_for(1)
    finally:
        relay.stop(timeout=10)
    data.join(10)
    assert replies == [(250, f"{QUEUED_FOR_DELIVERY}: spool id 1".encode())]
    assert client.noop()[0] == 421  # then the session was closed
    client.close()
    [entry] = entries_in(tmp_path)
    assert entry.state == "queued"


def test_a_spool_that_cannot_be_written_gives_a_4xx_never_a_250(
    standin: StandIn, tmp_path: Path
) -> None:
    standin.script(Scripted(503))
    settings = settings_for(standin, relay_retry_deadline=0, relay_spool_dir=tmp_path)
    with running_relay(settings) as relay:
        assert relay.server is not None
        assert relay.server.spool is not None
        relay.call(relay.server.spool.close())  # e.g. the disk is gone
        code, text = send(relay, message())
    assert (code, text) == (451, "4.3.0 Spool unavailable, try again later")


def test_pacing_spools_what_it_cannot_send_within_the_deadline(
    standin: StandIn, tmp_path: Path
) -> None:
    settings = settings_for(
        standin, relay_api_rate=0.5, relay_api_burst=1, relay_retry_deadline=0.3,
        relay_spool_dir=tmp_path, relay_spool_retry_min=0.1,
    )  # fmt: skip
    with running_relay(settings) as relay:
        first = send(relay, message("First"))
        second = send(relay, message("Second"))  # the next slot is ~2 s away
        assert first[0] == second[0] == 250
        assert first[1].startswith("2.0.0 Queued: ")
        assert second[1] == f"{QUEUED_FOR_DELIVERY}: spool id 1"
        wait_until(lambda: len(standin.accepted) == 2)
    assert [r.json["subject"] for r in standin.requests] == ["First", "Second"]
    assert [r.response_status for r in standin.requests] == [202, 202]


OUTAGES = {
    "refused": None,
    "503": Scripted(503),
    "hang": Scripted(0, hang=True),
}


@pytest.mark.parametrize("outage", list(OUTAGES))
def test_outage_with_spool_replies_at_once_after_the_breaker_opens(
    outage: str, tmp_path: Path
) -> None:
    """Default retry settings (60 s deadline): p95 of DATA → reply ≤ 1 s after 3 messages."""
    port = free_port()
    api = PortStandIn(port)
    settings = api.relay_settings(
        ahasend_api_timeout=1.0 if outage == "hang" else 5.0, relay_retry_deadline=60.0,
        relay_spool_dir=tmp_path, relay_spool_retry_min=0.5, relay_spool_retry_max=1.0,
    )  # fmt: skip
    fault = OUTAGES[outage]
    if fault is not None:
        api.start()
        api.script(*[fault] * 10_000)
    sent = {f"Breaker {i}": f"rcpt{i}@example.net" for i in range(23)}
    took: list[float] = []
    with running_relay(settings) as relay:
        for subject, rcpt in sent.items():
            started = time.monotonic()
            code, text = send(relay, message(subject, to=rcpt), rcpts=(rcpt,))
            took.append(time.monotonic() - started)
            assert code == 250
            assert text.startswith(QUEUED_FOR_DELIVERY)
        if fault is None:
            api.start()
        else:
            api.clear()
        wait_until(lambda: len(api.accepted) >= len(sent), timeout=30)
        time.sleep(1.0)  # anything sent twice would show up now
        accepted = list(api.accepted)
    api.stop()
    assert p95(took[3:]) <= 1.0, took
    assert Counter(r.json["subject"] for r in accepted) == Counter(sent.keys())
    # Exactly once, counted by Idempotency-Key at the stand-in: every acknowledged
    # (spooled) request was executed once, with the key it was spooled with.
    spooled_keys = [e.idempotency_key for e in entries_in(tmp_path)]
    assert len(spooled_keys) == len(sent)
    assert Counter(r.idempotency_key for r in accepted) == Counter(spooled_keys)
    assert all(e.state == "delivered" for e in entries_in(tmp_path))


def p95(seconds: list[float]) -> float:
    """The 95th percentile (nearest rank) of ``seconds``."""
    ordered = sorted(seconds)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


@pytest.mark.parametrize("outage", list(OUTAGES))
def test_outage_without_spool_answers_4xx_at_once_after_the_breaker_opens(outage: str) -> None:
    """Default retry settings, no spool: the 4xx comes at once, and nothing is sent twice."""
    port = free_port()
    api = PortStandIn(port)
    settings = api.relay_settings(
        ahasend_api_timeout=1.0 if outage == "hang" else 5.0, relay_retry_deadline=60.0,
    )  # fmt: skip
    fault = OUTAGES[outage]
    if fault is not None:
        api.start()
        api.script(*[fault] * 10_000)
    took: list[float] = []
    with running_relay(settings) as relay:
        for i in range(13):
            started = time.monotonic()
            code, _ = send(relay, message(f"Down {i}", to=f"rcpt{i}@example.net"),
                           rcpts=(f"rcpt{i}@example.net",))  # fmt: skip
            took.append(time.monotonic() - started)
            assert code == 451
        attempts = list(api.requests) if fault is not None else []
    api.stop()
    assert p95(took[3:]) <= 1.0, took
    assert api.accepted == []  # nothing acknowledged, nothing delivered
    if fault is not None:  # the breaker stopped the attempts: a few probes at most
        assert len(attempts) <= 3 + len(took) // 2, len(attempts)


def test_a_slow_upload_during_an_outage_is_spooled_then_delivered_once(
    standin: StandIn, tmp_path: Path
) -> None:
    """A client uploading slowly, then in-transaction retries against a slow failing API:
    together longer than RELAY_SMTP_TIMEOUT, still answered (the idle timer is paused
    while the relay works), spooled, and delivered once after recovery."""
    standin.script(*[Scripted(503, delay=1.0)] * 50)
    settings = settings_for(
        standin, relay_smtp_timeout=3.0, relay_retry_deadline=2.5, ahasend_api_timeout=2.0,
        relay_spool_dir=tmp_path, relay_spool_retry_min=0.5, relay_spool_retry_max=1.0,
    )  # fmt: skip
    content = message("Slow upload", message_id="<slow-upload@example.com>").as_bytes()
    content = content.replace(b"\n", b"\r\n")
    with running_relay(settings) as relay:
        with RawSMTP(relay.port) as smtp:
            assert smtp.cmd("EHLO client.test").startswith("250")
            smtp.envelope("app@example.com", "ann@example.net")
            started = time.monotonic()
            smtp.send(content[:100])
            time.sleep(1.5)  # the client's upload takes a while
            smtp.send(content[100:] + b".\r\n")
            reply = smtp.reply()
            took = time.monotonic() - started
            assert reply == "250 2.0.0 Queued for delivery: spool id 1"
            assert took > 3.0  # longer than RELAY_SMTP_TIMEOUT, and still answered
            assert smtp.cmd("NOOP") == "250 2.0.0 OK"
        [entry] = entries_in(tmp_path)
        attempted = {r.idempotency_key for r in standin.requests}  # during the outage
        standin.clear()  # AhaSend is back
        wait_until(lambda: len(standin.accepted) == 1)
        time.sleep(1.5)  # a second delivery would show up now
        attempted |= {r.idempotency_key for r in standin.requests}
    assert attempted == {entry.idempotency_key}
    [delivered] = standin.accepted
    assert delivered.idempotency_key == entry.idempotency_key
    assert delivered.json["subject"] == "Slow upload"
    assert entries_in(tmp_path)[0].state == "delivered"


@pytest.mark.parametrize(
    "body",
    [
        {"data": [{"status": "error", "recipient": "oops"}]},
        {"data": "not a list"},
        b"<html>Secret-Looking Body</html>",
    ],
    ids=["recipient-not-object", "data-not-list", "not-json"],
)
def test_a_malformed_2xx_counts_as_accepted(body: Any, standin: StandIn) -> None:
    out = io.StringIO()
    configure(fmt="json", stream=out)
    standin.script(Scripted(202, body))
    try:
        with running_relay(settings_for(standin)) as relay:
            code, _ = send(relay, message("Confidential payroll"))
    finally:
        structlog.reset_defaults()
    assert code == 250
    assert len(standin.requests) == 1
    logs = out.getvalue()
    [warning] = [json.loads(x) for x in logs.splitlines() if "malformed_accepted" in x]
    assert warning["status"] == 202
    assert warning["level"] == "warning"
    assert "Traceback" not in logs
    assert "internal_error" not in logs
    assert "Confidential" not in warning["problem"]
    assert "Secret-Looking" not in logs


def _large(kind: str) -> bytes:
    """Over the elision threshold: a PDF attached, or (``forwarded``) a message holding one."""
    msg = message("Large")
    msg.add_attachment(os.urandom(ELIDE.message), maintype="application", subtype="pdf",
                       filename="big.pdf")  # fmt: skip
    if kind == "forwarded":
        outer = message("Fwd: Large")
        outer.add_attachment(msg)
        msg = outer
    return msg.as_bytes(policy=email.policy.SMTP)


@pytest.mark.parametrize("kind", ["pdf", "forwarded"])
@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
def test_a_large_attachment_is_streamed_whole_and_resent_whole_after_a_fault(
    standin: StandIn, transport: str, kind: str
) -> None:
    """A message over the elision threshold: its attachment (a file, or an attached message
    sent byte for byte) is streamed (Content-Length, not chunked) by either transport; the
    stand-in (validating against the spec) gets the very JSON the plain path serialises,
    on the failed attempt and on the retry."""
    raw = _large(kind)
    plain = translate(raw, "app@example.com", ["ann@example.net"], elide=None)
    expected = serialise(plain.payloads[0])
    assert isinstance(expected, bytes)
    assert isinstance(serialise(translate(raw, "app@example.com", ["ann@example.net"])
                                .payloads[0]), StreamedBody)  # fmt: skip
    settings = settings_for(standin, relay_retry_deadline=8.0, ahasend_api_transport=transport)
    standin.script(Scripted(503))
    with running_relay(settings) as relay, smtplib.SMTP("127.0.0.1", relay.port) as client:
        client.sendmail("app@example.com", ["ann@example.net"], raw)
    assert [r.response_status for r in standin.requests] == [503, 202]
    for request in standin.requests:
        assert request.body == expected
        assert request.headers["content-length"] == str(len(expected))
        assert "transfer-encoding" not in request.headers
    (sent,) = json.loads(expected)["attachments"]
    if kind == "forwarded":  # the attached message exactly as it is in the received bytes
        assert sent["content_type"] == "message/rfc822"
        assert base64.b64decode(sent["data"]) in raw
        assert base64.b64decode(sent["data"]).startswith(b"From: App <app@example.com>\r\n")
