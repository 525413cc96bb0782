"""The security layer of an SMTP session: never an open relay.

``Guard`` holds what every session shares (allowed networks, the connection limiter,
the authenticator, the sender policy, the TLS context) and is built once from Settings.
``GuardedSMTP`` is the session: aiosmtpd does the protocol (STARTTLS, AUTH PLAIN/LOGIN,
PROXY), this class decides:

- with ``RELAY_PROXY_PROTOCOL``, only peers in ``RELAY_PROXY_TRUSTED_NETWORKS`` may
  connect (their PROXY header names the real client); others are closed silently;
- at connect (after the PROXY header when ``RELAY_PROXY_PROTOCOL`` is on): the
  connection limits (``421 4.7.0``; the per-peer rate spares the allowed networks),
  then the network — a peer outside
  ``RELAY_ALLOWED_NETWORKS`` gets ``554 5.7.1`` and is disconnected, unless AUTH is
  configured: then it may connect but must authenticate (the host itself, 127.0.0.1 or
  ::1, always gets the greeting for health checks, and ``554 5.7.1`` at MAIL);
- at MAIL: unauthenticated peers outside the networks get ``530 5.7.0``; a MAIL FROM
  outside the allowed sender domains gets ``550 5.7.1`` (``relay.smtp.policy``);
- AUTH: PLAIN and LOGIN (with or without an initial response, any letter case), only
  over TLS unless ``RELAY_AUTH_ALLOW_PLAINTEXT``; ``235 2.7.0`` / ``535 5.7.8`` /
  ``538 5.7.11``; after ``RELAY_AUTH_MAX_FAILURES`` failures ``421 4.7.0`` and the
  connection is closed; failures are answered after a growing per-peer delay;
- a session silent for ``RELAY_SMTP_TIMEOUT`` gets ``421 4.4.2`` before it is closed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, cast

import structlog
from aiosmtpd.smtp import AuthResult, LoginPassword, syntax

from relay.config import Network, Settings
from relay.ops.log import get_logger
from relay.smtp.auth import Authenticator, AuthUser, CredentialStore, FailureTracker
from relay.smtp.limits import ConnectionLimiter
from relay.smtp.policy import SenderPolicy, in_networks, ip_of
from relay.smtp.replies import (
    AUTH_INVALID,
    AUTH_NOT_ENABLED,
    AUTH_OK,
    AUTH_REQUIRED,
    AUTH_TOO_MANY_FAILURES,
    CLIENT_NOT_ALLOWED,
    SENDER_NOT_ALLOWED,
    TIMEOUT,
    Reply,
)
from relay.smtp.session import RelaySMTP, _format_peer
from relay.smtp.tls import reload as reload_tls
from relay.smtp.tls import server_context

__all__ = ["PROXY_TIMEOUT", "ClientState", "Guard", "GuardedSMTP"]

log = get_logger("relay.smtp.guard")
HEALTH_CHECK_PEERS = frozenset({"127.0.0.1", "::1"})
"""The host itself always gets the greeting (``ahasend-relay healthcheck``, container
health checks); outside the allowed networks it is still refused, at MAIL."""
PROXY_TIMEOUT = 10.0
"""Seconds a connection has to send its PROXY header when the PROXY protocol is on."""


@dataclass(frozen=True, slots=True)
class ClientState:
    """What the relay knows about the client of one session."""

    address: str = ""
    trusted: bool = False  # inside RELAY_ALLOWED_NETWORKS
    user: AuthUser | None = None


@dataclass(slots=True)
class Guard:
    """The security configuration shared by all sessions of one RelayServer."""

    settings: Settings
    networks: tuple[Network, ...]
    limiter: ConnectionLimiter
    senders: SenderPolicy
    authenticator: Authenticator | None = None
    tls_context: ssl.SSLContext | None = None
    on_auth_failure: Callable[[], None] = lambda: None
    """Called once per failed AUTH attempt (the server counts them in its metrics)."""
    on_refusal: Callable[[Reply], None] = lambda reply: None
    """Called with each refusal before DATA (connect, MAIL, AUTH lockout), for metrics."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Guard:
        """The guard for ``settings``; ConfigError when a file (users, cert) is unusable."""
        return cls(
            settings=settings,
            networks=settings.allowed_networks,
            limiter=ConnectionLimiter(
                settings.relay_max_connections, settings.relay_peer_connection_rate
            ),
            senders=SenderPolicy(settings.allowed_sender_domains, settings.relay_from_rewrite),
            authenticator=_authenticator(settings),
            tls_context=_tls_context(settings),
        )

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


def _authenticator(settings: Settings) -> Authenticator | None:
    if not settings.auth_configured:
        return None
    single = None
    if settings.relay_auth_user is not None and settings.relay_auth_password is not None:
        single = (settings.relay_auth_user, settings.relay_auth_password.get_secret_value())
    store = CredentialStore(settings.relay_auth_file, single)
    return Authenticator(store, FailureTracker(settings.relay_auth_failure_delay))


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.relay_tls_cert is None:
        return None
    return server_context(settings.relay_tls_cert, settings.relay_tls_key)


@dataclass(frozen=True, slots=True)
class _Pending:
    """Credentials aiosmtpd collected, waiting for the asynchronous check."""

    credentials: LoginPassword

    def __repr__(self) -> str:  # aiosmtpd logs AuthResults at debug level
        return "_Pending(...)"


class GuardedSMTP(RelaySMTP):
    """A RelaySMTP session that enforces the ``Guard``. Extra keywords: guard, implicit_tls."""

    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    def __init__(
        self, handler: Any, *, guard: Guard, implicit_tls: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(handler, **guard.session_options(implicit_tls), **kwargs)
        self.guard = guard
        self.implicit_tls = implicit_tls
        self.client = ClientState()
        self._admitted = False
        self._auth_failures = 0

    # -- connect ----------------------------------------------------------------
    async def _handle_client(self) -> None:
        if self._proxy_timeout is None:
            if await self._admit(ip_of(self._peer)):
                await super()._handle_client()
        elif in_networks(ip_of(self._peer), self.guard.settings.proxy_trusted_networks):
            await super()._handle_client()  # admitted in _on_proxy, for the real client
        else:
            log.warning("proxy_peer_untrusted", client=ip_of(self._peer))
            self.guard.on_refusal(CLIENT_NOT_ALLOWED)
            if self.transport is not None:
                self.transport.close()

    async def _admit(self, address: str) -> bool:
        """Admit the client at ``address`` or answer the refusal and close; True if admitted."""
        trusted = in_networks(address, self.guard.networks)
        refusal = self.guard.limiter.admit(address, rate_limited=not trusted)
        if refusal is None:
            self._admitted = True
            self.client = ClientState(address, trusted)
            if trusted or self.guard.authenticator is not None or address in HEALTH_CHECK_PEERS:
                return True
            refusal = CLIENT_NOT_ALLOWED
        self.guard.on_refusal(refusal)
        log.warning("connection_refused", client=address, reply=refusal.code,
                    enhanced=refusal.enhanced, reason=refusal.text)  # fmt: skip
        await self.push(str(refusal))
        if self.transport is not None:
            self.transport.close()
        return False

    async def _on_proxy(self, proxy: Any) -> bool:
        """The PROXY header named the real client: log it, then admit it (or not)."""
        source = proxy.src_addr if proxy.src_addr is not None else ip_of(self._peer)
        address = ip_of(source)
        peer = f"[{address}]:{proxy.src_port}" if ":" in address else f"{address}:{proxy.src_port}"
        structlog.contextvars.bind_contextvars(peer=peer, via=_format_peer(self._peer))
        return await self._admit(address)

    def connection_made(self, transport: Any) -> None:
        restarting = self.transport is not None  # STARTTLS: forget what plaintext told us
        super().connection_made(transport)
        if restarting:
            self.client = replace(self.client, user=None)

    def connection_lost(self, error: Exception | None) -> None:
        if self._admitted:
            self._admitted = False
            self.guard.limiter.release()
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        transport = cast(asyncio.WriteTransport | None, self.transport)  # uvloop's too
        if transport is not None and not transport.is_closing():
            transport.write(f"{TIMEOUT}\r\n".encode("ascii"))
        log.info("timeout", client=self.client.address)
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    @property
    def _peer(self) -> Any:
        return self.session.peer if self.session is not None else None

    # -- hooks ------------------------------------------------------------------
    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        if command == "PROXY":
            return await self._on_proxy(args[0])
        if command == "MAIL" and (refusal := self.mail_refusal(args[0])) is not None:
            self.guard.on_refusal(refusal)
            log.warning("mail_refused", mail_from=args[0], reply=refusal.code,
                        reason=refusal.text, user=self._user_name)  # fmt: skip
            return str(refusal)
        status = await super()._call_handler_hook(command, *args)
        if command == "EHLO" and self.guard.authenticator is None and isinstance(status, list):
            status = [line for line in status if not line[4:].upper().startswith("AUTH")]
        return status

    def mail_refusal(self, address: str) -> Reply | None:
        """The reply refusing MAIL FROM ``address`` in this session, or None."""
        user = self.client.user
        if not (self.client.trusted or user is not None):
            return AUTH_REQUIRED if self.guard.authenticator is not None else CLIENT_NOT_ALLOWED
        domains = user.sender_domains if user is not None else None
        if not self.guard.senders.mail_from_allowed(address, domains):
            return SENDER_NOT_ALLOWED
        return None

    @property
    def _user_name(self) -> str | None:
        return self.client.user.name if self.client.user is not None else None

    # -- AUTH -------------------------------------------------------------------
    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if self.guard.authenticator is None:
            await self.push(str(AUTH_NOT_ENABLED))
            return
        mechanism, _, rest = (arg or "").strip().partition(" ")
        await super().smtp_AUTH(f"{mechanism.upper()} {rest}".strip() if arg else arg)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._settle(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._settle(await super().auth_LOGIN(_, args))

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        """aiosmtpd's synchronous check, deferred: ``_settle`` verifies off the loop."""
        return AuthResult(success=False, handled=False, auth_data=_Pending(auth_data))

    async def _settle(self, result: AuthResult) -> AuthResult:
        """The final AuthResult for credentials aiosmtpd collected (or its own error)."""
        pending = result.auth_data
        if not isinstance(pending, _Pending) or self.guard.authenticator is None:
            return result
        login, password = pending.credentials
        user = await self.guard.authenticator.verify(self.client.address, login, password)
        if user is not None:
            self.client = replace(self.client, user=user)
            log.info("auth_succeeded", user=user.name)
            return AuthResult(success=True, auth_data=user.name, message=str(AUTH_OK))
        return await self._auth_failed(login)

    async def _auth_failed(self, login: bytes) -> AuthResult:
        self._auth_failures += 1
        self.guard.on_auth_failure()
        log.warning("auth_failed", user=login.decode("utf-8", "replace")[:64],
                    failures=self._auth_failures, client=self.client.address)  # fmt: skip
        if self._auth_failures < self.guard.settings.relay_auth_max_failures:
            return AuthResult(success=False, handled=False, message=str(AUTH_INVALID))
        self.guard.on_refusal(AUTH_TOO_MANY_FAILURES)
        await self.push(str(AUTH_TOO_MANY_FAILURES))
        if self.transport is not None:
            self.transport.close()
        return AuthResult(success=False, handled=True)
