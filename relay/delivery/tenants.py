"""Tenants: which legacy app a transaction belongs to, and that app's key, account and policy.

``load_tenants`` reads ``RELAY_TENANTS_FILE`` (TOML, one ``[[tenant]]`` table each) and
validates it whole: any problem is a ``ConfigError`` naming the tenant and the field
(exit 78 at start). Key files are read here, once per load (SIGHUP re-reads them).

Resolution (``Tenants.resolve``), pure: an AUTH user listed by a tenant belongs to it (a
user beats a network); otherwise the most specific ``networks`` entry containing the
client's address; otherwise None (the caller falls back to the global key, or refuses).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import tomllib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from relay.config import Network
from relay.errors import ConfigError

__all__ = ["Tenant", "Tenants", "load_tenants"]

_NAME = re.compile(r"[a-z0-9-]+")
_FIELDS = frozenset(
    {"name", "users", "networks", "account_id", "api_key_file", "api_key_env",
     "sender_domains", "recipients", "tags", "sandbox"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Tenant:
    """One app's route and policy. ``api_key`` is never shown (``repr`` hides it)."""

    name: str
    account_id: str
    api_key: str = field(repr=False)
    users: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()
    sender_domains: frozenset[str] | None = None
    recipients: tuple[str, ...] | None = None
    tags: tuple[str, ...] = ()
    sandbox: bool = False

    def recipient_allowed(self, address: str) -> bool:
        """True when the tenant has no recipient list or ``address`` matches a pattern."""
        if self.recipients is None:
            return True
        lowered = address.lower()
        return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in self.recipients)


@dataclass(frozen=True, slots=True)
class Tenants:
    """Every tenant of one load, and the rules that pick one."""

    tenants: tuple[Tenant, ...] = ()

    def named(self, name: str) -> Tenant | None:
        return next((t for t in self.tenants if t.name == name), None)

    def resolve(self, user: str | None, client: str) -> Tenant | None:
        """The tenant of an AUTH ``user`` (if listed), else of ``client``'s network, else None."""
        if user is not None:
            for tenant in self.tenants:
                if user in tenant.users:
                    return tenant
        return self.by_network(client)

    def by_network(self, client: str) -> Tenant | None:
        """The tenant whose network containing ``client`` is the most specific; None if none."""
        ip = _ip(client)
        if ip is None:
            return None
        matches = [
            (network.prefixlen, index)
            for index, tenant in enumerate(self.tenants)
            for network in tenant.networks
            if ip.version == network.version and ip in network
        ]
        return self.tenants[max(matches, key=lambda m: (m[0], -m[1]))[1]] if matches else None


def load_tenants(
    path: Path,
    known_users: Collection[str] | None,
    env: Callable[[str], str | None],
) -> Tenants:
    """The tenants ``path`` describes; ConfigError naming tenant and field when it is unusable.

    ``known_users`` are the AUTH users (None: no AUTH configured, so any ``users`` entry is
    unknown); ``env`` looks up ``api_key_env`` names.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"RELAY_TENANTS_FILE: cannot load {path}: {exc}") from None
    tables = document.pop("tenant", [])
    if document or not isinstance(tables, list):
        raise ConfigError(f"RELAY_TENANTS_FILE {path}: only [[tenant]] tables are allowed")
    tenants = tuple(_tenant(i, t, known_users or (), env) for i, t in enumerate(tables, 1))
    _check_unique(tenants)
    return Tenants(tenants)


def _tenant(
    index: int, table: Any, known_users: Collection[str], env: Callable[[str], str | None]
) -> Tenant:
    where = f"RELAY_TENANTS_FILE tenant #{index}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: not a table")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: name: expected [a-z0-9-]+, got {name!r}")
    where = f"RELAY_TENANTS_FILE tenant {name!r}"
    if unknown := sorted(set(table) - _FIELDS):
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}")
    try:
        return _build(name, table, known_users, env)
    except _FieldError as exc:
        raise ConfigError(f"{where}: {exc.field}: {exc.problem}") from None


class _FieldError(Exception):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(name, problem)
        self.field, self.problem = name, problem


def _build(
    name: str, table: dict[str, Any], known_users: Collection[str], env: Callable[[str], str | None]
) -> Tenant:
    users = frozenset(_strings(table, "users"))
    if unknown := sorted(users - set(known_users)):
        raise _FieldError("users", f"unknown AUTH user {unknown[0]!r} (not in RELAY_AUTH_FILE)")
    domains = table.get("sender_domains")
    return Tenant(
        name=name,
        account_id=_account_id(table.get("account_id")),
        api_key=_api_key(table, env),
        users=users,
        networks=tuple(_network(n) for n in _strings(table, "networks")),
        sender_domains=None if domains is None else frozenset(_domains(table)),
        recipients=None if "recipients" not in table else _patterns(table),
        tags=tuple(_strings(table, "tags")),
        sandbox=_bool(table, "sandbox"),
    )


def _strings(table: dict[str, Any], key: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _FieldError(key, "expected a list of non-empty strings")
    return [v.strip() for v in value]


def _bool(table: dict[str, Any], key: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise _FieldError(key, f"expected true or false, got {value!r}")
    return value


def _account_id(value: Any) -> str:
    try:
        return str(UUID(str(value))) if isinstance(value, str) else _missing_account()
    except ValueError:
        raise _FieldError("account_id", f"not a UUID: {value!r}") from None


def _missing_account() -> str:
    raise _FieldError("account_id", "required (the AhaSend account or sub-account id)")


def _api_key(table: dict[str, Any], env: Callable[[str], str | None]) -> str:
    file, variable = table.get("api_key_file"), table.get("api_key_env")
    if (file is None) == (variable is None):
        raise _FieldError("api_key_file", "give exactly one of api_key_file or api_key_env")
    if file is not None:
        return _key_from_file(file)
    value = env(variable) if isinstance(variable, str) else None
    if not value or not value.strip():
        raise _FieldError("api_key_env", f"environment variable {variable!r} is unset or empty")
    return value.strip()


def _key_from_file(file: Any) -> str:
    if not isinstance(file, str):
        raise _FieldError("api_key_file", "expected a path")
    try:
        key = Path(file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise _FieldError("api_key_file", f"cannot read {file}: {exc.__class__.__name__}") from None
    if not key:
        raise _FieldError("api_key_file", f"{file} is empty")
    return key


def _network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _FieldError("networks", f"not a network: {text!r}") from None


def _domains(table: dict[str, Any]) -> Iterable[str]:
    for domain in _strings(table, "sender_domains"):
        if "@" in domain or " " in domain:
            raise _FieldError("sender_domains", f"not a domain: {domain!r}")
        yield domain.lower().rstrip(".")


def _patterns(table: dict[str, Any]) -> tuple[str, ...]:
    patterns = _strings(table, "recipients")
    for pattern in patterns:
        if "@" not in pattern:
            raise _FieldError("recipients", f"expected local@domain (* allowed): {pattern!r}")
    return tuple(p.lower() for p in patterns)


def _check_unique(tenants: tuple[Tenant, ...]) -> None:
    names: set[str] = set()
    owners: dict[str, str] = {}
    for tenant in tenants:
        if tenant.name in names:
            raise ConfigError(f"RELAY_TENANTS_FILE tenant {tenant.name!r}: name: used twice")
        names.add(tenant.name)
        for user in sorted(tenant.users):
            if user in owners:
                raise ConfigError(
                    f"RELAY_TENANTS_FILE tenant {tenant.name!r}: users: {user!r} is already "
                    f"in tenant {owners[user]!r}"
                )
            owners[user] = tenant.name


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def allowed_domains(
    user_domains: frozenset[str] | None, tenant: Tenant | None
) -> frozenset[str] | None:
    """The sender domains an AUTH user's list and its tenant's list both allow (None: any)."""
    tenant_domains = tenant.sender_domains if tenant is not None else None
    if user_domains is None or tenant_domains is None:
        return user_domains if tenant_domains is None else tenant_domains
    return user_domains & tenant_domains


def apply_tenant(payload: dict[str, Any], tenant: Tenant | None) -> dict[str, Any]:
    """``payload`` with the tenant's tags added (the union, message's first) and, when the
    tenant forces it, ``sandbox`` true whatever the message's ``AhaSend-Sandbox`` said."""
    if tenant is None:
        return payload
    applied = dict(payload)
    tags = list(payload.get("tags") or [])
    tags += [tag for tag in tenant.tags if tag not in tags]
    if tags:
        applied["tags"] = tags
    if tenant.sandbox:
        applied["sandbox"] = True
    return applied
