"""The aiosmtpd hooks: thin glue between the SMTP session and the pure core.

``handle_DATA`` is the recipe: translate the message, derive its Idempotency-Keys, hand
the requests to the ``Dispatcher`` (with the ``Submission`` its router picks the route
by: envelope, client address, AUTH user), turn the outcome into one reply from ``replies``, and
log one canonical ``message`` event. Nothing here parses MIME or speaks HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiosmtpd.smtp import TLSSetupException

from relay.delivery.dispatch import Dispatcher
from relay.delivery.route import DEFAULT_ROUTE, Submission
from relay.delivery.sender import Delivery, refusals
from relay.delivery.tenants import Tenant, allowed_domains, apply_tenant
from relay.errors import RelayError
from relay.ops.log import get_logger
from relay.ops.metrics import MessageObserver
from relay.smtp.auth import AuthUser, authenticated_user
from relay.smtp.policy import SenderPolicy, with_payloads
from relay.smtp.replies import (
    BAD_RECIPIENT_ADDRESS,
    LOCAL_ERROR,
    OK_RECIPIENT,
    OK_SENDER,
    PARTIALLY_QUEUED,
    QUEUED,
    QUEUED_FOR_DELIVERY,
    RECIPIENT_NOT_ALLOWED,
    SENDER_NOT_ALLOWED,
    TOO_MANY_RECIPIENTS,
    Reply,
    reply_for,
)
from relay.translate.idempotency import transaction_keys
from relay.translate.message import Translated, translate, usable_recipient
from relay.translate.tree import Raw
from relay.translate.wire import serialise

__all__ = ["RelayHandler", "request_id"]

log = get_logger("relay.smtp.handler")
OFFLOAD_SIZE = 1024 * 1024
"""Messages larger than this are translated in a worker thread, off the event loop."""


@dataclass(slots=True)
class _Record:
    """The fields of one message's canonical log event, filled in as the recipe runs."""

    fields: dict[str, Any] = field(default_factory=dict)

    def add(self, **values: Any) -> None:
        self.fields.update(values)


class RelayHandler:
    """aiosmtpd handler that forwards each message through ``dispatcher``."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        max_recipients: int = 50,
        accepted_reply: Reply = QUEUED,
        clock: Callable[[], float] = time.perf_counter,
        sender_policy: SenderPolicy | None = None,
        observer: MessageObserver | None = None,
        tenant_of: Callable[[str | None, str], Tenant | None] | None = None,
    ) -> None:
        self._tenant_of = tenant_of
        self._observer = observer
        self._dispatcher = dispatcher
        self._max_recipients = max_recipients
        self._accepted_reply = accepted_reply
        self._clock = clock
        self._sender_policy = sender_policy

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        *extensions, last = responses
        return [*extensions, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", last]

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        tenant = self._tenant(server, session)
        if tenant is not None and not self._mail_from_allowed(address, session, tenant):
            return self._refuse(SENDER_NOT_ALLOWED)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return str(OK_SENDER)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        """Accept ``address`` unless the transaction is full or it has no domain (postmaster)."""
        if not usable_recipient(address):
            return self._refuse(BAD_RECIPIENT_ADDRESS)
        if len(envelope.rcpt_tos) >= self._max_recipients:
            return self._refuse(TOO_MANY_RECIPIENTS)
        tenant = self._tenant(server, session)
        if tenant is not None and not tenant.recipient_allowed(address):
            return self._refuse(RECIPIENT_NOT_ALLOWED)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return str(OK_RECIPIENT)

    def _refuse(self, reply: Reply) -> str:
        if self._observer is not None:
            self._observer.refused(reply)
        return str(reply)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Deliver the message; the request id ties its log lines together."""
        with structlog.contextvars.bound_contextvars(request_id=request_id(server)):
            return await self._deliver(server, session, envelope)

    async def _deliver(self, server: Any, session: Any, envelope: Any) -> str:
        started, record = self._clock(), _Record()
        raw: Raw = envelope.content
        record.add(mail_from=envelope.mail_from, to=list(envelope.rcpt_tos),
                   rcpt_count=len(envelope.rcpt_tos), size=len(raw))  # fmt: skip
        tenant = self._tenant(server, session)
        if tenant is not None:
            record.add(tenant=tenant.name)
        try:
            translated = await self._translate(raw, envelope.mail_from, envelope.rcpt_tos)
            record.add(msgid=translated.message_id)
            translated = self._vet_sender(translated, authenticated_user(session), tenant)
            keys = transaction_keys(
                translated.message_id, envelope.mail_from, envelope.rcpt_tos, raw,
                len(translated.payloads),
            )  # fmt: skip
            envelope.content = envelope.original_content = None  # free it early
            del raw
            record.add(attachments=translated.attachment_count, idempotency_keys=keys)
            if translated.notices:  # e.g. signature_removed: what the recipient will not get
                record.add(notices=list(translated.notices))
            submission = _submission(server, session, envelope)
            deliveries = await self._send_all(translated, keys, submission, record)
            reply = self._reply_for_deliveries(deliveries)
        except RelayError as exc:
            reply = reply_for(exc)
            record.add(error=type(exc).__name__, error_detail=exc.detail)
        except Exception:
            log.exception("internal_error", hook="DATA")
            reply = LOCAL_ERROR
            record.add(error="InternalError")
        server.transactions = getattr(server, "transactions", 0) + 1
        seconds = self._clock() - started
        self._log_message(record, reply, seconds)
        if self._observer is not None:
            self._observer.message_done(
                reply, seconds=seconds, size=record.fields["size"],
                spooled=bool(record.fields.get("spooled")),
                sent=record.fields.get("upstream_status") is not None,
                tenant=record.fields.get("tenant", DEFAULT_ROUTE),
            )  # fmt: skip
        return str(reply)

    async def handle_exception(self, error: Exception) -> str:
        """Any exception aiosmtpd did not expect: a transient reply, never internals.

        A failed STARTTLS handshake (the client distrusts the certificate, speaks no
        common protocol) is the client's problem, not a bug: a warning, and aiosmtpd
        closes the connection without sending the reply.
        """
        if isinstance(error, TLSSetupException):
            log.warning("starttls_failed", reason=str(error.__cause__ or error))
            return str(LOCAL_ERROR)
        log.error("internal_error", exc_info=error)
        return str(LOCAL_ERROR)

    def _tenant(self, server: Any, session: Any) -> Tenant | None:
        """The session's tenant (AUTH user, then network); None without tenants."""
        if self._tenant_of is None:
            return None
        user = authenticated_user(session)
        client = getattr(getattr(server, "client", None), "address", "")
        return self._tenant_of(user.name if user is not None else None, client)

    def _mail_from_allowed(self, address: str, session: Any, tenant: Tenant) -> bool:
        """The tenant's sender domains at MAIL (the relay-wide rules ran before)."""
        if self._sender_policy is None:
            return True
        user = authenticated_user(session)
        domains = allowed_domains(user.sender_domains if user is not None else None, tenant)
        return self._sender_policy.mail_from_allowed(address, domains)

    def _vet_sender(
        self, translated: Translated, user: AuthUser | None, tenant: Tenant | None = None
    ) -> Translated:
        """Apply the sender policy (``relay.smtp.policy``): From rewritten, or SenderRefused;
        then the tenant's tags and forced sandbox (``relay.delivery.tenants.apply_tenant``)."""
        payloads = translated.payloads
        if self._sender_policy is not None:
            domains = allowed_domains(user.sender_domains if user is not None else None, tenant)
            payloads = self._sender_policy.vet(payloads, domains)
        return with_payloads(translated, [apply_tenant(p, tenant) for p in payloads])

    async def _translate(self, raw: Raw, mail_from: str, rcpt_tos: list[str]) -> Translated:
        if len(raw) > OFFLOAD_SIZE:
            return await asyncio.to_thread(translate, raw, mail_from, rcpt_tos)
        return translate(raw, mail_from, rcpt_tos)

    async def _send_all(
        self, translated: Translated, keys: Sequence[str], submission: Submission, record: _Record
    ) -> list[Delivery]:
        """Serialise every request, then send them through the dispatcher.

        Each payload is dropped as soon as it is serialised (``translated.payloads`` is
        consumed), so a large attachment's base64 is in memory once (in the body) while it
        is sent, not twice.
        """
        bodies = []
        while translated.payloads:
            bodies.append(serialise(translated.payloads.pop(0)))
        deliveries = await self._dispatcher.send_all(bodies, keys, submission)
        record.add(
            spooled=[d.spool_id for d in deliveries if d.spooled],
            upstream_status=deliveries[-1].status,
            message_ids=[i for d in deliveries for i in d.message_ids],
            replayed=any(d.replayed for d in deliveries),
        )
        return deliveries

    def _reply_for_deliveries(self, deliveries: Sequence[Delivery]) -> Reply:
        ids = [i for d in deliveries for i in d.message_ids]
        failures = [f for d in deliveries for f in d.failures]
        if failures:
            log.warning("recipients_refused", refused=refusals(failures))
            return PARTIALLY_QUEUED.with_detail(
                f"{len(failures)} recipient(s) refused: {failures[0][0]} ({failures[0][1]})"
            )
        spooled = [str(d.spool_id) for d in deliveries if d.spooled]
        if spooled:
            return QUEUED_FOR_DELIVERY.with_detail(f"spool id {', '.join(spooled)}")
        if not ids:
            return self._accepted_reply
        more = f" (+{len(ids) - 1} more)" if len(ids) > 1 else ""
        return self._accepted_reply.with_detail(ids[0] + more)

    def _log_message(self, record: _Record, reply: Reply, seconds: float) -> None:
        latency_ms = round(seconds * 1000, 2)
        level = log.info if reply.code < 400 else log.warning
        level("message", reply=reply.code, enhanced=reply.enhanced, latency_ms=latency_ms,
              **record.fields)  # fmt: skip


def _submission(server: Any, session: Any, envelope: Any) -> Submission:
    """The transaction as the router sees it: envelope, client address, AUTH user."""
    client = getattr(server, "client", None)
    user = authenticated_user(session)
    return Submission(
        mail_from=envelope.mail_from,
        rcpt_tos=tuple(envelope.rcpt_tos),
        client=getattr(client, "address", ""),
        user=user.name if user is not None else None,
    )


def request_id(server: Any) -> str:
    """``<session_id>.<n>`` for the session's n-th transaction: ties its log lines together."""
    return f"{getattr(server, 'session_id', '-')}.{getattr(server, 'transactions', 0) + 1}"
