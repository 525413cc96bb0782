"""Idempotency-Keys: the same message resent is delivered once; two alerts are two.

With a Message-ID, the key is a digest of the Message-ID, the envelope (sender and the
set of recipients) and the raw content. A client that resends the very same transaction
within AhaSend's 24 h window gets the stored outcome instead of a second delivery, while
Postfix's habit of sending one Message-ID in several transactions with different
recipients yields different keys (a reused key with another body would get 422).

Without a Message-ID nothing tells a resend from a new message (a device sending the
same alert twice), so each transaction gets a fresh random key. The relay's own retries
of a transaction always reuse its keys.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

from relay.translate.tree import Raw

__all__ = ["transaction_keys"]

_PREFIX = "relay-"


def transaction_keys(
    message_id: str | None,
    mail_from: str,
    rcpt_tos: Sequence[str],
    raw: Raw,
    count: int,
) -> list[str]:
    """``count`` Idempotency-Keys for one transaction's requests (≤ 255 chars each)."""
    base = _stable_base(message_id, mail_from, rcpt_tos, raw) if message_id else _fresh_base()
    if count == 1:
        return [base]
    return [f"{base}-{index}" for index in range(count)]


def _stable_base(message_id: str, mail_from: str, rcpt_tos: Sequence[str], raw: Raw) -> str:
    digest = hashlib.sha256()
    for part in (message_id, mail_from.lower(), *sorted({r.lower() for r in rcpt_tos})):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    digest.update(hashlib.sha256(raw).digest())
    return _PREFIX + digest.hexdigest()


def _fresh_base() -> str:
    return _PREFIX + uuid.uuid4().hex
