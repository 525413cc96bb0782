"""The command line: ``ahasend-relay [serve] [options]`` and its subcommands.

``main`` is the only place in the relay that decides an exit status; it never raises
for expected failures (bad config: one line on stderr, exit 78, EX_CONFIG).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import re
import smtplib
import sys
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from relay import __version__
from relay.assembly import build_sender, preflight
from relay.cli.queue import add_queue_commands, add_spool_options, run_queue_command
from relay.cli.tenants_check import check_tenants_online
from relay.config import (
    SPOOL_URL_SCHEMES,
    Settings,
    load_settings,
    mask_url_password,
    url_passwords,
)
from relay.delivery.api import AhaSendClient
from relay.delivery.proxy import describe_proxy, mask_proxy_text
from relay.delivery.spool import PostgresSpool, SpoolBackend, SqliteSpool
from relay.errors import (
    ConfigError,
    RelayError,
    RelayMisconfigured,
    SpoolUnavailable,
    UpstreamForbidden,
)
from relay.ops.admin import AdminListenError
from relay.ops.eventloop import run as run_on_loop
from relay.ops.health import connect_host, probe
from relay.ops.log import configure, get_logger, log_uncaught_exceptions
from relay.ops.memory import pin_mmap_threshold
from relay.server import run
from relay.smtp.auth import hash_password

__all__ = ["EX_CONFIG", "EX_OK", "main"]

EX_OK = 0
EX_FAILED = 1
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_OSERR = 71
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78

Command = Callable[[argparse.Namespace], int]

SERVE_EPILOG = """\
settings, highest precedence first:
  1. these flags (--dry-run, --host, --port)
  2. the environment: AHASEND_* and RELAY_* variables
  3. --env-file PATH, read as systemd's EnvironmentFile= reads it
  secrets may instead come from AHASEND_API_KEY_FILE / RELAY_AUTH_PASSWORD_FILE /
  RELAY_SPOOL_URL_FILE or from systemd credentials ahasend_api_key /
  relay_auth_password / relay_spool_url (LoadCredential=)
  every variable is documented in config.example.env; an unknown AHASEND_* or
  RELAY_* name is an error. `ahasend-relay check-config` validates them.

exit status:
  0   stopped by SIGTERM/SIGINT after a graceful shutdown
  71  cannot listen on the SMTP or the metrics address
  73  the spool (RELAY_SPOOL_DIR) cannot be opened (an unreachable RELAY_SPOOL_URL
      database is waited for instead)
  78  configuration error (one line on stderr names the setting); restarting
      cannot help
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(_with_default_command(list(sys.argv[1:] if argv is None else argv)))
    command: Command = args.command
    try:
        return command(args)
    except ConfigError as exc:
        print(f"ahasend-relay: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ahasend-relay",
        description="SMTP relay that forwards mail to AhaSend's HTTP API v2.",
    )
    parser.add_argument("--version", action="version", version=f"ahasend-relay {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the relay (the default command)",
        description="Accept SMTP and forward each message to AhaSend's HTTP API v2.",
        epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _add_settings_options(serve)
    serve.add_argument("--dry-run", action="store_true", help="log payloads, never call AhaSend")
    serve.add_argument("--host", help="address to listen on (RELAY_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (RELAY_PORT)")
    serve.set_defaults(command=cmd_serve)
    hasher = commands.add_parser(
        "hash-password",
        help="read a password on stdin and print its hash for RELAY_AUTH_FILE",
    )
    hasher.add_argument("--scheme", choices=("argon2", "bcrypt"), default="argon2",
                        help="hash scheme (default: argon2id)")  # fmt: skip
    hasher.set_defaults(command=cmd_hash_password)
    queue = commands.add_parser("queue", help="list, show, retry or delete spooled messages")
    _add_settings_options(queue)
    add_spool_options(queue)
    add_queue_commands(queue)
    queue.set_defaults(command=cmd_queue)
    _add_ops_commands(commands)
    return parser


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", type=Path, help="read settings from this .env file as well")


def _with_default_command(argv: list[str]) -> list[str]:
    """``serve`` when no subcommand is named (``ahasend-relay --dry-run`` serves)."""
    if any(arg in ("-h", "--help", "--version") for arg in argv[:1]):
        return argv
    if argv and not argv[0].startswith("-"):
        return argv
    return ["serve", *argv]


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment, the env file and the flags in ``args``."""
    overrides: dict[str, Any] = {}
    if getattr(args, "dry_run", False):
        overrides["relay_dry_run"] = True
    for flag, name in (("host", "relay_host"), ("port", "relay_port")):
        if getattr(args, flag, None) is not None:
            overrides[name] = getattr(args, flag)
    return load_settings(getattr(args, "env_file", None), **overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve SMTP until SIGTERM/SIGINT."""
    settings = settings_from(args)
    key = settings.ahasend_api_key.get_secret_value() if settings.ahasend_api_key else ""
    password = settings.relay_auth_password
    proxy = settings.api_proxy
    secrets = [
        key,
        password.get_secret_value() if password else "",
        proxy.password if proxy else "",
    ]
    secrets += url_passwords(settings.spool_url or "")
    configure(fmt=settings.relay_log_format, level=settings.relay_log_level, secrets=secrets,
              recipients=settings.relay_log_recipients, cache=True)  # fmt: skip
    log_uncaught_exceptions()
    pin_mmap_threshold()
    try:
        run_on_loop(run(settings), settings.relay_event_loop)
    except AdminListenError as exc:
        return _startup_failed(str(exc), EX_OSERR)
    except SpoolUnavailable as exc:
        return _startup_failed(str(exc), EX_CANTCREAT)
    except OSError as exc:  # the listener could not bind
        where = f"{settings.relay_host}:{settings.relay_port}"
        return _startup_failed(f"cannot listen on {where}: {exc.strerror or exc}", EX_OSERR)
    return EX_OK


def _startup_failed(why: str, status: int) -> int:
    """Log why serving could not start (in the configured log format); return ``status``."""
    get_logger("relay.cli").error("startup_failed", error=why, exit_status=status)
    return status


def cmd_hash_password(args: argparse.Namespace) -> int:
    """Print the hash of the password read from stdin (no echo on a terminal)."""
    password = _read_password()
    if not password:
        print("ahasend-relay: empty password", file=sys.stderr)
        return EX_USAGE
    try:
        print(hash_password(password, args.scheme))
    except ValueError as exc:
        print(f"ahasend-relay: {exc}", file=sys.stderr)
        return EX_USAGE
    return EX_OK


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            print("ahasend-relay: passwords differ", file=sys.stderr)
            return ""
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_queue(args: argparse.Namespace) -> int:
    """Run a ``queue`` subcommand against the spool (works while the daemon runs)."""
    # The queue tools never call the API, so they do not need its credentials.
    settings = load_settings(getattr(args, "env_file", None), relay_dry_run=True)
    if args.spool_dir is not None and args.spool_url is not None:
        raise ConfigError("--spool-dir and --spool-url are both given: choose one spool")
    url = args.spool_url if args.spool_dir is None else None
    if url is None and args.spool_dir is None:
        url = settings.spool_url
    directory = None if url is not None else args.spool_dir or settings.relay_spool_dir
    if url is None and directory is None:
        raise ConfigError(
            "RELAY_SPOOL_DIR or RELAY_SPOOL_URL (or --spool-dir / --spool-url) must name the spool"
        )
    if directory is not None and not directory.is_dir():
        print(f"ahasend-relay: no spool at {directory}", file=sys.stderr)
        return EX_CONFIG
    try:
        return asyncio.run(_queue(args, url, directory, settings.relay_spool_max_age))
    except SpoolUnavailable as exc:
        print(f"ahasend-relay: {exc}", file=sys.stderr)
        return EX_CANTCREAT


async def _queue(
    args: argparse.Namespace, url: str | None, directory: Path | None, max_age: float
) -> int:
    """The queue command on the spool at ``url`` or in ``directory``, closed afterwards."""
    spool: SpoolBackend
    if url is not None:
        if not url.startswith(SPOOL_URL_SCHEMES):
            raise ConfigError("--spool-url must be a libpq URL: postgresql://user:password@host/db")
        shared = PostgresSpool(url, log_events=False)  # stdout is the command's output
        await shared.open()
        spool = shared
    else:
        assert directory is not None
        spool = SqliteSpool(directory)
    try:
        return await run_queue_command(args, spool, max_age, sys.stdout)
    finally:
        await spool.close()


# -- operations: check-config, send-test, healthcheck ------------------------------------


def _add_ops_commands(commands: Any) -> None:
    check = commands.add_parser(
        "check-config",
        help="validate the settings and print them (secrets masked)",
        description="Validate the settings; exit 0 and print a summary, or 78 and the error.",
    )
    _add_settings_options(check)
    check.add_argument("--online", action="store_true",
                       help="also prove the API key and account id work with AhaSend "
                            "(read-only calls: GET /v2/ping and /v2/accounts/{id})")  # fmt: skip
    check.set_defaults(command=cmd_check_config)
    _add_send_test(commands)
    health = commands.add_parser(
        "healthcheck",
        help="exit 0 if the running relay answers (SMTP, and /healthz if metrics are on)",
        description="Probe the relay configured by the environment; exit 0 healthy, 1 not.",
    )
    _add_settings_options(health)
    health.add_argument("--timeout", type=float, default=3.0, help="seconds per check (3)")
    health.set_defaults(command=cmd_healthcheck)


def _add_send_test(commands: Any) -> None:
    send = commands.add_parser(
        "send-test",
        help="send one test message through the running relay over SMTP",
        description="Send one message through the running relay; AhaSend sandbox mode "
        "(accepted, never delivered) unless --no-sandbox.",
    )
    _add_settings_options(send)
    send.add_argument("--to", required=True, metavar="ADDR", help="recipient address")
    send.add_argument("--from", dest="sender", metavar="ADDR",
                      help="sender address (default: postmaster@RELAY_HOSTNAME)")  # fmt: skip
    send.add_argument("--host", help="relay address (default: from RELAY_HOST)")
    send.add_argument("--port", type=int, help="relay port (default: RELAY_PORT)")
    send.add_argument("--no-sandbox", action="store_true", help="really deliver the message")
    send.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
    send.set_defaults(command=cmd_send_test)


def client_settings(args: argparse.Namespace) -> Settings:
    """Settings for commands that talk to a running relay: no API credentials needed."""
    return load_settings(getattr(args, "env_file", None), relay_dry_run=True)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Print the validated settings, then run every start-up check ``serve`` runs (exit
    status as ``serve`` would fail: 78, or 73 for the spool); with --online, prove the
    credentials with AhaSend."""
    settings = load_settings(args.env_file)
    for name, value in summary(settings):
        print(f"{name}={value}")
    print(f"API proxy: {describe_proxy(settings.api_proxy)}")
    try:
        asyncio.run(preflight(settings))
    except SpoolUnavailable as exc:
        print(f"ahasend-relay: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    if not args.online:
        print("configuration OK")
        return EX_OK
    return check_online(settings)


def summary(settings: Settings) -> list[tuple[str, str]]:
    """(VARIABLE, shown value) for every setting an operator sets; secrets masked."""
    return [
        (name.upper(), _shown(name, value))
        for name, value in settings.model_dump().items()
        if name not in _SYSTEMD_VARIABLES
    ]


def _shown(name: str, value: Any) -> str:
    if name in _PROXY_SETTINGS:
        return "" if value is None else mask_proxy_text(value.get_secret_value())
    if name == "relay_spool_url" and isinstance(value, SecretStr):
        return mask_url_password(value.get_secret_value())  # where the spool is, not how to log in
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    elif not _SECRET_NAME.search(name):
        return "" if value is None else str(value)
    return "[set]" if value else "[unset]"


_SECRET_NAME = re.compile(r"key|secret|password|token", re.IGNORECASE)
_PROXY_SETTINGS = frozenset({"ahasend_api_proxy", "https_proxy", "http_proxy", "all_proxy"})
_SYSTEMD_VARIABLES = frozenset({"notify_socket", "watchdog_usec", "watchdog_pid"})


def check_online(settings: Settings) -> int:
    """Ping AhaSend and read the account; the exit status says what failed. With
    RELAY_TENANTS_FILE, every tenant's key and account (``relay.cli.tenants_check``)."""
    if settings.relay_tenants_file is not None:
        return check_tenants_online(settings)
    if settings.ahasend_api_key is None or settings.ahasend_account_id is None:
        print("ahasend-relay: --online needs AHASEND_API_KEY and AHASEND_ACCOUNT_ID",
              file=sys.stderr)  # fmt: skip
        return EX_CONFIG
    client = build_sender(settings)
    assert isinstance(client, AhaSendClient)
    return asyncio.run(_check_online(client, settings))


async def _check_online(client: AhaSendClient, settings: Settings) -> int:
    where = settings.api_base_url
    try:
        step = "key"
        await client.ping()
        print(f"AhaSend at {where}: API key accepted (GET /v2/ping)")
        step = "account"
        account = await client.get_account()
    except UpstreamForbidden:
        print(f"AhaSend at {where}: the key lacks the accounts:read scope, so account id "
              f"{settings.ahasend_account_id} was not verified (sending needs only "
              "messages:send)")  # fmt: skip
        return EX_OK
    except RelayMisconfigured as exc:
        what = "refused the API key" if step == "key" else (
            f"does not know account {settings.ahasend_account_id} for this key")  # fmt: skip
        print(f"ahasend-relay: AhaSend at {where} {what} ({exc.detail})", file=sys.stderr)
        return EX_CONFIG
    except RelayError as exc:
        print(f"ahasend-relay: AhaSend at {where}: {type(exc).__name__}: {exc.detail}",
              file=sys.stderr)  # fmt: skip
        return EX_UNAVAILABLE
    finally:
        await client.aclose()
    name = account.get("name") or "?"
    print(f"AhaSend at {where}: account {settings.ahasend_account_id} ({name}) OK")
    return EX_OK


def cmd_send_test(args: argparse.Namespace) -> int:
    """Send one test message through the running relay; exit 0 only on a 2xx reply."""
    settings = client_settings(args)
    host = args.host or connect_host(settings.relay_host)
    port = args.port if args.port is not None else settings.relay_port
    sender = args.sender or f"postmaster@{settings.relay_hostname}"
    message = test_message(sender, args.to, sandbox=not args.no_sandbox)
    try:
        code, text = _submit((host, port), sender, args.to, message, args.timeout)
    except (OSError, smtplib.SMTPException) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"ahasend-relay: cannot send through {host}:{port}: {why}", file=sys.stderr)
        return EX_UNAVAILABLE
    print(f"{code} {text}")
    if code < 400:
        return EX_OK
    return EX_TEMPFAIL if code < 500 else EX_FAILED


def test_message(sender: str, recipient: str, *, sandbox: bool) -> bytes:
    """A short text message; with ``sandbox``, AhaSend accepts it but never delivers it."""
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, recipient
    msg["Subject"] = "ahasend-relay test message"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    if sandbox:
        msg["AhaSend-Sandbox"] = "true"
    msg.set_content(f"This message was sent by ahasend-relay {__version__} send-test.\n")
    return msg.as_bytes()


def _submit(
    address: tuple[str, int], sender: str, recipient: str, message: bytes, timeout: float
) -> tuple[int, str]:
    """MAIL, RCPT, DATA; the first non-2xx reply, or DATA's reply."""
    with smtplib.SMTP(*address, timeout=timeout) as client:
        client.ehlo_or_helo_if_needed()
        for code, text in (client.mail(sender), client.rcpt(recipient)):
            if code >= 400:
                return code, text.decode("utf-8", "replace")
        code, text = client.data(message)
        return code, text.decode("utf-8", "replace")


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Probe the running relay: SMTP greeting, then /healthz when metrics are on."""
    settings = client_settings(args)
    result = probe(
        connect_host(settings.relay_host), settings.relay_port, settings.relay_metrics_port,
        connect_host(settings.relay_metrics_host), args.timeout,
    )  # fmt: skip
    for line in result.lines:
        print(line, file=sys.stdout if result.ok else sys.stderr)
    return EX_OK if result.ok else EX_FAILED
