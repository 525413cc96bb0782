"""SMTP AUTH users: the credential store, password hashing, and the failed-login tarpit.

Users come from a credentials file (``RELAY_AUTH_FILE``), one user a line::

    # comments and blank lines are ignored
    scanner:$argon2id$v=19$m=65536,t=3,p=4$...
    webapp:$2b$12$...:example.com,example.org

``user:hash[:domain,domain...]`` — the optional third field limits the sender domains
that user may send as. Hashes are argon2 (``$argon2...``) or bcrypt (``$2a$``/``$2b$``/
``$2y$``); ``ahasend-relay hash-password`` prints one. A single user can instead come
from ``RELAY_AUTH_USER`` / ``RELAY_AUTH_PASSWORD`` (hashed at load, verified like a file entry,
so a wrong password costs what an unknown user costs).

Verification is CPU- and memory-heavy by design, so ``Authenticator.verify`` runs it in a
worker thread behind a semaphore of one slot per core (a flood of AUTH attempts cannot
exhaust memory with argon2's buffers). A peer with recent failures waits its delay (doubling
with each recent failure; ``asyncio.sleep``: other sessions keep flowing) *before* its
password is hashed, and an attempt from a peer already waiting its delay is refused without
hashing at all: parallel guesses from one address cost no CPU.
Passwords are never logged and never kept beyond the call that checks them.

``decode_response`` and ``split_plain`` read the client's side of the PLAIN and LOGIN
exchanges (RFC 4616, draft-murchison-sasl-login) exactly as aiosmtpd does; the session
(``relay.smtp.session``) runs the exchange. A successful AUTH leaves the ``AuthUser`` in
aiosmtpd's ``Session.auth_data`` (``authenticated_user`` reads it back), which aiosmtpd
replaces with a fresh Session on STARTTLS: what plaintext told us is forgotten.
"""

from __future__ import annotations

import asyncio
import binascii
import os
import secrets
import time
from base64 import b64decode
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import argon2
import bcrypt

from relay.config import parse_domains
from relay.errors import ConfigError

__all__ = [
    "AuthUser",
    "Authenticator",
    "CredentialStore",
    "FailureTracker",
    "authenticated_user",
    "decode_response",
    "hash_password",
    "split_plain",
    "verify_hash",
]

_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_ARGON2_PREFIX = "$argon2"
_BCRYPT_MAX_BYTES = 72


@dataclass(frozen=True, slots=True)
class AuthUser:
    """An authenticated identity; ``sender_domains`` None means no per-user restriction."""

    name: str
    sender_domains: frozenset[str] | None = None


def authenticated_user(session: Any) -> AuthUser | None:
    """The user an aiosmtpd ``Session`` authenticated as, or None."""
    user = getattr(session, "auth_data", None)
    return user if isinstance(user, AuthUser) else None


def decode_response(text: str) -> bytes | None:
    """A base64 SASL response (an AUTH command's initial response), or None if invalid."""
    try:
        return b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError):
        return None


def split_plain(message: bytes) -> tuple[bytes, bytes] | None:
    """(login, password) of a PLAIN message ``authzid NUL login NUL password``, or None."""
    parts = message.split(b"\x00")
    if len(parts) != 3:
        return None
    return parts[1], parts[2]


def hash_password(password: str, scheme: str = "argon2") -> str:
    """A hash of ``password`` for the credentials file (argon2id by default, or bcrypt)."""
    if scheme == "bcrypt":
        secret = password.encode("utf-8")
        if len(secret) > _BCRYPT_MAX_BYTES:
            raise ValueError("bcrypt passwords are limited to 72 bytes; use argon2")
        return bcrypt.hashpw(secret, bcrypt.gensalt()).decode("ascii")
    return argon2.PasswordHasher().hash(password)


def verify_hash(encoded: str, password: bytes) -> bool:
    """True when ``password`` matches ``encoded`` (argon2 or bcrypt); never raises."""
    try:
        if encoded.startswith(_ARGON2_PREFIX):
            return argon2.PasswordHasher().verify(encoded, password)
        if encoded.startswith(_BCRYPT_PREFIXES):
            return len(password) <= _BCRYPT_MAX_BYTES and bcrypt.checkpw(
                password, encoded.encode("ascii")
            )
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError, ValueError):
        return False
    return False


def is_supported_hash(encoded: str) -> bool:
    return encoded.startswith((_ARGON2_PREFIX, *_BCRYPT_PREFIXES))


@dataclass(frozen=True, slots=True)
class _Entry:
    user: AuthUser
    hash: str | None = None  # from the file, or of the single RELAY_AUTH_USER's password


def hash_like(encoded: str, password: bytes) -> str:
    """A hash of ``password`` with the scheme and cost of ``encoded`` (argon2 or bcrypt)."""
    if encoded.startswith(_ARGON2_PREFIX):
        hasher = argon2.PasswordHasher.from_parameters(argon2.extract_parameters(encoded))
        return hasher.hash(password)
    prefix, rounds = encoded.split("$")[1:3]
    salt = bcrypt.gensalt(rounds=int(rounds), prefix=b"2a" if prefix == "2a" else b"2b")
    return bcrypt.hashpw(password[:_BCRYPT_MAX_BYTES], salt).decode("ascii")


class CredentialStore:
    """The users that may AUTH. ``load`` re-reads the file (SIGHUP), atomically.

    Timing reveals no user name: an unknown user is checked against a dummy hash with the
    scheme and cost most users have (``hash_like``), and the single ``RELAY_AUTH_USER``'s
    password is hashed at load (argon2id, the default) and verified like a file entry.
    """

    def __init__(self, path: Path | None = None, single: tuple[str, str] | None = None) -> None:
        self._path = path
        self._single = single
        self._entries: dict[str, _Entry] = {}
        self._dummy = ""
        self.load()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def users(self) -> frozenset[str]:
        """The user names that may AUTH (tenants refer to them)."""
        return frozenset(self._entries)

    def load(self) -> None:
        """(Re)read the users; ConfigError (store unchanged) when the file is unusable."""
        entries = dict(_read_file(self._path)) if self._path is not None else {}
        if self._single is not None:
            name, password = self._single
            entries[name] = _Entry(AuthUser(name), hash=hash_password(password))
        self._entries, self._dummy = entries, _dummy_for(entries)

    def check(self, login: bytes, password: bytes) -> AuthUser | None:
        """The user when ``login``/``password`` match, else None. Blocking: CPU-heavy."""
        entry = self._entries.get(login.decode("utf-8", "replace"))
        if entry is None:
            verify_hash(self._dummy, password)
            return None
        assert entry.hash is not None
        return entry.user if verify_hash(entry.hash, password) else None


def _dummy_for(entries: dict[str, _Entry]) -> str:
    """A hash of a random secret with the most common scheme and cost of ``entries``."""
    kinds = Counter(_cost_of(e.hash) for e in entries.values() if e.hash is not None)
    if not kinds:
        return hash_password(secrets.token_hex(16))
    ((kind, _),) = kinds.most_common(1)
    model = next(e.hash for e in entries.values() if e.hash and _cost_of(e.hash) == kind)
    return hash_like(model, secrets.token_hex(16).encode("ascii"))


def _cost_of(encoded: str) -> str:
    """``$argon2id$v=19$m=65536,t=3,p=4`` or ``$2b$12``: the hash's scheme and cost."""
    return "$".join(encoded.split("$")[: 4 if encoded.startswith(_ARGON2_PREFIX) else 3])


def _read_file(path: Path) -> Iterable[tuple[str, _Entry]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"RELAY_AUTH_FILE: cannot read {path}: {exc}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            yield _parse_line(line.strip(), f"RELAY_AUTH_FILE {path}:{number}")


def _parse_line(line: str, where: str) -> tuple[str, _Entry]:
    """``user:hash[:domains]`` → (user, entry); the message never contains the hash."""
    name, _, rest = line.partition(":")
    encoded, _, domains = rest.partition(":")
    if not name or not is_supported_hash(encoded):
        raise ConfigError(f"{where}: expected user:hash[:domain,...] with a bcrypt/argon2 hash")
    try:
        allowed = frozenset(parse_domains(domains)) if domains.strip() else None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return name, _Entry(AuthUser(name, allowed), hash=encoded)


class FailureTracker:
    """Recent failed AUTH attempts per peer address, and the delay they earn.

    Each failure within ``window`` seconds doubles the delay (``base``, then twice that...,
    at most ``ceiling``). At most ``max_peers`` addresses are remembered (oldest forgotten first),
    so a spray of addresses cannot grow memory without bound.
    """

    def __init__(
        self,
        base: float,
        *,
        window: float = 600.0,
        ceiling: float = 30.0,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base, self._window, self._ceiling = base, window, ceiling
        self._max_peers, self._clock = max_peers, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def delay(self, peer: str) -> float:
        """The wait (seconds) ``peer`` earns by its recent failures, before its next check."""
        count = self.recent(peer)
        return min(self._ceiling, self._base * 2 ** (count - 1)) if self._base and count else 0.0

    def record(self, peer: str) -> float:
        """Count a failure of ``peer``; the delay its next attempt will wait."""
        now = self._clock()
        times = self._failures.pop(peer, deque())
        times.append(now)
        while times and times[0] <= now - self._window:
            times.popleft()
        self._failures[peer] = times
        while len(self._failures) > self._max_peers:
            self._failures.popitem(last=False)
        return min(self._ceiling, self._base * 2 ** (len(times) - 1)) if self._base else 0.0

    def recent(self, peer: str) -> int:
        """How many failures of ``peer`` are within the window."""
        now = self._clock()
        return sum(1 for t in self._failures.get(peer, ()) if t > now - self._window)


class Authenticator:
    """Checks credentials off the event loop; tarpits peers that keep failing, before hashing."""

    def __init__(
        self,
        store: CredentialStore,
        failures: FailureTracker,
        *,
        concurrency: int | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``concurrency`` verifications at a time: by default one per core."""
        self.store = store
        self.failures = failures
        self.concurrency = concurrency or os.cpu_count() or 1
        self._slots = asyncio.Semaphore(self.concurrency)
        self._sleep = sleep
        self._waiting: set[str] = set()  # peers in their tarpit delay right now

    async def verify(self, peer: str, login: bytes, password: bytes) -> AuthUser | None:
        """The user, or None: checked after the peer's delay; unhashed while it is waiting."""
        if peer in self._waiting:
            self.failures.record(peer)
            return None
        if delay := self.failures.delay(peer):
            self._waiting.add(peer)
            try:
                await self._sleep(delay)
            finally:
                self._waiting.discard(peer)
        async with self._slots:
            user = await asyncio.to_thread(self.store.check, login, password)
        if user is None:
            self.failures.record(peer)
        return user
