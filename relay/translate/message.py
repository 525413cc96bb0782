"""Translate one received message into ``CreateConversationMessageRequest`` bodies.

Pure: bytes and the SMTP envelope in, JSON-ready dicts out; no I/O, no logging, no clock.
``translate`` raises only ``PermanentError`` subclasses (``MessageUnparseable``,
``InvalidHeader``, ``MessageEncrypted``); the stdlib's parse errors on defective input are
caught where they can happen and replaced by a fallback, so broken real-world mail still
yields a request. The goal: the recipient sees the message as its author's mail client
showed it. The rules live with the code that applies them:

- ``relay.translate.repair``: broken-but-common input mended before and after parsing;
- ``relay.translate.headers``: header text (RFC 2047) and the headers forwarded;
- ``relay.translate.addresses``: mailboxes, ``from``, ``to`` / ``cc`` / ``bcc``;
- ``relay.translate.charsets``: charset labels and text decoding;
- ``relay.translate.parts``: bodies, signed and encrypted mail;
- ``relay.translate.attachments`` (and ``verbatim``, ``transfer``): the files.

Every string is valid for JSON: undecodable bytes become U+FFFD, never lone surrogates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any

from relay.errors import MessageUnparseable
from relay.translate.addresses import (
    addressed,
    envelope,
    first_mailbox,
    sender,
    simple_mailboxes,
    usable_recipient,
)
from relay.translate.directives import PREFIX, directive_fields
from relay.translate.elision import ELIDE, ElideAt, Parsed, parse
from relay.translate.headers import Headers, forwarded
from relay.translate.hostile import harden
from relay.translate.parts import EMPTY_BODY, Content
from relay.translate.repair import mend_raw, mend_tree
from relay.translate.tree import PARSE_ERRORS, Raw, charset, content_type, subparts

__all__ = ["EMPTY_BODY", "Translated", "simple_mailboxes", "translate", "usable_recipient"]


@dataclass(frozen=True, slots=True)
class Translated:
    """The requests for one message: normally one; one per recipient when all are hidden.

    ``notices`` name what the recipient will not get although it was sent (today only
    ``signature_removed``), for the message's log line.
    """

    payloads: list[dict[str, Any]]
    message_id: str | None
    attachment_count: int
    notices: tuple[str, ...] = ()


def translate(
    raw: Raw,
    mail_from: str,
    rcpt_tos: Sequence[str],
    *,
    elide: ElideAt | None = ELIDE,
) -> Translated:
    """The API requests for message ``raw`` sent by ``mail_from`` to ``rcpt_tos``.

    In a message over ``elide.message`` bytes, large valid base64 attachments are not copied:
    their ``data`` is a ``rawslice.RawData`` into ``raw`` (``relay.translate.elision``), which
    ``relay.translate.wire.serialise`` writes out; the JSON is the same byte for byte
    (None: always the plain way). Raises ``MessageUnparseable`` (no usable sender or
    recipient, unreadable message), ``InvalidHeader`` (an ``ahasend-*`` header has an
    invalid value) or ``MessageEncrypted``; nothing else.
    """
    raw = mend_raw(raw)
    parsed = _parse(raw, elide)
    msg = parsed.msg
    heads = Headers(msg, _text_charset(msg))
    recipients = envelope(rcpt_tos)
    base: dict[str, Any] = {"from": sender(heads, mail_from), "subject": heads.text("subject")}
    if reply_to := first_mailbox(heads, "reply-to"):
        base["reply_to"] = reply_to
    content = Content.of(msg, raw, parsed.lazy)
    fields = content.fields()
    base.update(fields)
    if headers := forwarded(heads):
        base["headers"] = headers
    base.update(directive_fields(heads.prefixed(PREFIX)))
    payloads = [harden(payload) for payload in addressed(base, heads, recipients)]
    count = len(fields.get("attachments", ()))
    return Translated(payloads, heads.text("message-id") or None, count, tuple(content.notices))


def _parse(raw: Raw, elide: ElideAt | None) -> Parsed:
    """The message tree of ``raw``, mended; ``MessageUnparseable`` if the parser gives up."""
    try:
        parsed = parse(raw, elide)
        mend_tree(parsed.msg)
    except PARSE_ERRORS as exc:
        raise MessageUnparseable(
            f"MIME structure cannot be parsed ({type(exc).__name__})"
        ) from None
    return parsed


def _text_charset(msg: Message) -> str | None:
    """The first charset a text part of ``msg`` declares: how its raw 8-bit headers read."""
    stack = [msg]
    while stack:
        part = stack.pop()
        if part.is_multipart():
            stack.extend(reversed(subparts(part)))
        elif content_type(part).startswith("text/") and (found := charset(part)):
            return found
    return None
