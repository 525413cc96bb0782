"""DATA through the chunked reader, end to end: a real relay on loopback, driven by smtplib.

The relay runs dry (no API needed): these tests are about the SMTP side of DATA only,
the replies to oversized messages and over-long lines, and a pipelined QUIT after the
final dot (the bytes after the dot must reach the next command).
"""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator

import pytest

from tests.harness import RunningRelay, running_relay, settings_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def relay() -> Iterator[RunningRelay]:
    settings = settings_for(None, relay_max_message_size=2000, relay_max_line_length=1001)
    with running_relay(settings) as running:
        yield running


def send_raw(port: int, data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.ehlo("client.test")
        client.mail("a@x.test")
        client.rcpt("b@y.test")
        return client.data(data)


def test_message_over_the_size_limit_is_552_after_the_whole_data(relay: RunningRelay) -> None:
    code, text = send_raw(relay.port, b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40)
    assert (code, text.split()[0]) == (552, b"5.3.4")


def test_line_over_the_line_limit_is_500(relay: RunningRelay) -> None:
    code, text = send_raw(relay.port, b"Subject: long\r\n\r\n" + b"y" * 1000 + b"\r\n")
    assert (code, text.split()[0]) == (500, b"5.5.2")


def test_data_without_recipient_is_503(relay: RunningRelay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=5) as client:
        client.ehlo("client.test")
        client.mail("a@x.test")
        code, text = client.docmd("DATA")
    assert (code, text.split()[0]) == (503, b"5.5.1")


def test_commands_pipelined_after_the_final_dot_are_answered(relay: RunningRelay) -> None:
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        stream = sock.makefile("rb")
        commands = [b"EHLO client.test", b"MAIL FROM:<a@x.test>", b"RCPT TO:<b@y.test>", b"DATA"]
        sock.sendall(b"\r\n".join(commands) + b"\r\n")
        replies = [_reply(stream) for _ in range(5)]  # greeting, EHLO, MAIL, RCPT, DATA
        assert replies[-1].startswith(b"354")
        sock.sendall(b"Subject: x\r\n\r\n..dot\r\n.\r\nNOOP\r\nQUIT\r\n")
        after = [_reply(stream)[:3] for _ in range(3)]
    assert after[1:] == [b"250", b"221"]


def _reply(stream: object) -> bytes:
    line = b""
    while True:
        line = stream.readline()  # type: ignore[attr-defined]
        if line[3:4] != b"-":
            return bytes(line)
