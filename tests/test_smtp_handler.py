"""Unit tests of the delivery handler's reply decisions, without sockets.

The hooks get a fake session object and aiosmtpd's own ``Envelope``; the sender is
scripted (tests/fakes.py). The end-to-end tests drive the same hooks through a real relay.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import structlog.testing
from aiosmtpd.smtp import Envelope, TLSSetupException

from relay.delivery.dispatch import Dispatcher
from relay.delivery.route import Route, SingleRouter
from relay.delivery.sender import Delivery, Sender
from relay.errors import RelayError, UpstreamRejected, UpstreamUnreachable
from relay.smtp.auth import AuthUser
from relay.smtp.handler import RelayHandler, request_id
from relay.smtp.policy import SenderPolicy
from relay.smtp.replies import DRY_RUN_ACCEPTED
from tests.fakes import ACCEPTED, FakeTime, ScriptedSender

MESSAGE = (
    b"From: App <app@example.com>\r\nTo: ann@example.net\r\nSubject: Hello\r\n"
    b"Message-ID: <m1@example.com>\r\n\r\nHi Ann.\r\n"
)


def server(transactions: int = 0) -> SimpleNamespace:
    """The session as the hooks see it: its id and its transaction count."""
    return SimpleNamespace(session_id="0123456789ab", transactions=transactions)


def envelope(content: bytes = MESSAGE, rcpts: tuple[str, ...] = ("ann@example.net",)) -> Any:
    env = Envelope()
    env.mail_from = "app@example.com"
    env.rcpt_tos = list(rcpts)
    env.content = env.original_content = content
    return env


def dispatching(sender: Sender) -> Dispatcher:
    """A dispatcher that sends everything through ``sender`` (no spool)."""
    return Dispatcher(SingleRouter(Route("default", "", sender=sender, retrying=sender)))


def handler(*outcomes: Delivery | RelayError, **options: Any) -> RelayHandler:
    return RelayHandler(dispatching(ScriptedSender(list(outcomes) or [ACCEPTED])), **options)


def session(user: AuthUser | None = None) -> SimpleNamespace:
    return SimpleNamespace(auth_data=user, host_name=None)


async def test_ehlo_advertises_pipelining_and_enhanced_codes() -> None:
    hello = session()
    lines = await handler().handle_EHLO(
        server(), hello, Envelope(), "client.test", ["250-relay.test", "250-8BITMIME", "250 HELP"]
    )
    assert lines == [
        "250-relay.test", "250-8BITMIME", "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 HELP",
    ]  # fmt: skip
    assert hello.host_name == "client.test"


async def test_mail_records_the_sender() -> None:
    env = Envelope()
    reply = await handler().handle_MAIL(server(), session(), env, "a@example.com", ["SIZE=10"])
    assert reply == "250 2.1.0 Sender OK"
    assert (env.mail_from, env.mail_options) == ("a@example.com", ["SIZE=10"])


async def test_rcpt_accepts_up_to_the_limit() -> None:
    env, hooks = Envelope(), handler(max_recipients=2)
    for address in ("a@example.net", "b@example.net"):
        assert await hooks.handle_RCPT(server(), session(), env, address, []) == (
            "250 2.1.5 Recipient OK"
        )
    assert await hooks.handle_RCPT(server(), session(), env, "c@example.net", []) == (
        "452 4.5.3 Too many recipients in this transaction"
    )
    assert env.rcpt_tos == ["a@example.net", "b@example.net"]


@pytest.mark.parametrize("address", ["postmaster", "Postmaster", "abuse"])
async def test_rcpt_refuses_addresses_without_a_domain(address: str) -> None:
    env = Envelope()
    reply = await handler().handle_RCPT(server(), session(), env, address, [])
    assert reply == "550 5.1.3 Recipient address must be user@domain"
    assert env.rcpt_tos == []


async def test_data_queues_and_counts_the_transaction() -> None:
    sender = ScriptedSender([Delivery(status=202, message_ids=("id-1", "id-2"))])
    hooks, srv, env = RelayHandler(dispatching(sender)), server(transactions=2), envelope()
    reply = await hooks.handle_DATA(srv, session(), env)
    assert reply == "250 2.0.0 Queued: id-1 (+1 more)"
    assert srv.transactions == 3
    assert env.content is None  # freed once translated
    [(body, _)] = sender.calls
    assert json.loads(body)["from"]["email"] == "app@example.com"


async def test_data_reply_in_dry_run() -> None:
    hooks = handler(Delivery(status=202), accepted_reply=DRY_RUN_ACCEPTED)
    assert await hooks.handle_DATA(server(), session(), envelope()) == (
        "250 2.0.0 Accepted (dry run, not sent)"
    )


@pytest.mark.parametrize(
    ("error", "reply"),
    [
        (
            UpstreamUnreachable("connect failed"),
            "451 4.4.1 Upstream API unreachable, try again later",
        ),
        (UpstreamRejected("bad"), "554 5.6.0 Rejected by AhaSend: bad"),
    ],
)
async def test_data_errors_become_their_reply(error: RelayError, reply: str) -> None:
    assert await handler(error).handle_DATA(server(), session(), envelope()) == reply


async def test_partial_refusal_names_the_first_refused_recipient() -> None:
    delivery = Delivery(
        status=202, message_ids=("id-1",), failures=(("bob@example.net", "bounced"),)
    )
    reply = await handler(delivery).handle_DATA(server(), session(), envelope())
    assert reply == "250 2.0.0 Partially queued: 1 recipient(s) refused: bob@example.net (bounced)"


async def test_the_authenticated_users_domains_apply_to_the_from_header() -> None:
    hooks = handler(sender_policy=SenderPolicy())
    scanner = AuthUser("scanner", frozenset({"example.org"}))
    assert await hooks.handle_DATA(server(), session(scanner), envelope()) == (
        "550 5.7.1 Sender address not allowed: example.com"
    )
    assert (await hooks.handle_DATA(server(), session(), envelope())).startswith("250 2.0.0")


class SlowSender(ScriptedSender):
    """Accepts after ``seconds`` on the fake clock."""

    def __init__(self, clock: FakeTime, seconds: float) -> None:
        super().__init__([ACCEPTED])
        self.clock, self.seconds = clock, seconds

    async def send(self, body: bytes, idempotency_key: str) -> Delivery:
        self.clock.now += self.seconds
        return await super().send(body, idempotency_key)


async def test_one_message_event_with_the_latency_on_the_injected_clock() -> None:
    clock = FakeTime()
    hooks = RelayHandler(dispatching(SlowSender(clock, 0.25)), clock=clock.clock)
    with structlog.testing.capture_logs() as logged:
        assert (await hooks.handle_DATA(server(), session(), envelope())).startswith("250 2.0.0")
    [event] = [e for e in logged if e["event"] == "message"]
    assert (event["reply"], event["enhanced"], event["latency_ms"]) == (250, "2.0.0", 250.0)
    assert (event["mail_from"], event["rcpt_count"], event["size"]) == (
        "app@example.com", 1, len(MESSAGE),
    )  # fmt: skip


@pytest.mark.parametrize("error", [ValueError("boom"), TLSSetupException()])
async def test_unexpected_errors_get_a_transient_reply(error: Exception) -> None:
    assert await handler().handle_exception(error) == (
        "451 4.3.0 Local error in processing, try again later"
    )


def test_request_id_numbers_the_sessions_transactions() -> None:
    assert request_id(server(transactions=0)) == "0123456789ab.1"
    assert request_id(server(transactions=4)) == "0123456789ab.5"
