"""Support for the interoperability tests: a relay forwarding to a stand-in, and look-ups.

Two ways to run the relay, both on 127.0.0.1 port 0 in front of a stand-in AhaSend API:

- ``serving(**settings)``: ``tests.harness``'s relay in a background thread (settings as
  keyword arguments; used by the protocol-quirk tests);
- ``serving_process(**env)``: the real daemon, ``python -m relay``, configured through
  its environment, its port read from its ``listening`` log event (stdout and stderr
  are read together), stopped with SIGTERM
  (used by the client matrix and the corpus replay).

Test modules wrap either in a module-scoped fixture so one relay serves many tests.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from relay.config import PROXY_VARIABLES, TRUST_VARIABLES
from tests.harness import running_relay, settings_for
from tests.paths import REPO
from tests.standin import Recorded, StandIn

START_TIMEOUT = 15.0
_PORT = re.compile(r"\"?port\"?\s*[=:]\s*(\d+)")


@dataclass
class Served:
    """A running relay (``port``) and the stand-in it forwards to; ``logs`` of a process."""

    port: int
    standin: StandIn
    logs: list[str] = field(default_factory=list)

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

    def log_lines(self, *words: str, timeout: float = 10.0) -> list[str]:
        """The log lines holding every one of ``words``, once there is one (or ``timeout``):
        a line is written after the reply, so it may follow the request by a moment."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in list(self.logs) if all(w in line for w in words)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def smtps_port(self) -> int:
        """The implicit-TLS port a process logged (``listening_smtps``, RELAY_SMTPS_PORT=0)."""
        for line in list(self.logs):
            if "listening_smtps" in line and (match := _PORT.search(line)):
                return int(match.group(1))
        raise AssertionError("the relay logged no listening_smtps event")

    def accepted(self) -> list[Recorded]:
        """Requests the stand-in accepted."""
        return self.standin.accepted


def _subject(request: Recorded) -> Any:
    return request.json.get("subject") if isinstance(request.json, dict) else None


@contextmanager
def serving(**settings: Any) -> Iterator[Served]:
    """A stand-in and an in-thread relay forwarding to it; ``settings`` are Settings fields."""
    with StandIn() as standin, running_relay(settings_for(standin, **settings)) as relay:
        yield Served(relay.port, standin)


@contextmanager
def serving_process(**env: str) -> Iterator[Served]:
    """A stand-in and a ``python -m relay`` process forwarding to it; ``env`` adds variables.

    On exit the process must still be running and must not have logged an internal error.
    """
    with StandIn() as standin:
        environ = (
            {
                k: v
                for k, v in os.environ.items()
                if k.upper() not in PROXY_VARIABLES and k not in TRUST_VARIABLES
            }
            | {
                "AHASEND_API_KEY": standin.api_key,
                "AHASEND_ACCOUNT_ID": standin.account_id,
                "AHASEND_API_BASE_URL": standin.base_url,
                "RELAY_HOST": "127.0.0.1",
                "RELAY_PORT": "0",
                "RELAY_HOSTNAME": "relay.test",
                "RELAY_LOG_FORMAT": "json",
                "RELAY_SHUTDOWN_TIMEOUT": "2",
                "RELAY_DRY_RUN": "false",
            }
            | env
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "relay"], cwd=REPO, env=environ,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        logs: list[str] = []
        pump = _drain(process.stdout, logs)
        try:
            served = Served(_wait_listening(process, logs), standin, logs)
            yield served
            assert process.poll() is None, "the relay process died during the tests"
            bugs = [line for line in logs if "internal_error" in line or "Traceback" in line]
            assert not bugs, f"the relay logged internal errors:\n{''.join(bugs)[-3000:]}"
        finally:
            _terminate(process)
            pump.join(10)
            if process.stdout is not None:
                process.stdout.close()


def _wait_listening(process: subprocess.Popen[bytes], logs: list[str]) -> int:
    """The port from the relay's ``listening`` log event (JSON or console format)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        for line in list(logs):
            plain = "listening" in line and "listening_smtps" not in line
            if plain and (match := _PORT.search(line)):
                return int(match.group(1))
        time.sleep(0.05)
    raise AssertionError(f"the relay did not start listening:\n{''.join(logs)[-3000:]}")


def _drain(stream: IO[bytes] | None, into: list[str]) -> threading.Thread:
    """Read ``stream`` into ``into`` in a thread, so the relay never blocks on a full pipe."""
    assert stream is not None

    def pump() -> None:
        for line in stream:
            into.append(line.decode(errors="replace"))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
