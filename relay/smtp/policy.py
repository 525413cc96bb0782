"""Who may send, and as whom: client networks, sender domains, and the From rewrite.

Pure rules, no I/O. The access rules (``relay.smtp.access``) ask them at connect and MAIL
time; the handler runs ``SenderPolicy.vet`` on the translated payloads before any
API call.

Sender rule (the same for the relay-wide list and for an AUTH user's own list):

- The *allowed domains* are ``RELAY_ALLOWED_SENDER_DOMAINS`` (plus the domain of
  ``RELAY_FROM_REWRITE``); when the user authenticated with a per-user list, that list
  applies too — the address must be on both. An empty relay-wide list means any domain
  (unless ``RELAY_FROM_REWRITE`` is set: then its domain is the only one allowed).
- MAIL FROM outside the allowed domains: ``550 5.7.1`` — unless ``RELAY_FROM_REWRITE``
  is set, because then the message will leave with the rewritten From anyway.
- From header outside the allowed domains: with ``RELAY_FROM_REWRITE`` it becomes that
  address (the original display name is kept), and Reply-To is set to the original
  sender unless the message already has one; without it, ``550 5.7.1``.
Domains match exactly, case-insensitively (``example.com`` does not admit
``mail.example.com``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import idna

from relay.config import Network
from relay.errors import SenderRefused

__all__ = ["SenderPolicy", "format_peer", "in_networks", "ip_of", "with_payloads"]

T = TypeVar("T")


def ip_of(address: Any) -> str:
    """The IP address (text) of a peer: an ``(host, port, ...)`` tuple or an address."""
    host = address[0] if isinstance(address, tuple) else address
    return str(host)


def format_peer(peer: Any) -> str:
    """A peer for the logs: ``host:port``, ``[v6]:port``, or the value as text."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


def in_networks(address: str, networks: Sequence[Network]) -> bool:
    """True when ``address`` lies in one of ``networks`` (IPv4-mapped IPv6 counts as IPv4)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def domain_of(address: str) -> str:
    """The comparable domain of ``local@domain`` ('' when there is none); see ``comparable``."""
    _, at, domain = address.rpartition("@")
    return comparable(domain) if at else ""


def comparable(domain: str) -> str:
    """``domain`` as compared with allow-lists: ASCII case folded only, after IDNA (2008).

    ``str.lower`` would fold look-alikes (U+212A KELVIN SIGN to ``k``), so only ASCII letters
    are folded; a non-ASCII name becomes its strict IDNA A-label (``xn--…``, no UTS 46
    mapping), and one IDNA refuses stays as written: a different domain from any ASCII one.
    """
    domain = domain.rstrip(".")
    if domain.isascii():
        return domain.lower()
    try:
        return idna.encode(domain, uts46=False).decode("ascii").lower()
    except idna.IDNAError:
        return domain


@dataclass(frozen=True, slots=True)
class SenderPolicy:
    """The relay-wide sender rules; see the module docstring for the exact behaviour."""

    domains: frozenset[str] = frozenset()
    rewrite_to: str | None = None

    def allowed(self, address: str, user_domains: frozenset[str] | None = None) -> bool:
        """True when ``address`` may be used as a sender by a user with ``user_domains``."""
        domain = domain_of(address)
        relay_wide = self._relay_wide()
        if relay_wide and domain not in relay_wide:
            return False
        return user_domains is None or domain in user_domains

    def mail_from_allowed(self, address: str, user_domains: frozenset[str] | None) -> bool:
        """The MAIL FROM rule: allowed, or going to be rewritten anyway."""
        return self.rewrite_to is not None or self.allowed(address, user_domains)

    def vet(
        self, payloads: Iterable[dict[str, Any]], user_domains: frozenset[str] | None = None
    ) -> list[dict[str, Any]]:
        """The payloads with an off-domain From rewritten, or SenderRefused (550 5.7.1)."""
        return [self._vet_one(payload, user_domains) for payload in payloads]

    def _vet_one(self, payload: dict[str, Any], user_domains: frozenset[str] | None) -> Any:
        sender = payload.get("from") or {}
        address = str(sender.get("email", ""))
        if self.allowed(address, user_domains) or _same(address, self.rewrite_to):
            return payload
        if self.rewrite_to is None:
            raise SenderRefused(f"{domain_of(address) or address or 'empty From'}")
        return rewrite_from(payload, self.rewrite_to)

    def _relay_wide(self) -> frozenset[str]:
        if self.rewrite_to is None:
            return self.domains
        return self.domains | {domain_of(self.rewrite_to)}


def _same(address: str, other: str | None) -> bool:
    return other is not None and address.lower() == other.lower()


def rewrite_from(payload: dict[str, Any], new_address: str) -> dict[str, Any]:
    """``payload`` sent as ``new_address``: display name kept, Reply-To set if absent."""
    original = dict(payload.get("from") or {})
    rewritten = dict(payload)
    rewritten["from"] = {**original, "email": new_address}
    if not _has_reply_to(payload) and original.get("email"):
        rewritten["reply_to"] = original
    return rewritten


def _has_reply_to(payload: dict[str, Any]) -> bool:
    headers = payload.get("headers") or {}
    return bool(payload.get("reply_to")) or any(k.lower() == "reply-to" for k in headers)


def with_payloads(translated: T, payloads: list[dict[str, Any]]) -> T:
    """``translated`` (a ``relay.translate.message.Translated`` dataclass) carrying ``payloads``."""
    return replace(translated, payloads=payloads)  # type: ignore[type-var]
