"""Every outcome of a transaction, and the one table that turns it into an SMTP reply.

Errors are defined in ``relay.errors`` (the tree is drawn there); this module holds the
replies.

The table (`REPLY_FOR`) is the only place where an error class meets a reply code; reply
codes elsewhere in the relay are the named `Reply` constants below, never inline strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from relay.errors import (
    InternalError,
    InvalidHeader,
    MessageEncrypted,
    MessageTooLarge,
    MessageUnparseable,
    NoTenant,
    NothingQueued,
    PermanentError,
    RelayError,
    RelayMisconfigured,
    SenderRefused,
    ShuttingDown,
    SpoolRefused,
    TransientError,
    UpstreamBusy,
    UpstreamForbidden,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnexpected,
    UpstreamUnreachable,
)

__all__ = [
    "RECIPIENT_NOT_ALLOWED",
    "REPLY_FOR",
    "SPOOL_UNAVAILABLE",
    "Reply",
    "reply_for",
    "sanitize",
    "with_enhanced_code",
]

_MAX_DETAIL = 200
_UNSAFE = re.compile(r"[^\x20-\x7e]+")


def sanitize(text: str, limit: int = _MAX_DETAIL) -> str:
    """Fold ``text`` to one printable-ASCII line of at most ``limit`` characters.

    Upstream messages end up in SMTP replies, so they must never carry CR/LF (reply
    injection) or non-ASCII (clients without SMTPUTF8).
    """
    line = _UNSAFE.sub(" ", text).strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class Reply:
    """An RFC 5321 reply with its RFC 3463 enhanced status code."""

    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    def with_detail(self, detail: str | None) -> Reply:
        """This reply with a sanitized ``detail`` appended to its text (when there is one)."""
        if not detail:
            return self
        return Reply(self.code, self.enhanced, f"{self.text}: {sanitize(detail)}")

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500


# -- replies of the SMTP dialogue ------------------------------------------------------
OK_SENDER: Final = Reply(250, "2.1.0", "Sender OK")
OK_RECIPIENT: Final = Reply(250, "2.1.5", "Recipient OK")
QUEUED: Final = Reply(250, "2.0.0", "Queued")
PARTIALLY_QUEUED: Final = Reply(250, "2.0.0", "Partially queued")
QUEUED_FOR_DELIVERY: Final = Reply(250, "2.0.0", "Queued for delivery")
DRY_RUN_ACCEPTED: Final = Reply(250, "2.0.0", "Accepted (dry run, not sent)")
TOO_MANY_RECIPIENTS: Final = Reply(452, "4.5.3", "Too many recipients in this transaction")
BAD_RECIPIENT_ADDRESS: Final = Reply(550, "5.1.3", "Recipient address must be user@domain")
TOO_LARGE: Final = Reply(552, "5.3.4", "Message too big for system")
SERVICE_NOT_AVAILABLE: Final = Reply(421, "4.3.2", "Service shutting down, try again later")
LOCAL_ERROR: Final = Reply(451, "4.3.0", "Local error in processing, try again later")
SPOOL_UNAVAILABLE: Final = Reply(451, "4.3.0", "Spool unavailable, try again later")

# -- replies of the security layer (relay.smtp.access, relay.smtp.session) -----------------
AUTH_OK: Final = Reply(235, "2.7.0", "Authentication successful")
AUTH_INVALID: Final = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_REQUIRED: Final = Reply(530, "5.7.0", "Authentication required")
STARTTLS_REQUIRED: Final = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
"""RELAY_REQUIRE_TLS before STARTTLS: aiosmtpd's own refusal (``AIOSMTPD_STARTTLS_REQUIRED``)."""
AIOSMTPD_STARTTLS_REQUIRED: Final = "530 Must issue a STARTTLS command first"
AUTH_NEEDS_TLS: Final = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
AUTH_NOT_ENABLED: Final = Reply(503, "5.5.1", "Authentication not enabled")
AUTH_TOO_MANY_FAILURES: Final = Reply(421, "4.7.0", "Too many failed authentication attempts")
CLIENT_NOT_ALLOWED: Final = Reply(554, "5.7.1", "Access denied: client not allowed")
SENDER_NOT_ALLOWED: Final = Reply(550, "5.7.1", "Sender address not allowed")
RECIPIENT_NOT_ALLOWED: Final = Reply(550, "5.7.1", "Recipient not allowed")
TOO_MANY_CONNECTIONS: Final = Reply(421, "4.7.0", "Too many connections, try again later")
PEER_RATE_EXCEEDED: Final = Reply(
    421, "4.7.0", "Too many connections from your address, try again later"
)
CLIENT_CONNECTIONS_EXCEEDED: Final = Reply(
    421, "4.7.0", "Too many concurrent connections from your address, try again later"
)
TOO_MANY_JUNK_COMMANDS: Final = Reply(
    421, "4.7.0", "Too many commands without a transaction, closing connection"
)
TLS_ALREADY_ACTIVE: Final = Reply(554, "5.5.1", "TLS already active")
TIMEOUT: Final = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
AUTH_BAD_BASE64: Final = Reply(501, "5.5.2", "Can't decode base64")
AUTH_CANNOT_SPLIT: Final = Reply(501, "5.5.2", "Can't split auth value")

# -- DATA, as aiosmtpd words it (relay.smtp.session reads DATA itself) ---------------------
START_DATA: Final = "354 End data with <CR><LF>.<CR><LF>"
"""The go-ahead for the content: an intermediate reply, so no enhanced code (RFC 2034 §4)."""
NEED_RCPT: Final = Reply(503, "5.5.1", "need RCPT command")
DATA_SYNTAX: Final = Reply(501, "5.5.4", "Syntax: DATA")
DATA_LINE_TOO_LONG: Final = Reply(500, "5.5.2", "Line too long (see RFC5321 4.5.3.1.6)")
TOO_MUCH_DATA: Final = Reply(552, "5.3.4", "Too much mail data")
INFLIGHT_BUDGET_FULL: Final = Reply(
    452, "4.3.1", "Insufficient system storage: too many messages in flight, try again later"
)
"""DATA past RELAY_MAX_INFLIGHT_BYTES (``relay.smtp.inflight``): the client retries later."""

# -- the single outcome table ----------------------------------------------------------


REPLY_FOR: Final[dict[type[RelayError], Reply]] = {
    UpstreamUnreachable: Reply(451, "4.4.1", "Upstream API unreachable, try again later"),
    UpstreamTimeout: Reply(451, "4.4.2", "Upstream API timed out, try again later"),
    UpstreamBusy: Reply(451, "4.4.5", "Upstream API busy with this message, try again later"),
    UpstreamThrottled: Reply(451, "4.4.5", "Upstream API rate limit reached, try again later"),
    UpstreamServerError: Reply(451, "4.3.0", "Upstream API error, try again later"),
    UpstreamUnexpected: Reply(451, "4.3.0", "Unexpected upstream API answer, try again later"),
    RelayMisconfigured: Reply(451, "4.3.5", "Relay misconfigured, try again later"),
    ShuttingDown: SERVICE_NOT_AVAILABLE,
    SpoolRefused: SPOOL_UNAVAILABLE,
    InternalError: LOCAL_ERROR,
    TransientError: LOCAL_ERROR,
    MessageUnparseable: Reply(554, "5.6.0", "Message could not be parsed"),
    InvalidHeader: Reply(554, "5.6.0", "Invalid header"),
    MessageEncrypted: Reply(
        554, "5.6.1", "Encrypted mail cannot be relayed: the API rebuilds MIME, send it unencrypted"
    ),
    MessageTooLarge: TOO_LARGE,
    UpstreamRejected: Reply(554, "5.6.0", "Rejected by AhaSend"),
    UpstreamForbidden: Reply(550, "5.7.1", "Sending not permitted by AhaSend"),
    NothingQueued: Reply(554, "5.0.0", "AhaSend queued no recipient"),
    SenderRefused: Reply(550, "5.7.1", "Sender address not allowed"),
    NoTenant: Reply(550, "5.7.1", "Access denied: no tenant for this client"),
    PermanentError: Reply(554, "5.0.0", "Message rejected"),
}

# Details that are ours to show. Transient upstream details stay in the log: they may
# name internals (hosts, addresses) and the client cannot act on them anyway.
_SHOW_DETAIL: Final = (PermanentError,)


def reply_for(error: RelayError) -> Reply:
    """The reply for ``error``: the entry of its nearest class in ``REPLY_FOR``."""
    for cls in type(error).__mro__:
        if cls in REPLY_FOR:
            reply = REPLY_FOR[cls]
            return reply.with_detail(error.detail) if isinstance(error, _SHOW_DETAIL) else reply
    return LOCAL_ERROR


# -- enhanced codes for replies we do not write ourselves ------------------------------
# aiosmtpd answers some errors itself ("503 Error: need MAIL command"); RFC 2034 wants
# every reply of a session that advertised ENHANCEDSTATUSCODES to carry one.
_HAS_ENHANCED = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3}(?:\s|$)")
_ENHANCED_BY_CODE: Final[dict[int, str]] = {
    211: "2.0.0",
    214: "2.0.0",
    221: "2.0.0",
    235: "2.7.0",
    250: "2.0.0",
    251: "2.1.5",
    252: "2.0.0",
    421: "4.3.2",
    450: "4.2.0",
    451: "4.3.0",
    452: "4.3.1",
    454: "4.7.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    534: "5.7.9",
    535: "5.7.8",
    538: "5.7.11",
    550: "5.0.0",
    551: "5.1.6",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.0.0",
    555: "5.5.4",
}
# Replies that are not final answers to a command carry no enhanced code (RFC 2034 §4).
_NO_ENHANCED: Final = frozenset({220, 334, 354})


def with_enhanced_code(status: str) -> str:
    """``status`` with an RFC 3463 enhanced code inserted when it has none.

    Greetings, AUTH challenges and the DATA go-ahead are left alone, as are
    multi-line replies' continuation lines (``250-...``) that the EHLO answer uses.
    """
    if len(status) < 4 or not status[:3].isdigit() or _HAS_ENHANCED.match(status):
        return status
    code = int(status[:3])
    enhanced = _ENHANCED_BY_CODE.get(code)
    if code in _NO_ENHANCED or enhanced is None or status[3] == "-":
        return status
    text = status[4:].removeprefix("Error: ")
    return f"{code} {enhanced} {text}"
