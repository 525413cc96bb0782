"""The benchmark's messages, rendered once to wire bytes (CRLF, dot-stuffed, ``.`` line).

Kinds: ``small`` (4 KiB of text, as in shared/perf-notes.md), ``html`` (text + HTML +
an inline 12 KiB PNG-typed image), ``attach1m`` (text + a 1 MB PDF-typed attachment) and
``big`` (one attachment sized so the whole message is just under ``big_size`` bytes on
the wire, 20 MiB by default: the relay's and AhaSend's message size limit).
Attachment bytes are pseudo-random (seeded), so nothing compresses or repeats.
"""

from __future__ import annotations

import random
from email.message import EmailMessage
from email.policy import SMTP
from typing import Final

KINDS: Final = ("small", "html", "attach1m", "big")
MIX: Final = ("small",) * 6 + ("html",) * 3 + ("attach1m",)
"""The mix, repeated: 60 % small text, 30 % HTML with an inline image, 10 % 1 MB attachment."""

MIB: Final = 1024 * 1024
SENDER: Final = "bench@sender.example"
_TEXT_LINE: Final = "The quick brown fox jumps over the lazy dog; invoice 0042 is attached.\n"


def _noise(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _base(kind: str, rcpt: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Bench Sender <{SENDER}>"
    msg["To"] = rcpt
    msg["Subject"] = f"Benchmark message ({kind})"
    msg["Message-ID"] = f"<bench-{kind}@sender.example>"
    msg["Date"] = "Tue, 24 Nov 2026 12:00:00 +0000"
    return msg


def _text(size: int) -> str:
    return (_TEXT_LINE * (size // len(_TEXT_LINE) + 1))[:size]


def build(kind: str, rcpt: str, big_size: int = 20 * MIB) -> bytes:
    """The message ``kind`` addressed to ``rcpt``, as DATA bytes ending in ``CRLF.CRLF``."""
    return _wire(render(kind, rcpt, big_size))


def render(kind: str, rcpt: str, big_size: int = 20 * MIB) -> bytes:
    """The message ``kind`` addressed to ``rcpt``, as the bytes a server stores (CRLF)."""
    msg = _base(kind, rcpt)
    if kind == "small":
        msg.set_content(_text(4096))
    elif kind == "html":
        msg.set_content(_text(1500))
        msg.add_alternative(
            "<html><body><p>" + _text(3000) + '</p><img src="cid:logo@bench"></body></html>',
            subtype="html",
        )
        html = msg.get_payload()[1]
        html.add_related(_noise(12 * 1024, 1), "image", "png", cid="<logo@bench>")
    elif kind == "attach1m":
        msg.set_content(_text(800))
        msg.add_attachment(_noise(1_000_000, 2), "application", "pdf", filename="invoice.pdf")
    elif kind == "big":
        msg.set_content(_text(800))
        raw_size = int((big_size - 16 * 1024) * 57 / 78)  # base64: 57 bytes → 76 chars + CRLF
        msg.add_attachment(
            _noise(raw_size, 3), "application", "octet-stream", filename="archive.bin"
        )
    else:
        raise ValueError(f"unknown message kind {kind!r}")
    return msg.as_bytes(policy=SMTP)


def _wire(data: bytes) -> bytes:
    """Dot-stuffed DATA with the terminating ``.`` line."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data + b".\r\n"
