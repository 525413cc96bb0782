"""Support for the interoperability tests: a relay forwarding to a stand-in, and look-ups.

``serving()`` starts the stand-in AhaSend API and a real relay on loopback ports (the
relay from ``tests.harness``, in a background thread) and yields both; test modules wrap
it in a module-scoped fixture so one relay serves a whole matrix.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.harness import RunningRelay, running_relay, settings_for
from tests.standin import Recorded, StandIn


@dataclass
class Served:
    relay: RunningRelay
    standin: StandIn

    @property
    def port(self) -> int:
        return self.relay.port

    def payloads(self, subject: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The request bodies with subject ``subject``, once one arrived (or ``timeout``).

        Each must have been valid for the stand-in: an invalid one fails the test.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in list(self.standin.requests) if _subject(r) == subject]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        problems = [(r.json, r.problems) for r in found if r.problems or not r.accepted]
        assert not problems, f"the stand-in refused requests: {problems}"
        return [r.json for r in found]

    def accepted(self) -> list[Recorded]:
        """Requests the stand-in accepted."""
        return self.standin.accepted


def _subject(request: Recorded) -> Any:
    return request.json.get("subject") if isinstance(request.json, dict) else None


@contextmanager
def serving(**overrides: Any) -> Iterator[Served]:
    """A stand-in and a relay forwarding to it; ``overrides`` are Settings fields."""
    with StandIn() as standin, running_relay(settings_for(standin, **overrides)) as relay:
        yield Served(relay, standin)
