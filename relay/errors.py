"""The relay's exceptions: one tree, split at the top by what the client must do next.

Errors form one tree. The top split is what the SMTP client must do next: try again
later (4xx) or give up (5xx)::

    RelayError
     ├── TransientError                    4xx: the client keeps the message and retries
     │    ├── UpstreamUnreachable          connection refused / reset, DNS    451 4.4.1
     │    ├── UpstreamTimeout              no answer within the timeout       451 4.4.2
     │    ├── UpstreamThrottled            429                                451 4.4.5
     │    ├── UpstreamBusy                 409 (idempotency key in progress)  451 4.4.5
     │    ├── UpstreamServerError          5xx                                451 4.3.0
     │    ├── UpstreamUnexpected           any other status we do not know    451 4.3.0
     │    ├── RelayMisconfigured           401 / 404 (key or account id)      451 4.3.5
     │    ├── ShuttingDown                 the relay is stopping              421 4.3.2
     │    ├── SpoolRefused                 the spool cannot store it now      451 4.3.0
     │    └── InternalError                a bug in the relay                 451 4.3.0
     └── PermanentError                    5xx: the client bounces the message
          ├── MessageUnparseable           not a usable RFC 5322 message      554 5.6.0
          ├── InvalidHeader                a relay/AhaSend header is invalid  554 5.6.0
          ├── MessageEncrypted             S/MIME or PGP/MIME encrypted       554 5.6.1
          ├── MessageTooLarge              over the size limit / 413          552 5.3.4
          ├── UpstreamRejected             400 / 422: the API refused it      554 5.6.0
          ├── UpstreamForbidden            403                                550 5.7.1
          ├── SenderRefused                From domain not allowed (policy)   550 5.7.1
          ├── NoTenant                     no tenant and no global key        550 5.7.1
          └── NothingQueued                202 but every recipient failed     554 5.0.0

Start-up errors sit outside that tree: they stop the process, never a transaction::

    ConfigError                            a setting is missing or invalid     exit 78
    SpoolUnavailable                       the spool cannot be opened or used  exit 73

Reply codes live in ``relay.smtp.replies`` (``REPLY_FOR`` maps each class above to its
reply); this module names outcomes, not SMTP.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InternalError",
    "InvalidHeader",
    "MessageEncrypted",
    "MessageTooLarge",
    "MessageUnparseable",
    "NoTenant",
    "NothingQueued",
    "PermanentError",
    "RelayError",
    "RelayMisconfigured",
    "SenderRefused",
    "ShuttingDown",
    "SpoolRefused",
    "SpoolUnavailable",
    "TransientError",
    "UpstreamBusy",
    "UpstreamForbidden",
    "UpstreamRejected",
    "UpstreamServerError",
    "UpstreamThrottled",
    "UpstreamTimeout",
    "UpstreamUnexpected",
    "UpstreamUnreachable",
]


class ConfigError(Exception):
    """A setting is missing or invalid. ``str()`` is one line that names the variable."""


class SpoolUnavailable(Exception):
    """The spool cannot be opened or used (permissions, not a database, disk gone...).

    ``str()`` says why. At start-up it stops the process (exit 73); during a transaction
    the dispatcher answers 4xx instead of 250, and the worker retries in its next round.
    """


class RelayError(Exception):
    """Anything that stops a message from being accepted. ``detail`` is safe to show."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


class TransientError(RelayError):
    """The client should keep the message and try again later (4xx)."""


class PermanentError(RelayError):
    """Retrying the same message cannot succeed (5xx)."""


class UpstreamUnreachable(TransientError):
    """AhaSend could not be reached (connection refused or reset, name resolution)."""


class UpstreamTimeout(TransientError):
    """AhaSend did not answer within the configured timeout."""


class UpstreamThrottled(TransientError):
    """AhaSend answered 429: the account's request rate is exceeded."""

    def __init__(self, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class UpstreamBusy(UpstreamThrottled):
    """AhaSend answered 409: a request with this Idempotency-Key is still in progress."""


class SpoolRefused(TransientError):
    """The message needed the spool (the API could not take it) and the spool could not
    store it (database unreachable, disk full): nothing was acknowledged."""


class UpstreamServerError(TransientError):
    """AhaSend answered 5xx."""


class UpstreamUnexpected(TransientError):
    """AhaSend answered a status this relay has no rule for; kept for a retry, logged loudly."""


class RelayMisconfigured(TransientError):
    """AhaSend refused our credentials or account (401/404): the operator must fix config."""


class ShuttingDown(TransientError):
    """The relay is stopping and takes no new work."""


class InternalError(TransientError):
    """A bug in the relay. The message is not lost: the client keeps it and retries."""


class MessageUnparseable(PermanentError):
    """The DATA is not a message the relay can translate (no usable sender, no body...)."""


class InvalidHeader(PermanentError):
    """A header that steers the relay (``ahasend-*``) has an invalid value."""


class MessageTooLarge(PermanentError):
    """The message exceeds the relay's size limit or AhaSend's (413)."""


class UpstreamRejected(PermanentError):
    """AhaSend refused the request as invalid (400/422)."""


class UpstreamForbidden(PermanentError):
    """AhaSend answered 403: the key may not send for this sender."""


class SenderRefused(PermanentError):
    """The From header names a domain this relay (or this AUTH user) may not send as."""


class NoTenant(PermanentError):
    """No tenant claims the client (AUTH user or network) and there is no global key."""


class NothingQueued(PermanentError):
    """AhaSend answered 202 but reported an error for every recipient."""


class MessageEncrypted(PermanentError):
    """The content is encrypted (S/MIME, PGP/MIME): rebuilt by the API, nobody could read it."""
