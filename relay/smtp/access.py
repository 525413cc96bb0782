"""Who may connect, send and authenticate: the access rules as pure decisions.

No I/O and no aiosmtpd here: the session (``relay.smtp.session``) and its hooks
(``relay.smtp.guard``) ask these questions and act on the answers. Like Postfix's
``permit_mynetworks, permit_sasl_authenticated, reject``:

- with ``RELAY_PROXY_PROTOCOL``, only peers in ``RELAY_PROXY_TRUSTED_NETWORKS`` may
  connect (their PROXY header names the real client);
- at connect (after the PROXY header when it is on): a client outside
  ``RELAY_ALLOWED_NETWORKS`` gets ``554 5.7.1`` and is disconnected, unless AUTH is
  configured: then it may connect but must authenticate. The host itself (127.0.0.1,
  ::1) always gets the greeting for health checks, and ``554 5.7.1`` at MAIL;
- at MAIL: an unauthenticated client outside the networks gets ``530 5.7.0`` (AUTH
  configured) or ``554 5.7.1``; a MAIL FROM outside the allowed sender domains gets
  ``550 5.7.1`` (``relay.smtp.policy``);
- a failed AUTH gets ``535 5.7.8``; the ``RELAY_AUTH_MAX_FAILURES``-th gets ``421 4.7.0``
  and the session ends;
- without AUTH configured, EHLO does not advertise it.

The connection limits (``relay.smtp.limits``) come first at connect; ``Guard.admit``
combines both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from relay.config import Network, Settings
from relay.smtp.auth import AuthUser
from relay.smtp.policy import SenderPolicy, in_networks
from relay.smtp.replies import (
    AUTH_INVALID,
    AUTH_REQUIRED,
    AUTH_TOO_MANY_FAILURES,
    CLIENT_NOT_ALLOWED,
    SENDER_NOT_ALLOWED,
    Reply,
)

__all__ = ["HEALTH_CHECK_PEERS", "Access", "ClientState", "Verdict"]

HEALTH_CHECK_PEERS = frozenset({"127.0.0.1", "::1"})
"""The host itself always gets the greeting (``ahasend-relay healthcheck``, container
health checks); outside the allowed networks it is still refused, at MAIL."""


@dataclass(frozen=True, slots=True)
class ClientState:
    """What the relay knows about the client of one session, from its address."""

    address: str = ""
    trusted: bool = False  # inside RELAY_ALLOWED_NETWORKS


@dataclass(frozen=True, slots=True)
class Verdict:
    """A reply, and whether the session ends after it."""

    reply: Reply
    disconnect: bool = False


@dataclass(frozen=True, slots=True)
class Access:
    """The access rules of one relay; every method is a pure decision."""

    networks: tuple[Network, ...] = ()
    proxy_networks: tuple[Network, ...] = ()
    auth_enabled: bool = False
    senders: SenderPolicy = field(default_factory=SenderPolicy)
    max_auth_failures: int = 3
    tenant_network: Callable[[str], bool] | None = None
    """True for an address inside a tenant's ``networks`` (trusted like the allowed ones)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        return cls(
            networks=settings.allowed_networks,
            proxy_networks=settings.proxy_trusted_networks,
            auth_enabled=settings.auth_configured,
            senders=SenderPolicy(settings.allowed_sender_domains, settings.relay_from_rewrite),
            max_auth_failures=settings.relay_auth_max_failures,
        )

    def client(self, address: str) -> ClientState:
        """The client at ``address``: trusted when inside the allowed or a tenant's networks."""
        tenant = self.tenant_network is not None and self.tenant_network(address)
        return ClientState(address, tenant or in_networks(address, self.networks))

    def proxy_peer_trusted(self, address: str) -> bool:
        """True when the peer at ``address`` may send a PROXY header (a load balancer)."""
        return in_networks(address, self.proxy_networks)

    def connect_refusal(self, client: ClientState) -> Reply | None:
        """The reply that refuses ``client`` at connect (then disconnect), or None: greet it."""
        if client.trusted or self.auth_enabled or client.address in HEALTH_CHECK_PEERS:
            return None
        return CLIENT_NOT_ALLOWED

    def mail_refusal(
        self, client: ClientState, user: AuthUser | None, address: str
    ) -> Reply | None:
        """The reply refusing MAIL FROM ``address`` from ``client`` (AUTH ``user``), or None."""
        if not (client.trusted or user is not None):
            return AUTH_REQUIRED if self.auth_enabled else CLIENT_NOT_ALLOWED
        domains = user.sender_domains if user is not None else None
        if not self.senders.mail_from_allowed(address, domains):
            return SENDER_NOT_ALLOWED
        return None

    def auth_failure(self, failures: int) -> Verdict:
        """The answer to a session's ``failures``-th failed AUTH."""
        if failures < self.max_auth_failures:
            return Verdict(AUTH_INVALID)
        return Verdict(AUTH_TOO_MANY_FAILURES, disconnect=True)

    def ehlo_lines(self, lines: Sequence[str]) -> list[str]:
        """The EHLO answer ``lines``, without the AUTH extension when AUTH is not configured."""
        if self.auth_enabled:
            return list(lines)
        return [line for line in lines if not line[4:].upper().startswith("AUTH")]
