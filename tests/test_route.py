"""The route seam: the dispatcher sends each transaction the way its router chooses."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from aiosmtpd.smtp import Envelope

from relay.delivery.dispatch import Dispatcher
from relay.delivery.route import DEFAULT_ROUTE, Route, SingleRouter, Submission
from relay.delivery.spool import SpoolEntry
from relay.smtp.access import ClientState
from relay.smtp.auth import AuthUser
from relay.smtp.handler import RelayHandler
from tests.fakes import ACCEPTED, ScriptedSender


@dataclass
class ByUser:
    """Routes a transaction by its AUTH user; records what it was asked."""

    routes: dict[str | None, Route]
    asked: list[Submission] = field(default_factory=list)

    @property
    def default(self) -> Route:
        return self.routes[None]

    def route(self, submission: Submission) -> Route:
        self.asked.append(submission)
        return self.routes.get(submission.user, self.default)

    def spooled(self, entry: SpoolEntry) -> Route:
        return self.default

    async def aclose(self) -> None:
        for route in self.routes.values():
            await route.sender.aclose()


def route(name: str) -> tuple[Route, ScriptedSender, ScriptedSender]:
    paced, retrying = ScriptedSender([ACCEPTED]), ScriptedSender([ACCEPTED])
    return Route(name, f"account-{name}", sender=paced, retrying=retrying), paced, retrying


async def test_each_transaction_goes_the_way_its_router_chooses() -> None:
    (default, _, via_default), (alice, _, via_alice) = route("default"), route("alice")
    router = ByUser({None: default, "alice": alice})
    dispatcher = Dispatcher(router)
    await dispatcher.send_all([b"1", b"2"], ["k1", "k2"], Submission("a@x.org", ("b@y.org",)))
    await dispatcher.send_all([b"3"], ["k3"], Submission("a@x.org", ("c@y.org",), user="alice"))
    assert via_default.keys == ["k1", "k2"]  # the route's retrying sender, one route per txn
    assert via_alice.keys == ["k3"]
    assert len(router.asked) == 2


async def test_the_handler_hands_the_router_envelope_client_and_auth_user() -> None:
    (only, _, retrying) = route("only")
    router = ByUser({None: only})
    handler = RelayHandler(Dispatcher(router))
    server = SimpleNamespace(session_id="s1", client=ClientState("192.0.2.7", trusted=False))
    session = SimpleNamespace(auth_data=AuthUser("alice"))
    envelope = Envelope()
    envelope.mail_from = "app@example.com"
    envelope.rcpt_tos = ["ann@example.net", "bob@example.net"]
    envelope.content = (
        b"From: app@example.com\r\nTo: ann@example.net, bob@example.net\r\n"
        b"Subject: hi\r\n\r\nbody\r\n"
    )
    reply = await handler.handle_DATA(server, session, envelope)
    assert reply.startswith("250 ")
    assert router.asked == [
        Submission("app@example.com", ("ann@example.net", "bob@example.net"), "192.0.2.7", "alice")
    ]
    assert len(retrying.calls) == 1


async def test_the_single_router_sends_everything_one_way_and_closes_its_client() -> None:
    only, paced, _ = route(DEFAULT_ROUTE)
    router = SingleRouter(only)
    assert router.route(Submission("a@x.org", ())) is only
    assert router.default is only
    await router.aclose()
    assert paced.closed
