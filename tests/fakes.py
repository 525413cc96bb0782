"""Test doubles for unit tests of one module: a fake clock, a scripted Sender, one route."""

from __future__ import annotations

from collections.abc import Iterable

from relay.delivery.route import DEFAULT_ROUTE, Route, SingleRouter
from relay.delivery.sender import Delivery, Sender
from relay.errors import RelayError
from relay.translate.wire import Body


class FakeTime:
    """A clock that only moves when something sleeps on it."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ScriptedSender:
    """Answers each send with the next scripted outcome (a Delivery or an error to raise).

    When the script runs out the last outcome repeats. Records every (body, key) call.
    """

    def __init__(self, outcomes: Iterable[Delivery | RelayError]) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[Body, str]] = []
        self.closed = False

    async def send(self, body: Body, idempotency_key: str) -> Delivery:
        self.calls.append((body, idempotency_key))
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, RelayError):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        self.closed = True

    @property
    def keys(self) -> list[str]:
        return [key for _, key in self.calls]


ACCEPTED = Delivery(status=202, message_ids=("msg-1",))


def one_route(sender: Sender) -> SingleRouter:
    """A router that sends everything through ``sender`` (without in-transaction retries)."""
    return SingleRouter(Route(DEFAULT_ROUTE, "", sender=sender, retrying=sender))
