"""The one settings object. Nothing else in the relay reads the environment.

``load_settings`` gathers the values, in order of precedence: keyword arguments (the CLI's
flags), the process environment, then an env file (``--env-file``, read as systemd's
``EnvironmentFile=`` reads it: ``relay.envfile``). Secrets may instead come from files:
``AHASEND_API_KEY_FILE`` / ``RELAY_AUTH_PASSWORD_FILE``, or systemd credentials named
``ahasend_api_key`` / ``relay_auth_password`` in ``$CREDENTIALS_DIRECTORY``
(``LoadCredential=``); one source per secret, or ConfigError.

Every ``RELAY_*`` and ``AHASEND_*`` name must be a setting: a typo stops the relay with
``unknown setting RELAY_PROT (did you mean RELAY_PORT?)`` instead of being ignored.
Every variable is documented in ``config.example.env``. ``Settings(...)`` itself reads
nothing: it validates the values it is given.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from relay.delivery.proxy import ProxyURL, choose_proxy
from relay.delivery.transport import trust_context
from relay.envfile import read_env_file
from relay.errors import ConfigError

__all__ = ["ConfigError", "Settings", "known_names", "load_settings", "mask_url_password"]

MIB = 1024 * 1024
AHASEND_MAX_MESSAGE_SIZE = 20 * MIB
AHASEND_MAX_RECIPIENTS = 50


INFLIGHT_SHARE_OF_MEMORY = 8
"""RELAY_MAX_INFLIGHT_BYTES defaults to the memory the process may use / this (message bytes
on the wire; the process needs up to ~4x them, README "Memory")."""


CGROUP_MEMORY_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)
"""Where a container's memory limit is read (the smaller of it and physical memory counts)."""


def physical_memory(sysconf: Any = None) -> int | None:
    """Bytes of physical memory (``os.sysconf``), None where the system does not say."""
    sysconf = sysconf or os.sysconf
    try:
        pages, page_size = sysconf("SC_PHYS_PAGES"), sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def cgroup_memory_limit(paths: tuple[Path, ...] = CGROUP_MEMORY_LIMITS) -> int | None:
    """This process's cgroup memory limit in bytes (a container's), None without one."""
    for path in paths:
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeError):
            continue
        if text.isdigit():
            return int(text)
    return None


def default_inflight_bytes(
    sysconf: Any = None, limits: tuple[Path, ...] = CGROUP_MEMORY_LIMITS
) -> int:
    """An eighth of the memory the process may use (physical memory, or a smaller cgroup
    limit), at least two messages of AhaSend's largest size; 0 (no budget) where the
    memory size is unknown."""
    sizes = [m for m in (physical_memory(sysconf), cgroup_memory_limit(limits)) if m]
    if not sizes:
        return 0
    return max(min(sizes) // INFLIGHT_SHARE_OF_MEMORY, 2 * AHASEND_MAX_MESSAGE_SIZE)


class Settings(BaseModel):
    """Every knob of the relay. Field names are the environment variables, lowercased."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- AhaSend ------------------------------------------------------------------
    ahasend_api_key: SecretStr | None = None
    ahasend_account_id: UUID | None = None
    ahasend_api_base_url: HttpUrl = HttpUrl("https://api.ahasend.com")
    ahasend_api_timeout: float = Field(default=30.0, gt=0, le=600)
    ahasend_api_transport: Literal["auto", "httpx", "aiohttp"] = "auto"
    ahasend_api_proxy: SecretStr | None = None
    # The environment's egress proxies, as curl and httpx read them (``gather``: each
    # lowercase name wins over its uppercase one); AHASEND_API_PROXY overrides them.
    https_proxy: SecretStr | None = None
    http_proxy: SecretStr | None = None
    all_proxy: SecretStr | None = None
    no_proxy: str | None = None
    # The CAs that verify the API's certificate and an https:// proxy's, under OpenSSL's
    # names (``gather``); unset, certifi's bundle (``relay.delivery.transport.trust_context``).
    ssl_cert_file: Path | None = None
    ssl_cert_dir: Path | None = None

    # -- SMTP listener --------------------------------------------------------------
    relay_host: str = "127.0.0.1"
    relay_port: int = Field(default=2525, ge=0, le=65535)
    relay_hostname: str = Field(default_factory=socket.getfqdn, min_length=1)
    relay_max_message_size: int = Field(default=AHASEND_MAX_MESSAGE_SIZE, gt=0)
    relay_max_recipients: int = Field(default=AHASEND_MAX_RECIPIENTS, ge=1, le=50)
    relay_max_line_length: int = Field(default=64 * 1024, ge=1001)
    # A lambda: pydantic would hand a one-parameter factory the validated data.
    relay_max_inflight_bytes: int = Field(default_factory=lambda: default_inflight_bytes(), ge=0)  # noqa: PLW0108
    relay_smtp_timeout: float = Field(default=300.0, gt=0)
    relay_stress_smtp_timeout: float = Field(default=10.0, gt=0)
    relay_shutdown_timeout: float = Field(default=30.0, ge=0)

    # -- delivery guarantees (retries, pacing, spool) ---------------------------------
    relay_retry_deadline: float = Field(default=60.0, ge=0, le=600)
    relay_api_rate: float = Field(default=90.0, gt=0)
    relay_api_burst: int = Field(default=180, ge=1)
    relay_replicas: int = Field(default=1, ge=1, le=1000)
    relay_api_concurrency: int = Field(default=32, ge=1, le=1000)
    relay_spool_dir: Path | None = None
    relay_spool_url: SecretStr | None = None
    relay_spool_lease: float = Field(default=60.0, gt=0)
    relay_spool_max_age: float = Field(default=5 * 86400.0, gt=0)
    relay_spool_retry_min: float = Field(default=30.0, gt=0)
    relay_spool_retry_max: float = Field(default=900.0, gt=0)
    relay_bounce_notices: bool = False
    relay_bounce_from: str | None = None

    # -- behaviour ------------------------------------------------------------------
    relay_dry_run: bool = False
    relay_log_format: Literal["json", "console"] | None = None
    relay_log_level: Literal["debug", "info", "warning", "error"] = "info"
    relay_log_recipients: Literal["plain", "hash", "none"] = "plain"
    relay_event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"

    # -- security (relay.smtp: guard, auth, tls, policy, limits) ----
    relay_auth_file: Path | None = None
    relay_tenants_file: Path | None = None
    relay_auth_user: str | None = None
    relay_auth_password: SecretStr | None = None
    relay_auth_allow_plaintext: bool = False
    relay_auth_max_failures: int = Field(default=3, ge=1)
    relay_auth_failure_delay: float = Field(default=1.0, ge=0, le=60)
    relay_tls_cert: Path | None = None
    relay_tls_key: Path | None = None
    relay_smtps_port: int | None = Field(default=None, ge=0, le=65535)
    relay_require_tls: bool = False
    relay_allowed_networks: str = ""
    relay_allowed_sender_domains: str = ""
    relay_from_rewrite: str | None = None
    relay_proxy_protocol: bool = False
    relay_proxy_trusted_networks: str = ""
    relay_max_connections: int = Field(default=100, ge=1)
    relay_peer_connection_rate: int = Field(default=60, ge=0)
    relay_junk_command_limit: int = Field(default=100, ge=1)
    relay_max_connections_per_client: int = Field(default=20, ge=0)
    relay_max_connections_per_trusted_client: int = Field(default=50, ge=0)
    relay_reserved_connections: int | None = Field(default=None, ge=0)

    @property
    def reserved_connections(self) -> int:
        """Slots only RELAY_ALLOWED_NETWORKS may take: the setting, else a tenth (at least 1)."""
        if self.relay_reserved_connections is not None:
            return min(self.relay_reserved_connections, self.relay_max_connections - 1)
        return 0 if self.relay_max_connections < 2 else max(1, self.relay_max_connections // 10)

    @field_validator("relay_spool_dir", mode="before")
    @classmethod
    def _empty_spool_dir_is_off(cls, value: object) -> object:
        """``RELAY_SPOOL_DIR=`` (empty) turns off a spool a unit or image sets by default."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("relay_allowed_networks", "relay_proxy_trusted_networks")
    @classmethod
    def _parse_networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("relay_allowed_sender_domains")
    @classmethod
    def _parse_domains(cls, value: str) -> str:
        parse_domains(value)
        return value

    @field_validator("relay_from_rewrite")
    @classmethod
    def _parse_rewrite(cls, value: str | None) -> str | None:
        if value is not None and not _ADDRESS.fullmatch(value):
            raise ValueError(f"{value!r} is not a plain address like relay@example.com")
        return value

    @model_validator(mode="after")
    def _require_consistent_security(self) -> Settings:
        for problem in _security_problems(self):
            raise ValueError(problem)
        return self

    # -- operations -----------------------------------------------------------------
    relay_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    relay_metrics_host: str = "127.0.0.1"
    # Set by systemd for Type=notify services (sd_notify protocol), never by operators.
    notify_socket: str | None = None
    watchdog_usec: int | None = Field(default=None, ge=0)
    watchdog_pid: int | None = None

    @model_validator(mode="after")
    def _require_credentials(self) -> Settings:
        if self.relay_dry_run:
            return self
        if self.relay_tenants_file is not None:
            return self._require_global_key_whole()
        missing = [
            name
            for name, value in (
                ("AHASEND_API_KEY", self.ahasend_api_key),
                ("AHASEND_ACCOUNT_ID", self.ahasend_account_id),
            )
            if not value or (isinstance(value, SecretStr) and not value.get_secret_value())
        ]
        if missing:
            raise ValueError(
                f"{' and '.join(missing)} must be set (or RELAY_DRY_RUN=true to run without)"
            )
        return self

    def _require_global_key_whole(self) -> Settings:
        """With tenants the global key is optional; a half-given one is still an error."""
        if (self.ahasend_api_key is None) != (self.ahasend_account_id is None):
            raise ValueError("AHASEND_API_KEY and AHASEND_ACCOUNT_ID go together")
        return self

    @model_validator(mode="after")
    def _require_inflight_room_for_a_message(self) -> Settings:
        if 0 < self.relay_max_inflight_bytes < self.relay_max_message_size:
            raise ValueError(
                f"RELAY_MAX_INFLIGHT_BYTES ({self.relay_max_inflight_bytes}) must be 0 (no "
                f"limit) or at least RELAY_MAX_MESSAGE_SIZE ({self.relay_max_message_size}): "
                "a message of the largest size would never be accepted"
            )
        return self

    @model_validator(mode="after")
    def _require_retries_within_smtp_timeout(self) -> Settings:
        if 0 < self.relay_smtp_timeout <= self.relay_retry_deadline:
            raise ValueError(
                f"RELAY_RETRY_DEADLINE ({self.relay_retry_deadline:g} s) must be below "
                f"RELAY_SMTP_TIMEOUT ({self.relay_smtp_timeout:g} s): the client would be "
                "cut off while the relay still retries"
            )
        return self

    @model_validator(mode="after")
    def _require_bounce_from(self) -> Settings:
        if self.relay_bounce_notices and not (self.relay_bounce_from or "").strip():
            raise ValueError("RELAY_BOUNCE_FROM must be set when RELAY_BOUNCE_NOTICES=true")
        if self.relay_bounce_notices and not self.spool_configured:
            raise ValueError(
                "RELAY_BOUNCE_NOTICES=true needs the spool (RELAY_SPOOL_DIR or RELAY_SPOOL_URL)"
            )
        return self

    @model_validator(mode="after")
    def _require_one_spool(self) -> Settings:
        if self.relay_spool_dir is not None and self.relay_spool_url is not None:
            raise ValueError(
                "RELAY_SPOOL_DIR and RELAY_SPOOL_URL are both set: choose one spool "
                "(a local SQLite directory, or the shared PostgreSQL database)"
            )
        return self

    @field_validator("relay_spool_url")
    @classmethod
    def _parse_spool_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(SPOOL_URL_SCHEMES):
            raise ValueError("must be a libpq URL: postgresql://user:password@host:port/dbname")
        return value

    @model_validator(mode="after")
    def _require_lease_over_two_timeouts(self) -> Settings:
        if self.relay_spool_lease < 2 * self.ahasend_api_timeout:
            raise ValueError(
                f"RELAY_SPOOL_LEASE ({self.relay_spool_lease:g} s) must be at least twice "
                f"AHASEND_API_TIMEOUT ({self.ahasend_api_timeout:g} s): a claim must outlast "
                "a delivery attempt, or two replicas could send the same message"
            )
        return self

    @property
    def spool_configured(self) -> bool:
        """True when a spool is configured (the SQLite directory or the shared database)."""
        return self.relay_spool_dir is not None or self.relay_spool_url is not None

    @property
    def spool_url(self) -> str | None:
        """RELAY_SPOOL_URL in clear (for the driver only; never log it)."""
        return None if self.relay_spool_url is None else self.relay_spool_url.get_secret_value()

    @property
    def binds_loopback_only(self) -> bool:
        """True when the SMTP listener is reachable from this machine only."""
        return _is_loopback(self.relay_host)

    @property
    def stress_smtp_timeout(self) -> float:
        """The idle timeout under stress: RELAY_STRESS_SMTP_TIMEOUT, at most RELAY_SMTP_TIMEOUT."""
        return min(self.relay_stress_smtp_timeout, self.relay_smtp_timeout)

    @property
    def auth_configured(self) -> bool:
        """True when SMTP AUTH has users (a credentials file or the single user)."""
        return self.relay_auth_file is not None or self.relay_auth_user is not None

    @property
    def tls_configured(self) -> bool:
        """True when a certificate is configured (STARTTLS and the SMTPS listener)."""
        return self.relay_tls_cert is not None

    @property
    def allowed_networks(self) -> tuple[Network, ...]:
        """Client networks that may send without AUTH.

        Unset: loopback only when AUTH is off, nobody when AUTH is on (safe by default).
        """
        if self.relay_allowed_networks.strip():
            return parse_networks(self.relay_allowed_networks)
        return () if self.auth_configured else LOOPBACK_NETWORKS

    @property
    def proxy_trusted_networks(self) -> tuple[Network, ...]:
        """Peers whose PROXY header is believed (the load balancers)."""
        return parse_networks(self.relay_proxy_trusted_networks)

    @property
    def allowed_sender_domains(self) -> frozenset[str]:
        """Domains MAIL FROM and From may use; empty means any (see ``relay.smtp.policy``)."""
        return frozenset(parse_domains(self.relay_allowed_sender_domains))

    @property
    def api_base_url(self) -> str:
        """The API base URL without a trailing slash."""
        return str(self.ahasend_api_base_url).rstrip("/")

    @property
    def api_proxy(self) -> ProxyURL | None:
        """The proxy requests to the API go through, None for direct (``relay.delivery.proxy``)."""
        explicit = self.ahasend_api_proxy
        variables = {"HTTPS_PROXY": self.https_proxy, "HTTP_PROXY": self.http_proxy,
                     "ALL_PROXY": self.all_proxy}  # fmt: skip
        environment = {n: v.get_secret_value() for n, v in variables.items() if v is not None}
        if self.no_proxy is not None:
            environment["NO_PROXY"] = self.no_proxy
        return choose_proxy(
            self.api_base_url,
            explicit.get_secret_value() if explicit is not None else None,
            environment,
        )

    @model_validator(mode="after")
    def _require_usable_proxy(self) -> Settings:
        self.api_proxy  # noqa: B018 -- raises ValueError naming the variable
        return self

    @property
    def api_trust(self) -> ssl.SSLContext:
        """The one TLS context of the API's requests: it verifies the API's certificate and
        an https:// proxy's (SSL_CERT_FILE and/or SSL_CERT_DIR, else certifi's bundle)."""
        return trust_context(self.ssl_cert_file, self.ssl_cert_dir)

    @model_validator(mode="after")
    def _require_usable_trust(self) -> Settings:
        if self.ssl_cert_file is not None or self.ssl_cert_dir is not None:
            self.api_trust  # noqa: B018 -- raises ValueError naming the variable
        return self


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
_ADDRESS = re.compile(r"[^@\s<>]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+")
_DOMAIN = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9-]{1,63}")
OPEN_RELAY = "this would be an open relay"
SPOOL_URL_SCHEMES = ("postgresql://", "postgres://")
MASK = "***"
_URL_PASSWORD = re.compile(r"^(?P<head>[a-z]+://[^:@/?#]*):(?P<password>[^@/?#]*)@", re.I)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<password>[^&#]*)", re.I)


def mask_url_password(url: str) -> str:
    """``url`` with its password (``user:PASSWORD@`` or ``?password=``) shown as ``***``."""
    url = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", url, count=1)
    return _QUERY_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", url)


def url_passwords(url: str) -> list[str]:
    """The password(s) ``url`` carries, as written and percent-decoded (for the log scrubber)."""
    found = [m["password"] for m in (_URL_PASSWORD.match(url), *_QUERY_PASSWORD.finditer(url)) if m]
    return [p for raw in found for p in {raw, unquote(raw)} if p]


def _items(value: str) -> list[str]:
    return [item for item in re.split(r"[\s,]+", value) if item]


def parse_networks(value: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 2001:db8::/32 192.0.2.7"`` as networks; ValueError names a bad entry.

    A whole-Internet network (``0.0.0.0/0``, ``::/0``) is refused: it would be an open relay.
    """
    networks = []
    for item in _items(value):
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IPv4/IPv6 address or CIDR network") from None
        if network.prefixlen == 0:
            raise ValueError(f"{item} admits every address: {OPEN_RELAY}")
        networks.append(network)
    return tuple(networks)


def parse_domains(value: str) -> list[str]:
    """``"example.com, example.org"`` as lowercase domains; ValueError names a bad entry."""
    domains = []
    for item in _items(value):
        if not _DOMAIN.fullmatch(item):
            raise ValueError(f"{item!r} is not a domain name")
        domains.append(item.lower().rstrip("."))
    return domains


def _security_problems(s: Settings) -> list[str]:
    """Combinations of security settings that cannot work or would make an open relay."""
    problems = []
    if s.relay_auth_user is not None and not _secret(s.relay_auth_password):
        problems.append("RELAY_AUTH_USER needs RELAY_AUTH_PASSWORD")
    if s.relay_tls_key is not None and s.relay_tls_cert is None:
        problems.append("RELAY_TLS_KEY needs RELAY_TLS_CERT")
    for name, wanted in (("RELAY_SMTPS_PORT", s.relay_smtps_port is not None),
                         ("RELAY_REQUIRE_TLS", s.relay_require_tls)):  # fmt: skip
        if wanted and not s.tls_configured:
            problems.append(f"{name} needs RELAY_TLS_CERT (and RELAY_TLS_KEY)")
    if s.relay_proxy_protocol and not s.relay_proxy_trusted_networks.strip():
        problems.append(
            "RELAY_PROXY_PROTOCOL needs RELAY_PROXY_TRUSTED_NETWORKS (the load balancer's "
            "addresses): anyone else could claim any client address"
        )
    if s.auth_configured and not (s.tls_configured or s.relay_auth_allow_plaintext):
        problems.append(
            "SMTP AUTH needs TLS: set RELAY_TLS_CERT/RELAY_TLS_KEY, or "
            "RELAY_AUTH_ALLOW_PLAINTEXT=true if passwords may cross the network in clear"
        )
    if not (s.binds_loopback_only or s.auth_configured or s.relay_allowed_networks.strip()):
        problems.append(
            f"RELAY_HOST={s.relay_host} is reachable from other hosts but neither SMTP AUTH "
            f"(RELAY_AUTH_FILE or RELAY_AUTH_USER) nor RELAY_ALLOWED_NETWORKS is set: {OPEN_RELAY}"
        )
    return problems


def _secret(value: SecretStr | None) -> bool:
    return value is not None and bool(value.get_secret_value())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


PREFIXES = ("RELAY_", "AHASEND_")
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")
"""The environment's egress proxies (and their lowercase spellings), read as curl reads them."""
TRUST_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")
"""The CAs the API's requests trust, under OpenSSL's names (uppercase only, as it reads them)."""
SECRET_FILES = {"AHASEND_API_KEY": "AHASEND_API_KEY_FILE",
                "RELAY_AUTH_PASSWORD": "RELAY_AUTH_PASSWORD_FILE",
                "RELAY_SPOOL_URL": "RELAY_SPOOL_URL_FILE"}  # fmt: skip
"""Secret settings that may come from a file (``*_FILE``) or a systemd credential."""


def known_names() -> frozenset[str]:
    """Every ``RELAY_*``/``AHASEND_*`` variable the relay reads."""
    fields = {name.upper() for name in Settings.model_fields}
    return frozenset(
        fields - set(SYSTEMD_VARIABLES) - set(PROXY_VARIABLES) - set(TRUST_VARIABLES)
        | set(SECRET_FILES.values())
    )


def load_settings(
    env_file: Path | None = None, environ: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Settings from ``environ`` (default: the process environment), ``env_file`` and
    ``overrides``, or ConfigError naming the variable (and the file's line)."""
    environ = os.environ if environ is None else environ
    if env_file is not None and not env_file.is_file():
        raise ConfigError(f"--env-file: {env_file} is not a readable file")
    values = gather(environ, read_env_file(env_file) if env_file is not None else {}, env_file)
    try:
        return Settings(**(values | overrides))
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def gather(
    environ: Mapping[str, str], from_file: Mapping[str, tuple[str, int]], path: Path | None
) -> dict[str, Any]:
    """Field values from the environment over the file's, secrets from their files."""
    known = known_names()
    problems = [
        f"{where}unknown setting {name}{_suggestion(name, known)}"
        for name, where in (
            *((name, f"{path}:{line}: ") for name, (_, line) in from_file.items()),
            *((name, "") for name in environ),
        )
        if name.upper().startswith(PREFIXES) and name.upper() not in known
    ]
    if problems:
        raise ConfigError("; ".join(problems))
    merged = {name.upper(): value for name, (value, _) in from_file.items()}
    merged |= {name.upper(): value for name, value in environ.items()
               if name.upper().startswith(PREFIXES)}  # fmt: skip
    merged |= {name: environ[name] for name in SYSTEMD_VARIABLES if name in environ}
    merged |= _proxy_variables(environ)
    merged |= {name: environ[name] for name in TRUST_VARIABLES if environ.get(name, "").strip()}
    merged = {n: v for n, v in merged.items() if n not in TRUST_VARIABLES or v.strip()}
    for name, file_variable in SECRET_FILES.items():
        secret = _secret_value(name, merged, file_variable, environ.get("CREDENTIALS_DIRECTORY"))
        merged.pop(file_variable, None)
        if secret is not None:
            merged[name] = secret
    return {name.lower(): value for name, value in merged.items()}


def _proxy_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """``HTTPS_PROXY``... from ``environ``: the lowercase spelling first; empty is unset."""
    found = {}
    for name in PROXY_VARIABLES:
        value = environ.get(name.lower()) or environ.get(name)
        if value and value.strip():
            found[name] = value
    return found


def _suggestion(name: str, known: frozenset[str]) -> str:
    close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _secret_value(
    name: str, merged: Mapping[str, str], file_variable: str, credentials: str | None
) -> str | None:
    """The secret ``name`` from its one source: the variable, ``*_FILE`` or a credential."""
    sources: list[tuple[str, Path | None]] = []
    if name in merged:
        sources.append((name, None))
    if file_variable in merged:
        sources.append((file_variable, Path(merged[file_variable])))
    credential = Path(credentials) / name.lower() if credentials else None
    if credential is not None and credential.exists():
        sources.append((f"systemd credential {name.lower()}", credential))
    if len(sources) > 1:
        raise ConfigError(f"{name} is given twice ({' and '.join(s for s, _ in sources)}): "
                          "keep one")  # fmt: skip
    if not sources:
        return None
    where, secret_path = sources[0]
    return merged[name] if secret_path is None else _read_secret(where, secret_path)


def _read_secret(where: str, path: Path) -> str:
    """The file's text without its final line break; ConfigError when unusable or empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{where}: cannot read {path}: {why}") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret or "\n" in secret:
        raise ConfigError(f"{where}: {path} must hold the secret alone on one line")
    return secret


def _describe(exc: ValidationError) -> str:
    """One line per problem: ``RELAY_PORT: Input should be a valid integer``."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        name = "_".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {message}" if name else message)
    return "; ".join(lines)


def environment_variable(name: str) -> str | None:
    """One environment variable by name (a tenant's ``api_key_env``); None when unset."""
    return os.environ.get(name)
