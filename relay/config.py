"""The one settings object. Nothing else in the relay reads the environment.

Values come from, in order of precedence: keyword arguments (the CLI's flags), the
process environment, then an env file (``--env-file``). Every variable is documented in
``config.example.env``.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from pydantic import Field, HttpUrl, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ConfigError", "Settings", "load_settings"]

MIB = 1024 * 1024
AHASEND_MAX_MESSAGE_SIZE = 20 * MIB
AHASEND_MAX_RECIPIENTS = 50


class ConfigError(Exception):
    """A setting is missing or invalid. ``str()`` is one line that names the variable."""


class Settings(BaseSettings):
    """Every knob of the relay. Field names are the environment variables, lowercased."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", frozen=True, env_file_encoding="utf-8"
    )

    # -- AhaSend ------------------------------------------------------------------
    ahasend_api_key: SecretStr | None = None
    ahasend_account_id: UUID | None = None
    ahasend_api_base_url: HttpUrl = HttpUrl("https://api.ahasend.com")
    ahasend_api_timeout: float = Field(default=30.0, gt=0, le=600)

    # -- SMTP listener --------------------------------------------------------------
    relay_host: str = "127.0.0.1"
    relay_port: int = Field(default=2525, ge=0, le=65535)
    relay_hostname: str = Field(default_factory=socket.getfqdn, min_length=1)
    relay_max_message_size: int = Field(default=AHASEND_MAX_MESSAGE_SIZE, gt=0)
    relay_max_recipients: int = Field(default=AHASEND_MAX_RECIPIENTS, ge=1, le=50)
    relay_max_line_length: int = Field(default=64 * 1024, ge=1001)
    relay_smtp_timeout: float = Field(default=300.0, gt=0)
    relay_shutdown_timeout: float = Field(default=30.0, ge=0)

    # -- delivery guarantees (retries, pacing, spool) ---------------------------------
    relay_retry_deadline: float = Field(default=60.0, ge=0, le=600)
    relay_api_rate: float = Field(default=90.0, gt=0)
    relay_api_burst: int = Field(default=180, ge=1)
    relay_api_concurrency: int = Field(default=32, ge=1, le=1000)
    relay_spool_dir: Path | None = None
    relay_spool_max_age: float = Field(default=5 * 86400.0, gt=0)
    relay_spool_retry_min: float = Field(default=30.0, gt=0)
    relay_spool_retry_max: float = Field(default=900.0, gt=0)
    relay_bounce_notices: bool = False
    relay_bounce_from: str | None = None

    # -- behaviour ------------------------------------------------------------------
    relay_dry_run: bool = False
    relay_log_format: Literal["json", "console"] | None = None
    relay_log_level: Literal["debug", "info", "warning", "error"] = "info"

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

    @model_validator(mode="after")
    def _require_bounce_from(self) -> Settings:
        if self.relay_bounce_notices and not (self.relay_bounce_from or "").strip():
            raise ValueError("RELAY_BOUNCE_FROM must be set when RELAY_BOUNCE_NOTICES=true")
        if self.relay_bounce_notices and self.relay_spool_dir is None:
            raise ValueError("RELAY_BOUNCE_NOTICES=true needs the spool (RELAY_SPOOL_DIR)")
        return self

    @property
    def binds_loopback_only(self) -> bool:
        """True when the SMTP listener is reachable from this machine only."""
        return _is_loopback(self.relay_host)

    @property
    def api_base_url(self) -> str:
        """The API base URL without a trailing slash."""
        return str(self.ahasend_api_base_url).rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment (and ``env_file``), or ConfigError naming the variable."""
    if env_file is not None and not env_file.is_file():
        raise ConfigError(f"--env-file: {env_file} is not a readable file")
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    """One line per problem: ``RELAY_PORT: Input should be a valid integer``."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        name = "_".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {message}" if name else message)
    return "; ".join(lines)
