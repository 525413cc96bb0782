"""Helpers for the security tests: certificates (trustme), users, raw SMTP conversations."""

from __future__ import annotations

import base64
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import argon2
import bcrypt
import trustme

from tests.rawsmtp import RawSMTP

PASSWORD = "correct horse battery staple"
SCANNER_PASSWORD = "sc4nner-Pa55"


@dataclass(frozen=True)
class Certs:
    """A CA and a server certificate for 127.0.0.1/localhost, written to files."""

    ca: trustme.CA
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def make_certs(directory: Path, name: str = "server") -> Certs:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost", "::1")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for extra in issued.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    return Certs(ca, cert, key)


def write_users(path: Path) -> Path:
    """``app`` (argon2, any domain) and ``scanner`` (bcrypt, example.org only)."""
    cheap_argon2 = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    cheap_bcrypt = bcrypt.hashpw(SCANNER_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(
        "# users of the test relay\n\n"
        f"app:{cheap_argon2.hash(PASSWORD)}\n"
        f"scanner:{cheap_bcrypt}:example.org\n",
        encoding="utf-8",
    )
    return path


def message(sender: str = "App <app@example.com>", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "Ann <ann@example.net>"
    msg["Subject"] = "Hello"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hi Ann.\n")
    return msg


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plain_token(user: str, password: str) -> str:
    return b64(f"\0{user}\0{password}")


class Conversation(RawSMTP):
    """A raw SMTP client from a chosen source address; the test reads the greeting itself."""

    def __init__(self, port: int, source: str = "127.0.0.1", host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        if source != host:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def command(self, line: str) -> str:
        return self.cmd(line)

    def closed_by_server(self) -> bool:
        """True when the server has closed the connection (EOF or reset)."""
        return self.closed()

    def starttls(self, context: ssl.SSLContext) -> None:
        assert self.command("STARTTLS").startswith("220")
        self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")
