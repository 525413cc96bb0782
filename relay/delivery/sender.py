"""What the handler hands a message to: the ``Sender`` protocol, its result, and dry-run.

A ``Sender`` takes one serialised ``CreateConversationMessageRequest`` and its
Idempotency-Key, and either returns a ``Delivery`` or raises a ``replies.RelayError``.
``api.AhaSendClient`` is the real one; ``DryRunSender`` only logs what would be sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.ops.log import get_logger
from relay.translate.wire import Body

__all__ = ["Delivery", "DryRunSender", "Sender", "abbreviate", "refusals"]

log = get_logger("relay.dry_run")
_SHOWN_DATA = 40


@dataclass(frozen=True, slots=True)
class Delivery:
    """AhaSend's answer to one accepted request.

    ``message_ids`` are the ids of queued or scheduled recipients; ``failures`` pairs each
    recipient AhaSend refused inside a 202 with its error text. ``spooled`` marks a request
    the API could not take now that was written to the spool as ``spool_id`` instead.
    ``status`` is AhaSend's HTTP status, None when nothing was sent (spooled, dry run).
    """

    status: int | None
    message_ids: tuple[str, ...] = ()
    failures: tuple[tuple[str, str], ...] = ()
    replayed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    spooled: bool = False
    spool_id: int | None = None


def refusals(failures: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """``Delivery.failures`` as logged (``refused=``): objects the log's recipient
    privacy (``RELAY_LOG_RECIPIENTS``) can hash or drop."""
    return [{"recipient": recipient, "reason": why} for recipient, why in failures]


class Sender(Protocol):
    """Delivers one request body; raises ``RelayError`` subclasses on failure."""

    async def send(self, body: Body, idempotency_key: str) -> Delivery: ...

    async def aclose(self) -> None: ...


class DryRunSender:
    """Logs the payload that would be sent (attachment data abbreviated); never networks.

    A streamed body is logged from its ``abbreviated`` form: a large attachment is not
    copied to be logged (a dry run costs what delivery costs)."""

    async def send(self, body: Body, idempotency_key: str) -> Delivery:
        text = body if isinstance(body, bytes) else body.abbreviated(_SHOWN_DATA, _cut)
        log.info("dry_run", idempotency_key=idempotency_key, payload=abbreviate(json.loads(text)))
        return Delivery(status=None)  # nothing was sent

    async def aclose(self) -> None:
        return None


def abbreviate(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with each attachment's data cut to a prefix and its length."""
    shown = dict(payload)
    attachments = payload.get("attachments")
    if attachments:
        shown["attachments"] = [_abbreviate_attachment(a) for a in attachments]
    return shown


def _abbreviate_attachment(attachment: dict[str, Any]) -> dict[str, Any]:
    data = str(attachment.get("data", ""))
    if len(data) <= _SHOWN_DATA or _CUT.fullmatch(data):  # short, or cut as it was streamed
        return attachment
    return {**attachment, "data": _cut(data[:_SHOWN_DATA], len(data))}


def _cut(first: str, length: int) -> str:
    """Attachment data as a dry run shows it: its first characters and its length."""
    return f"{first}... ({length} chars)"


_CUT = re.compile(rf"[A-Za-z0-9+/=]{{0,{_SHOWN_DATA}}}\.\.\. \(\d+ chars\)")
"""What ``_cut`` makes (base64 data never holds a space or parentheses)."""
