"""SpoolWorker with a real spool and a scripted sender: outcomes, backoff, expiry, bounces."""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from relay.delivery.bounce import Bouncer
from relay.delivery.policy import Backoff, SpoolPolicy
from relay.delivery.sender import Delivery
from relay.delivery.spool import SpoolEntry, SqliteSpool
from relay.delivery.worker import SpoolWorker
from relay.errors import (
    RelayError,
    SpoolUnavailable,
    UpstreamBusy,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamUnreachable,
)
from relay.ops.log import configure
from tests.fakes import ACCEPTED, FakeTime, ScriptedSender, one_route

POLICY = SpoolPolicy(
    backoff=Backoff(base=10, cap=100, jitter=(0.8, 1.2), retry_after="floor"),
    max_age=1000,
    poll_interval=0.01,
)


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def spool(tmp_path: Path, time: FakeTime) -> AsyncIterator[SqliteSpool]:
    s = SqliteSpool(tmp_path, clock=time.clock)
    yield s
    await s.close()


async def enqueue(
    spool: SqliteSpool, key: str = "key-1", mail_from: str = "app@example.com"
) -> int:
    body = json.dumps({"subject": "Invoice 42", "from": {"email": mail_from or "x@y.z"}})
    return await spool.add(
        body.encode(), key, mail_from=mail_from, rcpt_tos=["to@example.org"],
        error="UpstreamUnreachable", first_retry=0, max_age=POLICY.max_age,
    )  # fmt: skip


def worker(
    spool: SqliteSpool, sender: ScriptedSender, time: FakeTime, bouncer: Bouncer | None = None
) -> SpoolWorker:
    return SpoolWorker(
        spool, one_route(sender), POLICY, bouncer=bouncer, clock=time.clock, rng=random.Random(1)
    )


async def get(spool: SqliteSpool, entry_id: int) -> SpoolEntry:
    entry = await spool.get(entry_id)
    assert entry is not None
    return entry


async def test_a_due_entry_is_sent_with_its_key_and_marked_delivered(
    spool: SqliteSpool, time: FakeTime
) -> None:
    entry_id = await enqueue(spool)
    sender = ScriptedSender([ACCEPTED])
    assert await worker(spool, sender, time).run_once() == 1
    assert sender.keys == ["key-1"]
    entry = await get(spool, entry_id)
    assert (entry.state, entry.message_ids, entry.attempts) == ("delivered", ("msg-1",), 1)
    assert await worker(spool, sender, time).run_once() == 0


async def test_a_replayed_answer_counts_as_delivered(spool: SqliteSpool, time: FakeTime) -> None:
    entry_id = await enqueue(spool)
    sender = ScriptedSender([Delivery(status=202, message_ids=("m",), replayed=True)])
    await worker(spool, sender, time).run_once()
    assert (await get(spool, entry_id)).state == "delivered"


async def test_transient_failures_back_off_exponentially(
    spool: SqliteSpool, time: FakeTime
) -> None:
    entry_id = await enqueue(spool)
    sender = ScriptedSender([UpstreamServerError("503")])
    w = worker(spool, sender, time)
    delays = []
    for _ in range(5):
        await w.run_once()
        entry = await get(spool, entry_id)
        delays.append(entry.next_attempt - time.now)
        time.now = entry.next_attempt
    assert entry.attempts == 5
    assert entry.state == "queued"
    assert entry.last_error == "UpstreamServerError: 503"
    for delay, base in zip(delays, [10, 20, 40, 80, 100], strict=True):
        assert base * 0.8 <= delay <= base * 1.2
    assert set(sender.keys) == {"key-1"}


async def test_retry_after_is_a_floor(spool: SqliteSpool, time: FakeTime) -> None:
    entry_id = await enqueue(spool)
    await worker(spool, ScriptedSender([UpstreamBusy("409", retry_after=500)]), time).run_once()
    assert (await get(spool, entry_id)).next_attempt == time.now + 500


async def test_permanent_rejection_is_a_dead_letter_with_the_reason(
    spool: SqliteSpool, time: FakeTime
) -> None:
    entry_id = await enqueue(spool)
    await worker(spool, ScriptedSender([UpstreamRejected("422 invalid sender")]), time).run_once()
    entry = await get(spool, entry_id)
    assert (entry.state, entry.last_error, entry.bounced) == ("dead", "422 invalid sender", False)


async def test_an_expired_entry_dies_and_the_sender_gets_a_bounce(
    spool: SqliteSpool, time: FakeTime
) -> None:
    entry_id = await enqueue(spool, key="key-9")
    time.now += POLICY.max_age + 1
    sender = ScriptedSender([UpstreamUnreachable("ConnectError"), ACCEPTED])
    bouncer = Bouncer(sender, "postmaster@relay.example")
    await worker(spool, sender, time, bouncer).run_once()
    entry = await get(spool, entry_id)
    assert entry.state == "dead"
    assert entry.last_error is not None
    assert entry.last_error.startswith("expired after 1 attempts")
    assert entry.bounced
    body, key = sender.calls[1]
    notice = json.loads(body)
    assert key == "key-9-bounce"
    assert notice["to"] == [{"email": "app@example.com"}]
    assert notice["from"]["email"] == "postmaster@relay.example"
    assert "Invoice 42" in notice["subject"]
    assert "to@example.org" in notice["text_content"]
    assert "expired" in notice["text_content"]


async def test_no_bounce_for_the_null_sender(spool: SqliteSpool, time: FakeTime) -> None:
    entry_id = await enqueue(spool, mail_from="")
    sender = ScriptedSender([UpstreamRejected("422")])
    await worker(spool, sender, time, Bouncer(sender, "postmaster@relay.example")).run_once()
    assert len(sender.calls) == 1
    assert (await get(spool, entry_id)).state == "dead"
    assert not (await get(spool, entry_id)).bounced


async def test_a_failed_bounce_is_logged_not_fatal(spool: SqliteSpool, time: FakeTime) -> None:
    entry_id = await enqueue(spool)
    outcomes: list[Delivery | RelayError] = [UpstreamRejected("422"), UpstreamServerError("500")]
    sender = ScriptedSender(outcomes)
    await worker(spool, sender, time, Bouncer(sender, "pm@relay.example")).run_once()
    entry = await get(spool, entry_id)
    assert (entry.state, entry.bounced) == ("dead", False)


async def test_run_delivers_until_stopped(spool: SqliteSpool, time: FakeTime) -> None:
    sender = ScriptedSender([ACCEPTED])
    w = worker(spool, sender, time)
    task = asyncio.create_task(w.run())
    await enqueue(spool, "a")
    await enqueue(spool, "b")
    for _ in range(200):
        if len(sender.calls) == 2:
            break
        await asyncio.sleep(0.01)
    w.stop()
    await asyncio.wait_for(task, 2)
    assert sorted(sender.keys) == ["a", "b"]
    assert (await spool.stats()).delivered == 2


class FlakySpool:
    """``inner`` whose every call raises SpoolUnavailable while ``down`` (a database outage)."""

    def __init__(self, inner: SqliteSpool) -> None:
        self.inner, self.down, self.failures = inner, True, 0

    def __getattr__(self, name: str) -> object:
        method = getattr(self.inner, name)

        async def call(*args: object, **kwargs: object) -> object:
            if self.down:
                self.failures += 1
                raise SpoolUnavailable("spool postgresql://relay:***@db/relay: timed out")
            return await method(*args, **kwargs)

        return call


async def test_the_worker_outlives_a_spool_outage(spool: SqliteSpool, time: FakeTime) -> None:
    await enqueue(spool, "a")
    flaky = FlakySpool(spool)
    sender = ScriptedSender([ACCEPTED])
    w = SpoolWorker(flaky, one_route(sender), POLICY, clock=time.clock)  # type: ignore[arg-type]
    task = asyncio.create_task(w.run())
    for _ in range(300):
        if flaky.failures >= 4 or task.done():
            break
        await asyncio.sleep(0.01)
    assert not task.done()  # claim and next_due failed, twice, and it is still running
    assert flaky.failures >= 4
    flaky.down = False
    for _ in range(200):
        if sender.calls:
            break
        await asyncio.sleep(0.01)
    w.stop()
    await asyncio.wait_for(task, 2)
    assert sender.keys == ["a"]


async def test_spool_status_is_logged(spool: SqliteSpool, time: FakeTime) -> None:
    await enqueue(spool, "a")
    await enqueue(spool, "b")
    sender = ScriptedSender([UpstreamServerError("503"), ACCEPTED])
    out = io.StringIO()
    configure(fmt="json", level="info", stream=out)
    await worker(spool, sender, time).run_once()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    [status] = [e for e in events if e["event"] == "spool"]
    assert (status["depth"], status["dead"], status["max_attempts"]) == (1, 0, 1)
    assert status["oldest_age_s"] == 0


async def test_recipients_refused_inside_a_202_are_noted(
    spool: SqliteSpool, time: FakeTime
) -> None:
    entry_id = await enqueue(spool)
    partial = Delivery(status=202, message_ids=("m",), failures=(("x@y.z", "suppressed"),))
    await worker(spool, ScriptedSender([partial]), time).run_once()
    entry = await get(spool, entry_id)
    assert entry.state == "delivered"
    assert entry.last_error == "recipients refused by the API: x@y.z: suppressed"


class SlowSender(ScriptedSender):
    """Accepts every request after ``delay`` seconds (real time), or never (None)."""

    def __init__(self, delay: float | None) -> None:
        super().__init__([ACCEPTED])
        self.delay = delay
        self.started = asyncio.Event()

    async def send(self, body: bytes, idempotency_key: str) -> Delivery:
        self.started.set()
        if self.delay is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay or 0)
        return await super().send(body, idempotency_key)


async def test_two_workers_never_send_one_entry_twice(spool: SqliteSpool, time: FakeTime) -> None:
    keys = [f"k{i}" for i in range(12)]
    for key in keys:
        await enqueue(spool, key)
    policy = replace(POLICY, batch=5)
    senders = [SlowSender(0.01), SlowSender(0.01)]
    workers = [SpoolWorker(spool, one_route(s), policy, clock=time.clock) for s in senders]
    while sum(await asyncio.gather(*(w.run_once() for w in workers))):
        pass
    first, second = (set(s.keys) for s in senders)
    assert first
    assert second
    assert not first & second
    assert sorted(first | second) == sorted(keys)
    assert (await spool.stats()).delivered == len(keys)


async def test_an_entry_held_by_a_dead_worker_is_sent_once_its_lease_ends(
    spool: SqliteSpool, time: FakeTime
) -> None:
    entry_id = await enqueue(spool)
    hanging = SlowSender(None)
    dying = asyncio.create_task(worker(spool, hanging, time).run_once())
    await asyncio.wait_for(hanging.started.wait(), 5)
    assert (await get(spool, entry_id)).claimed_until == time.now + POLICY.lease
    dying.cancel()  # the relay died mid-send
    await asyncio.gather(dying, return_exceptions=True)
    survivor = ScriptedSender([ACCEPTED])
    assert await worker(spool, survivor, time).run_once() == 0
    time.now += POLICY.lease
    assert await worker(spool, survivor, time).run_once() == 1
    assert survivor.keys == ["key-1"]
    assert (await get(spool, entry_id)).state == "delivered"
