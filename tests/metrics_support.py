"""A real relay driven through every path a dashboard shows, then scraped.

``exercised_relay`` starts a relay with a spool and metrics on, sends through it what an
on-call engineer's dashboard must show (mail sent, retried, spooled, delivered from the
spool, dead letters, refusals of each kind before DATA) and yields the running relay.
"""

from __future__ import annotations

import http.client
import smtplib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

from tests.harness import RunningRelay, running_relay, settings_for
from tests.standin import Scripted, StandIn
from tests.test_metrics import value


def scrape(relay: RunningRelay) -> str:
    assert relay.server is not None
    assert relay.server.admin is not None
    connection = http.client.HTTPConnection("127.0.0.1", relay.server.admin.port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        connection.close()


def message(subject: str = "hi") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "app@example.com", "user@example.org", subject
    msg.set_content("Hello.\n")
    return msg.as_bytes()


def send(port: int, sender: str = "app@example.com", rcpt: str = "user@example.org") -> int:
    """One transaction; the first non-2xx reply code, or DATA's."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        for code, _ in (client.mail(sender), client.rcpt(rcpt)):
            if code >= 400:
                return code
        return client.data(message())[0]


def wait_for(
    relay: RunningRelay, name: str, expected: float, timeout: float = 10, **labels: str
) -> None:
    deadline = time.monotonic() + timeout
    while (found := value(scrape(relay), name, **labels)) != expected:
        assert time.monotonic() < deadline, f"{name}{labels} is {found}, not {expected}"
        time.sleep(0.05)


@contextmanager
def exercised_relay(standin: StandIn, tmp_path: Path) -> Iterator[RunningRelay]:
    settings = settings_for(
        standin, relay_metrics_port=0, relay_spool_dir=tmp_path / "spool",
        relay_spool_retry_min=0.2, relay_spool_retry_max=0.2, relay_retry_deadline=5.0,
        relay_allowed_sender_domains="example.com",
    )  # fmt: skip
    with running_relay(settings) as relay:
        standin.script(Scripted(429, headers={"Retry-After": "0"}), Scripted(202))
        assert send(relay.port) == 250  # retried once in the transaction, then sent
        # Spooled: AhaSend asks for a wait longer than the retry deadline; then the
        # worker delivers it (202) on its first round.
        standin.script(Scripted(429, headers={"Retry-After": "30"}), Scripted(202))
        assert send(relay.port) == 250
        wait_for(relay, "ahasend_relay_spool_messages_total", 1, event="delivered")
        # A dead letter: spooled, then refused for good by the worker.
        standin.script(Scripted(429, headers={"Retry-After": "30"}), Scripted(422))
        assert send(relay.port) == 250
        wait_for(relay, "ahasend_relay_spool_dead", 1)
        assert send(relay.port, sender="app@elsewhere.test") == 550  # sender policy
        assert send(relay.port, rcpt="postmaster") == 550  # recipient
        yield relay
