"""Dispatcher: send now, or spool what the API could not take (and only then say 250)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relay.delivery.dispatch import Dispatcher, GraceOver
from relay.delivery.policy import Backoff, SpoolPolicy
from relay.delivery.route import DEFAULT_ROUTE, Route, SingleRouter, Submission
from relay.delivery.sender import Delivery
from relay.delivery.spool import SqliteSpool
from relay.errors import (
    ShuttingDown,
    SpoolRefused,
    SpoolUnavailable,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamUnreachable,
)
from relay.smtp.replies import SERVICE_NOT_AVAILABLE, SPOOL_UNAVAILABLE, reply_for
from relay.translate.rawslice import RawBase64
from relay.translate.wire import StreamedBody, serialise
from tests.fakes import ACCEPTED, ScriptedSender, one_route

SUBMISSION = Submission("a@x.org", ("b@y.org",))


async def test_without_a_spool_transient_errors_reach_the_client() -> None:
    sender = ScriptedSender([UpstreamServerError("503")])
    with pytest.raises(UpstreamServerError):
        await Dispatcher(one_route(sender)).send_all([b"1"], ["k"], SUBMISSION)


async def test_permanent_errors_are_never_spooled(tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path)
    sender = ScriptedSender([UpstreamRejected("422")])
    with pytest.raises(UpstreamRejected):
        await Dispatcher(one_route(sender), spool).send_all([b"1"], ["k"], SUBMISSION)
    assert await spool.entries() == []
    await spool.close()


async def test_the_failed_request_and_the_rest_are_spooled(tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path)
    sender = ScriptedSender([ACCEPTED, UpstreamServerError("503"), ACCEPTED])
    dispatcher = Dispatcher(
        one_route(sender), spool, SpoolPolicy(backoff=Backoff(base=5, cap=5), max_age=50)
    )
    deliveries = await dispatcher.send_all([b"1", b"2", b"3"], ["k0", "k1", "k2"], SUBMISSION)
    assert sender.keys == ["k0", "k1"]  # no attempt for k2 once the API failed
    assert deliveries[0] is ACCEPTED
    assert [d.spooled for d in deliveries] == [False, True, True]
    entries = await spool.entries()
    assert [(e.idempotency_key, e.mail_from, e.rcpt_tos) for e in entries] == [
        ("k1", "a@x.org", ("b@y.org",)),
        ("k2", "a@x.org", ("b@y.org",)),
    ]
    assert [d.spool_id for d in deliveries[1:]] == [e.id for e in entries]
    assert entries[0].last_error == "UpstreamServerError: 503"
    await spool.close()


async def test_a_spool_that_cannot_write_means_a_transient_reply(tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path)
    await spool.close()  # every write now fails
    sender = ScriptedSender([UpstreamServerError("503")])
    with pytest.raises(SpoolRefused) as refused:
        await Dispatcher(one_route(sender), spool).send_all([b"1"], ["k"], SUBMISSION)
    assert str(reply_for(refused.value)) == "451 4.3.0 Spool unavailable, try again later"
    assert str(SPOOL_UNAVAILABLE) == "451 4.3.0 Spool unavailable, try again later"


async def test_a_spool_that_is_down_sends_past_an_open_breaker(tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path)
    await spool.close()
    with pytest.raises(SpoolUnavailable):
        await spool.stats()  # the spool now reports itself unavailable
    assert not spool.available
    breaker_open = ScriptedSender([UpstreamUnreachable("circuit open")])
    past_breaker = ScriptedSender([ACCEPTED])
    route = Route(DEFAULT_ROUTE, "", breaker_open, breaker_open, past_breaker=past_breaker)
    deliveries = await Dispatcher(SingleRouter(route), spool).send_all([b"1"], ["k"], SUBMISSION)
    assert deliveries == [ACCEPTED]
    assert (breaker_open.keys, past_breaker.keys) == ([], ["k"])


async def test_a_healthy_spool_leaves_the_breaker_in_charge(tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path)
    breaker_open = ScriptedSender([UpstreamUnreachable("circuit open")])
    past_breaker = ScriptedSender([ACCEPTED])
    route = Route(DEFAULT_ROUTE, "", breaker_open, breaker_open, past_breaker=past_breaker)
    [delivery] = await Dispatcher(SingleRouter(route), spool).send_all([b"1"], ["k"], SUBMISSION)
    assert delivery.spooled
    assert past_breaker.keys == []
    await spool.close()


class HangingSender(ScriptedSender):
    """Never answers: each call waits until it is cancelled (counted in ``cancelled``)."""

    def __init__(self) -> None:
        super().__init__([ACCEPTED])
        self.cancelled = 0
        self.called = asyncio.Event()

    async def send(self, body: bytes, idempotency_key: str) -> Delivery:
        self.calls.append((body, idempotency_key))
        self.called.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")


async def end_grace_when_called(sender: HangingSender, grace_over: asyncio.Event) -> None:
    await sender.called.wait()
    grace_over.set()


async def test_a_call_running_when_the_grace_period_ends_is_abandoned_421() -> None:
    sender, grace_over = HangingSender(), GraceOver()
    dispatcher = Dispatcher(one_route(sender), grace_over=grace_over)
    ending = asyncio.ensure_future(end_grace_when_called(sender, grace_over))
    with pytest.raises(ShuttingDown, match="grace period"):
        await asyncio.wait_for(dispatcher.send_all([b"1"], ["k"], SUBMISSION), 5)
    await ending
    assert sender.cancelled == 1
    assert reply_for(ShuttingDown()) == SERVICE_NOT_AVAILABLE


async def test_a_call_running_when_the_grace_period_ends_is_spooled_with_its_key(
    tmp_path: Path,
) -> None:
    spool, sender, grace_over = SqliteSpool(tmp_path), HangingSender(), GraceOver()
    dispatcher = Dispatcher(one_route(sender), spool, grace_over=grace_over)
    ending = asyncio.ensure_future(end_grace_when_called(sender, grace_over))
    deliveries = await asyncio.wait_for(
        dispatcher.send_all([b"1", b"2"], ["k0", "k1"], SUBMISSION), 5
    )
    await ending
    assert [d.spooled for d in deliveries] == [True, True]
    assert sender.keys == ["k0"]  # no new call once the grace period is over
    entries = await spool.entries()
    assert [e.idempotency_key for e in entries] == ["k0", "k1"]
    assert entries[0].last_error is not None
    assert entries[0].last_error.startswith("ShuttingDown: API call still running")
    await spool.close()


async def test_after_the_grace_period_no_call_is_made() -> None:
    grace_over = GraceOver()
    grace_over.set()
    sender = ScriptedSender([ACCEPTED])
    with pytest.raises(ShuttingDown):
        await Dispatcher(one_route(sender), grace_over=grace_over).send_all(
            [b"1"], ["k"], SUBMISSION
        )
    assert sender.calls == []


async def test_a_streamed_body_is_spooled_as_its_bytes(tmp_path: Path) -> None:
    raw = bytearray(b"headers\r\n\r\nQUJD\r\nREVG\r\n--b--\r\n")
    data = RawBase64(raw, 11, 23)
    body = serialise({"subject": "s", "attachments": [{"data": data, "base64": True}]})
    assert isinstance(body, StreamedBody)
    spool = SqliteSpool(tmp_path)
    sender = ScriptedSender([UpstreamServerError("503")])
    (delivery,) = await Dispatcher(one_route(sender), spool).send_all([body], ["k"], SUBMISSION)
    assert sender.calls == [(body, "k")]  # the sender got the stream itself
    assert delivery.spool_id is not None
    entry = await spool.get(delivery.spool_id)
    assert entry is not None
    assert entry.body == b'{"subject":"s","attachments":[{"data":"QUJDREVG","base64":true}]}'
    await spool.close()
