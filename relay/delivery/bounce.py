"""Bounce notices: tell the envelope sender that a spooled message was given up on.

Once the relay has answered 250 the sending application believes the mail is on its
way, so when a spooled message later dies (a permanent API rejection, or
``RELAY_SPOOL_MAX_AGE`` reached) the relay, like an MTA, writes back to the envelope
sender. The notice is a plain-text message sent through the same API, from
``RELAY_BOUNCE_FROM``. Never for the null sender (``<>``): those are bounces themselves,
and bouncing a bounce loops (RFC 5321 §6.1).
"""

from __future__ import annotations

import json
from typing import Any

from relay.delivery.sender import Delivery, Sender
from relay.delivery.spool import SpoolEntry

__all__ = ["Bouncer", "bounce_payload"]

SUBJECT = "Undelivered Mail Returned to Sender"


class Bouncer:
    """Sends bounce notices from ``from_address`` through ``sender``."""

    def __init__(self, sender: Sender, from_address: str) -> None:
        self._sender = sender
        self._from = from_address

    def wants(self, entry: SpoolEntry) -> bool:
        """Whether ``entry`` gets a notice: only with a real envelope sender."""
        return bool(entry.mail_from.strip("<> "))

    async def notify(self, entry: SpoolEntry, reason: str) -> Delivery:
        """Send the notice (its own stable key); raises ``RelayError`` like any send."""
        body = json.dumps(bounce_payload(entry, reason, self._from)).encode("utf-8")
        return await self._sender.send(body, f"{entry.idempotency_key}-bounce")


def bounce_payload(entry: SpoolEntry, reason: str, from_address: str) -> dict[str, Any]:
    """The API request for a notice about ``entry`` that died for ``reason``."""
    subject = _original_subject(entry.body)
    lines = [
        "This is the mail relay. A message you sent could not be delivered and has been",
        "given up on. Nothing more will be attempted.",
        "",
        f"Subject:    {subject}",
        f"Recipients: {', '.join(entry.rcpt_tos)}",
        f"Reason:     {reason}",
        f"Attempts:   {entry.attempts}",
        f"Queue id:   {entry.id}",
    ]
    return {
        "from": {"email": from_address, "name": "Mail Delivery System"},
        "to": [{"email": entry.mail_from}],
        "subject": f"{SUBJECT}: {subject}"[:250],
        "text_content": "\n".join(lines) + "\n",
        "headers": {"Auto-Submitted": "auto-replied"},
    }


def _original_subject(body: bytes | None) -> str:
    try:
        subject = json.loads(body or b"{}").get("subject")
    except (ValueError, AttributeError):
        subject = None
    return subject if isinstance(subject, str) and subject else "(unknown)"
