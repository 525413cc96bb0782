"""The security layer of an SMTP session: never an open relay.

``Guard`` holds what every session shares (the access rules of ``relay.smtp.access``, the
connection limiter, the authenticator, the TLS context) and is built once from Settings.
``GuardedHandler`` is the layer's aiosmtpd hooks, in front of the delivery handler
(``relay.smtp.handler``): ``handle_PROXY`` admits the client the PROXY header names,
``handle_EHLO`` hides AUTH when it is not configured, ``handle_MAIL`` refuses senders the
rules refuse. The session (``relay.smtp.session``) does the rest: admission at connect,
AUTH PLAIN/LOGIN, the idle timeout.

aiosmtpd does the protocol (STARTTLS, AUTH PLAIN/LOGIN, PROXY v1/v2); AUTH is offered only
over TLS unless ``RELAY_AUTH_ALLOW_PLAINTEXT``; a failed AUTH is answered after a growing
per-peer delay (``relay.smtp.auth``); a session silent for ``RELAY_SMTP_TIMEOUT`` gets
``421 4.4.2`` before it is closed.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from relay.config import Settings
from relay.ops.log import get_logger
from relay.smtp.access import Access, ClientState
from relay.smtp.auth import Authenticator, CredentialStore, FailureTracker, authenticated_user
from relay.smtp.inflight import InflightBudget
from relay.smtp.limits import ConnectionLimiter
from relay.smtp.policy import SenderPolicy, format_peer, ip_of
from relay.smtp.replies import Reply
from relay.smtp.tls import reload as reload_tls
from relay.smtp.tls import server_context

__all__ = ["PROXY_TIMEOUT", "Admission", "Guard", "GuardedHandler"]

log = get_logger("relay.smtp.guard")
PROXY_TIMEOUT = 10.0
"""Seconds a connection has to send its PROXY header when the PROXY protocol is on."""


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer at connect: who the client is, and the refusal it gets (None: greet it).

    ``holds_slot``: the connection counts against the limiter and must be released once.
    """

    client: ClientState
    refusal: Reply | None
    holds_slot: bool


@dataclass(slots=True)
class Guard:
    """The security configuration shared by all sessions of one RelayServer."""

    settings: Settings
    access: Access
    limiter: ConnectionLimiter
    authenticator: Authenticator | None = None
    tls_context: ssl.SSLContext | None = None
    on_auth_failure: Callable[[], None] = lambda: None
    """Called once per failed AUTH attempt (the server counts them in its metrics)."""
    on_refusal: Callable[[Reply], None] = lambda reply: None
    """Called with each refusal before DATA (connect, MAIL, AUTH lockout), for metrics."""
    inflight: InflightBudget = field(default_factory=lambda: InflightBudget(0))
    """Bytes of messages in flight, relay-wide (RELAY_MAX_INFLIGHT_BYTES)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Guard:
        """The guard for ``settings``; ConfigError when a file (users, cert) is unusable."""
        return cls(
            settings=settings,
            access=Access.from_settings(settings),
            limiter=ConnectionLimiter(
                settings.relay_max_connections,
                settings.relay_peer_connection_rate,
                per_client=settings.relay_max_connections_per_client,
                per_trusted_client=settings.relay_max_connections_per_trusted_client,
                reserved=settings.reserved_connections,
            ),
            authenticator=_build_authenticator(settings),
            tls_context=_build_tls_context(settings),
            inflight=InflightBudget(settings.relay_max_inflight_bytes),
        )

    @property
    def senders(self) -> SenderPolicy:
        return self.access.senders

    def admit(self, address: str) -> Admission:
        """The connection limits (the per-peer rate spares trusted clients), then the rules."""
        client = self.access.client(address)
        refusal = self.limiter.admit(address, rate_limited=not client.trusted)
        if refusal is not None:
            return Admission(client, refusal, holds_slot=False)
        return Admission(client, self.access.connect_refusal(client), holds_slot=True)

    def reload(self) -> None:
        """Re-read the certificate and the credentials file (SIGHUP); ConfigError keeps both."""
        s = self.settings
        if self.tls_context is not None and s.relay_tls_cert is not None:
            reload_tls(self.tls_context, s.relay_tls_cert, s.relay_tls_key)
        if self.authenticator is not None:
            self.authenticator.store.load()
        log.info("reloaded", tls=self.tls_context is not None, auth=self.authenticator is not None)

    def session_options(self, implicit_tls: bool) -> dict[str, Any]:
        """aiosmtpd SMTP keyword arguments for a session on the plain or the SMTPS listener."""
        s = self.settings
        return {
            "tls_context": None if implicit_tls else self.tls_context,
            "require_starttls": s.relay_require_tls and not implicit_tls,
            "auth_require_tls": not (implicit_tls or s.relay_auth_allow_plaintext),
            "proxy_protocol_timeout": PROXY_TIMEOUT if s.relay_proxy_protocol else None,
        }


def _build_authenticator(settings: Settings) -> Authenticator | None:
    if not settings.auth_configured:
        return None
    single = None
    if settings.relay_auth_user is not None and settings.relay_auth_password is not None:
        single = (settings.relay_auth_user, settings.relay_auth_password.get_secret_value())
    store = CredentialStore(settings.relay_auth_file, single)
    return Authenticator(store, FailureTracker(settings.relay_auth_failure_delay))


def _build_tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.relay_tls_cert is None:
        return None
    return server_context(settings.relay_tls_cert, settings.relay_tls_key)


class GuardedHandler:
    """The security layer's aiosmtpd hooks, then the delivery handler ``inner``'s.

    ``server`` is the session (``relay.smtp.session.RelaySession``): ``client`` is what it
    knows of the client, ``admit`` answers the connection. Hooks not listed here are
    ``inner``'s own, forwarded as they are.
    """

    def __init__(
        self, inner: Any, access: Access, on_refusal: Callable[[Reply], None] = lambda r: None
    ) -> None:
        self.inner = inner
        self.access = access
        self.on_refusal = on_refusal

    async def handle_PROXY(self, server: Any, session: Any, envelope: Any, proxy: Any) -> bool:
        """The PROXY header named the real client: log as it, then admit it (or not)."""
        source = proxy.src_addr if proxy.src_addr is not None else session.peer
        address = ip_of(source)
        structlog.contextvars.bind_contextvars(
            peer=format_peer((address, proxy.src_port)), via=format_peer(session.peer)
        )
        admitted: bool = await server.admit(address)
        return admitted

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        lines = await self.inner.handle_EHLO(server, session, envelope, hostname, responses)
        return self.access.ehlo_lines(lines)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        user = authenticated_user(session)
        refusal = self.access.mail_refusal(server.client, user, address)
        if refusal is None:
            status: str = await self.inner.handle_MAIL(
                server, session, envelope, address, mail_options
            )
            return status
        self.on_refusal(refusal)
        log.warning("mail_refused", mail_from=address, reply=refusal.code,
                    reason=refusal.text, user=user.name if user else None)  # fmt: skip
        return str(refusal)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        status: str = await self.inner.handle_RCPT(server, session, envelope, address, rcpt_options)
        return status

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        status: str = await self.inner.handle_DATA(server, session, envelope)
        return status

    async def handle_exception(self, error: Exception) -> str:
        status: str = await self.inner.handle_exception(error)
        return status
