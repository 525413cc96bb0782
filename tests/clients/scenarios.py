"""The four messages every client in the matrix sends, and what the stand-in must receive.

A ``Scenario`` is client-neutral: addresses, subject, body text, files. Each client driver
turns it into that client's own command line or API calls (``drivers.py``); clients that
only transport a finished message (curl, msmtp, Postfix's sendmail, ``swaks --data``)
send ``scenario.mime()``, the message an application would have composed.

``check(scenario, payloads, inline_cid=...)`` asserts the API payloads the relay produced.
``inline_cid`` is False for clients that cannot give a part a Content-ID (mutt, s-nail,
sendemail): their "HTML with inline image" is HTML plus the image as a plain attachment.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid
from typing import Any

# A valid 1x1 PNG (the spec's own example) and a binary "PDF" with every byte value.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg=="
)
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"
CID = "logo.7f3a@relay.test"
SENDER = "app@example.com"
TO = "alice@example.net"
CC = "bob@example.org"
BCC = "carol@example.org"
KINDS = ("plain", "html_inline", "attachment", "cc_bcc")


@dataclass(frozen=True)
class Scenario:
    """One message: ``kind`` is one of ``KINDS``; ``tag`` makes its subject unique."""

    kind: str
    tag: str
    sender: str = SENDER
    to: str = TO
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return f"Matrix {self.kind} {self.tag}"

    @property
    def marker(self) -> str:
        """A phrase that must arrive in the body text (or HTML)."""
        return f"Hello from {self.tag} ({self.kind}), d\u00e9j\u00e0 vu."

    @property
    def text(self) -> str:
        return f"{self.marker}\nSecond line.\n"

    @property
    def html(self) -> str:
        image = f'<img src="cid:{CID}" alt="logo">' if self.kind == "html_inline" else ""
        return f"<html><body><p><b>{self.marker}</b></p>{image}</body></html>\n"

    @property
    def recipients(self) -> list[str]:
        return [self.to, *self.cc, *self.bcc]

    def mime(self) -> bytes:
        """The finished message with CRLF line ends (Bcc header included: see drivers)."""
        return self.message().as_bytes(policy=SMTP)

    def message(self) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = f"Matrix App <{self.sender}>"
        msg["To"] = self.to
        if self.cc:
            msg["Cc"] = ", ".join(self.cc)
        if self.bcc:
            msg["Bcc"] = ", ".join(self.bcc)
        msg["Subject"] = self.subject
        msg["Message-ID"] = make_msgid(domain="client.test")
        msg.set_content(self.text)
        if self.kind == "html_inline":
            msg.add_alternative(self.html, subtype="html")
            html_part = msg.get_payload()[1]
            html_part.add_related(
                PNG, "image", "png", cid=f"<{CID}>", disposition="inline", filename="logo.png"
            )
        for name, data in self.files.items():
            msg.add_attachment(data, "application", "pdf", filename=name)
        return msg


def scenario(kind: str, tag: str) -> Scenario:
    """The ``kind`` scenario for client ``tag``."""
    if kind == "cc_bcc":
        return Scenario(kind, tag, cc=(CC,), bcc=(BCC,))
    if kind == "attachment":
        return Scenario(kind, tag, files={"report.pdf": PDF})
    if kind in ("plain", "html_inline"):
        return Scenario(kind, tag)
    raise ValueError(kind)


# -- what the stand-in must have received -------------------------------------------------


def check(s: Scenario, payloads: Sequence[dict[str, Any]], *, inline_cid: bool = True) -> None:
    """Assert that ``payloads`` (all requests with ``s.subject``) carry ``s`` faithfully."""
    assert payloads, f"the stand-in received nothing with subject {s.subject!r}"
    first = payloads[0]
    assert first["from"]["email"] == s.sender
    assert first["subject"] == s.subject
    assert _emails(payloads, "to") == [s.to]
    assert _emails(payloads, "cc") == list(s.cc)
    assert _emails(payloads, "bcc") == list(s.bcc)
    for payload in payloads:
        _no_bcc_header(payload, s)
    _BODY_CHECKS[s.kind](s, first, inline_cid)


def _emails(payloads: Sequence[dict[str, Any]], field_name: str) -> list[str]:
    found = {a["email"].lower() for p in payloads for a in p.get(field_name, [])}
    return sorted(found)


def _no_bcc_header(payload: dict[str, Any], s: Scenario) -> None:
    headers = {k.lower(): v for k, v in payload.get("headers", {}).items()}
    assert "bcc" not in headers
    for bcc in s.bcc:
        assert bcc not in str(headers), "a Bcc recipient leaked into the headers"


def attachments(payload: dict[str, Any]) -> list[tuple[dict[str, Any], bytes]]:
    """Each attachment with its decoded bytes."""
    out = []
    for attachment in payload.get("attachments", []):
        data = attachment["data"]
        raw = base64.b64decode(data) if attachment.get("base64") else data.encode()
        out.append((attachment, raw))
    return out


def _text_of(payload: dict[str, Any]) -> str:
    return str(payload.get("text_content", "")).replace("\r\n", "\n")


def _check_plain(s: Scenario, payload: dict[str, Any], inline_cid: bool) -> None:
    assert s.marker in _text_of(payload)
    assert "Second line." in _text_of(payload)
    assert not payload.get("attachments")


def _check_html_inline(s: Scenario, payload: dict[str, Any], inline_cid: bool) -> None:
    html = str(payload.get("html_content", ""))
    assert s.marker in html
    assert "<b>" in html
    images = [(a, raw) for a, raw in attachments(payload) if raw == PNG]
    assert len(images) == 1, f"expected the PNG once, got {payload.get('attachments')}"
    image, _ = images[0]
    assert image["content_type"].startswith("image/png")
    if inline_cid:
        assert f"cid:{CID}" in html
        assert image.get("content_id") == f"<{CID}>"


def _check_attachment(s: Scenario, payload: dict[str, Any], inline_cid: bool) -> None:
    assert s.marker in _text_of(payload)
    found = attachments(payload)
    assert [(a["file_name"], raw) for a, raw in found] == [("report.pdf", PDF)]


def _check_cc_bcc(s: Scenario, payload: dict[str, Any], inline_cid: bool) -> None:
    assert s.marker in _text_of(payload)


_BODY_CHECKS = {
    "plain": _check_plain,
    "html_inline": _check_html_inline,
    "attachment": _check_attachment,
    "cc_bcc": _check_cc_bcc,
}
