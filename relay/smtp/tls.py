"""TLS for the SMTP listeners: one server SSLContext shared by STARTTLS and SMTPS.

The context refuses anything older than TLS 1.2. ``reload`` re-reads the certificate
and key into the *same* context object (SIGHUP after a renewal): handshakes that start
afterwards use the new certificate, the listeners and sessions in flight are untouched.
A renewal that cannot be loaded (missing file, key mismatch) leaves the old certificate
in place: the files are tried on a scratch context first.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from relay.errors import ConfigError

__all__ = ["reload", "server_context"]


def server_context(cert: Path, key: Path | None) -> ssl.SSLContext:
    """A server context (TLS >= 1.2) with ``cert``/``key`` loaded, or ConfigError."""
    context = _new_context()
    _load(context, cert, key)
    return context


def reload(context: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    """Load ``cert``/``key`` into ``context`` in place; ConfigError leaves it unchanged."""
    _load(_new_context(), cert, key)  # validate before touching the live context
    _load(context, cert, key)


def _new_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def _load(context: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"RELAY_TLS_CERT/RELAY_TLS_KEY: cannot load {cert}{f' / {key}' if key else ''}: {exc}"
        ) from None
