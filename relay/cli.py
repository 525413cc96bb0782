"""The command line: ``ahasend-relay [serve] [options]`` and its subcommands.

``main`` is the only place in the relay that decides an exit status; it never raises
for expected failures (bad config: one line on stderr, exit 78, EX_CONFIG).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from relay import __version__
from relay.auth import hash_password
from relay.config import ConfigError, Settings, load_settings
from relay.log import configure
from relay.server import run

__all__ = ["EX_CONFIG", "EX_OK", "main"]

EX_OK = 0
EX_USAGE = 64
EX_OSERR = 71
EX_CONFIG = 78

Command = Callable[[argparse.Namespace], int]


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
    serve = commands.add_parser("serve", help="run the relay (the default command)")
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
    secrets = [key, password.get_secret_value() if password else ""]
    configure(fmt=settings.relay_log_format, level=settings.relay_log_level, secrets=secrets)
    try:
        asyncio.run(run(settings))
    except OSError as exc:  # the listener could not bind
        print(f"ahasend-relay: cannot listen on {settings.relay_host}:{settings.relay_port}: "
              f"{exc.strerror or exc}", file=sys.stderr)  # fmt: skip
        return EX_OSERR
    return EX_OK


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
