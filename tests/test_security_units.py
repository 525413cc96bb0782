"""Unit tests of the security modules: auth, policy, limits, tls, and the settings rules."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
from pathlib import Path
from typing import Any

import pytest

from relay.config import load_settings, parse_networks
from relay.errors import ConfigError, SenderRefused
from relay.smtp.auth import Authenticator, AuthUser, CredentialStore, FailureTracker, hash_password
from relay.smtp.limits import ConnectionLimiter
from relay.smtp.policy import SenderPolicy, in_networks
from relay.smtp.replies import PEER_RATE_EXCEEDED, TOO_MANY_CONNECTIONS
from relay.smtp.tls import reload, server_context
from tests.security_support import PASSWORD, SCANNER_PASSWORD, make_certs, write_users


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- auth ------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["argon2", "bcrypt"])
def test_hash_password_round_trip(tmp_path: Path, scheme: str):
    path = tmp_path / "users"
    path.write_text(f"u:{hash_password('pässword', scheme)}\n")
    store = CredentialStore(path)
    assert store.check(b"u", "pässword".encode()) == AuthUser("u")
    assert store.check(b"u", b"password") is None
    assert store.check(b"other", "pässword".encode()) is None


def test_bcrypt_refuses_long_passwords():
    with pytest.raises(ValueError, match="72 bytes"):
        hash_password("x" * 73, "bcrypt")


def test_store_reads_per_user_domains(tmp_path: Path):
    store = CredentialStore(write_users(tmp_path / "users"))
    assert len(store) == 2
    assert store.check(b"scanner", SCANNER_PASSWORD.encode()) == AuthUser(
        "scanner", frozenset({"example.org"})
    )
    assert store.check(b"app", PASSWORD.encode()) == AuthUser("app")


def test_single_user_from_settings_values():
    store = CredentialStore(single=("app", "s3cret"))
    assert store.check(b"app", b"s3cret") == AuthUser("app")
    assert store.check(b"app", b"s3cret ") is None


@pytest.mark.parametrize(
    "line", ["nohash", "u:plaintext-password", ":$2b$04$x", "u:$2b$04$abc:not a domain!"]
)
def test_store_rejects_bad_lines_without_echoing_them(tmp_path: Path, line: str):
    path = tmp_path / "users"
    path.write_text(f"# ok\n{line}\n")
    with pytest.raises(ConfigError, match=r"users:2") as error:
        CredentialStore(path)
    assert "plaintext-password" not in str(error.value)


def test_store_reload_keeps_old_users_when_the_file_breaks(tmp_path: Path):
    path = write_users(tmp_path / "users")
    store = CredentialStore(path)
    path.write_text("garbage\n")
    with pytest.raises(ConfigError):
        store.load()
    assert store.check(b"app", PASSWORD.encode()) == AuthUser("app")


def test_missing_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="RELAY_AUTH_FILE"):
        CredentialStore(tmp_path / "absent")


def test_failure_delay_doubles_per_peer_and_expires():
    clock = Clock()
    tracker = FailureTracker(1.0, window=60, ceiling=5, clock=clock)
    assert [tracker.record("a") for _ in range(4)] == [1, 2, 4, 5]
    assert tracker.record("b") == 1
    clock.now += 61
    assert tracker.recent("a") == 0
    assert tracker.record("a") == 1


def test_failure_tracker_memory_is_bounded():
    tracker = FailureTracker(1.0, max_peers=3)
    for n in range(10):
        tracker.record(f"10.0.0.{n}")
    assert tracker.recent("10.0.0.9") == 1
    assert tracker.recent("10.0.0.0") == 0


async def test_authenticator_tarpits_failures_only():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    store = CredentialStore(single=("app", "pw"))
    auth = Authenticator(store, FailureTracker(0.5), sleep=sleep)
    assert await auth.verify("192.0.2.1", b"app", b"pw") == AuthUser("app")
    assert await auth.verify("192.0.2.1", b"app", b"nope") is None
    assert slept == []  # the delay is earned by failures, waited before the next check
    assert await auth.verify("192.0.2.1", b"app", b"nope") is None
    assert await auth.verify("192.0.2.1", b"app", b"nope") is None
    assert slept == [0.5, 1.0]
    assert await auth.verify("192.0.2.9", b"app", b"pw") == AuthUser("app")
    assert slept == [0.5, 1.0]


async def test_tarpit_does_not_block_the_loop():
    """While one failure sleeps, other coroutines (sessions) run."""
    release = asyncio.Event()

    async def sleep(seconds: float) -> None:
        await release.wait()

    auth = Authenticator(CredentialStore(single=("app", "pw")), FailureTracker(5), sleep=sleep)
    auth.failures.record("192.0.2.1")
    failing = asyncio.create_task(auth.verify("192.0.2.1", b"app", b"bad"))
    assert await auth.verify("192.0.2.2", b"app", b"pw") == AuthUser("app")
    assert not failing.done()
    release.set()
    assert await failing is None


class CountingStore(CredentialStore):
    """A real store that counts the hashes it checks."""

    checks = 0

    def check(self, login: bytes, password: bytes) -> AuthUser | None:
        self.checks += 1
        return super().check(login, password)


async def test_tarpit_comes_before_the_hash_and_a_busy_peer_is_not_hashed_at_all():
    release = asyncio.Event()
    store = CountingStore(single=("app", "pw"))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await release.wait()

    auth = Authenticator(store, FailureTracker(1.0), sleep=sleep)
    assert await auth.verify("192.0.2.1", b"app", b"bad") is None
    assert store.checks == 1
    waiting = asyncio.create_task(auth.verify("192.0.2.1", b"app", b"bad"))
    await asyncio.sleep(0)
    assert waits == [1.0]
    assert store.checks == 1, "hashed before the delay"
    parallel = [await auth.verify("192.0.2.1", b"app", b"pw") for _ in range(5)]
    assert parallel == [None] * 5, "a peer in its tarpit is answered without a check"
    assert store.checks == 1
    release.set()
    assert await waiting is None
    assert store.checks == 2


async def test_parallel_logins_from_one_address_without_failures_are_all_checked():
    """Many app workers behind one NAT address: no failure, no tarpit, every login checked."""
    auth = Authenticator(CredentialStore(single=("app", "pw")), FailureTracker(1.0))
    logins = [auth.verify("192.0.2.1", b"app", b"pw") for _ in range(6)]
    assert await asyncio.gather(*logins) == [AuthUser("app")] * 6


def test_verifications_run_one_per_core():
    auth = Authenticator(CredentialStore(single=("app", "pw")), FailureTracker(0))
    assert auth.concurrency == (os.cpu_count() or 1)


# -- policy ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("address", "expected"),
    [("10.1.2.3", True), ("10.2.0.1", False), ("2001:db8::5", True), ("::ffff:10.1.0.1", True),
     ("fe80::1%eth0", False), ("not-an-ip", False)],
)  # fmt: skip
def test_in_networks(address: str, expected: bool):
    networks = parse_networks("10.1.0.0/16, 2001:db8::/32")
    assert in_networks(address, networks) is expected


def payload(sender: str, name: str | None = "App", **extra: Any) -> dict[str, Any]:
    address = {"email": sender, **({"name": name} if name else {})}
    return {"from": address, "to": [{"email": "ann@example.net"}], "subject": "s", **extra}


def test_sender_domains_exact_and_case_insensitive():
    policy = SenderPolicy(frozenset({"example.com"}))
    assert policy.allowed("App@EXAMPLE.COM")
    assert not policy.allowed("app@mail.example.com")
    assert not policy.allowed("root@localhost")
    assert not policy.mail_from_allowed("root@localhost", None)
    with pytest.raises(SenderRefused, match="localhost"):
        policy.vet([payload("root@localhost")])


def test_no_domains_means_any_sender():
    assert SenderPolicy().vet([payload("x@anything.test")]) == [payload("x@anything.test")]


def test_user_domains_apply_on_top_of_relay_wide_ones():
    policy = SenderPolicy(frozenset({"example.com", "example.org"}))
    assert policy.allowed("a@example.org", frozenset({"example.org"}))
    assert not policy.allowed("a@example.com", frozenset({"example.org"}))
    assert not SenderPolicy().allowed("a@example.com", frozenset({"example.org"}))


def test_rewrite_keeps_name_sets_reply_to_and_is_pure():
    policy = SenderPolicy(frozenset({"example.com"}), rewrite_to="relay@example.com")
    original = payload("scanner@printer.lan", "Printer")
    [rewritten] = policy.vet([original])
    assert rewritten["from"] == {"email": "relay@example.com", "name": "Printer"}
    assert rewritten["reply_to"] == {"email": "scanner@printer.lan", "name": "Printer"}
    assert original == payload("scanner@printer.lan", "Printer")
    assert policy.mail_from_allowed("root@localhost", None)


@pytest.mark.parametrize(
    "extra", [{"reply_to": {"email": "ops@example.com"}}, {"headers": {"Reply-To": "o@x.test"}}]
)
def test_rewrite_keeps_an_existing_reply_to(extra: dict[str, Any]):
    policy = SenderPolicy(rewrite_to="relay@example.com")
    [rewritten] = policy.vet([payload("root@localhost", None, **extra)])
    assert rewritten["from"] == {"email": "relay@example.com"}
    assert rewritten.get("reply_to") == extra.get("reply_to")


def test_rewrite_alone_allows_only_its_domain():
    policy = SenderPolicy(rewrite_to="relay@example.com")
    assert policy.vet([payload("app@example.com")]) == [payload("app@example.com")]
    [rewritten] = policy.vet([payload("app@example.org")])
    assert rewritten["from"]["email"] == "relay@example.com"


def test_rewrite_applies_to_users_outside_their_domains():
    policy = SenderPolicy(rewrite_to="relay@example.com")
    [rewritten] = policy.vet([payload("app@example.com")], frozenset({"example.org"}))
    assert rewritten["reply_to"]["email"] == "app@example.com"


# -- limits ----------------------------------------------------------------------------
def test_connection_limit_and_release():
    limiter = ConnectionLimiter(2, 0)
    assert limiter.admit("a") is None
    assert limiter.admit("b") is None
    assert limiter.admit("c") is TOO_MANY_CONNECTIONS
    limiter.release()
    assert limiter.admit("c") is None


def test_per_peer_rate_slides():
    clock = Clock()
    limiter = ConnectionLimiter(100, 2, clock=clock)
    assert limiter.admit("a") is None
    clock.now += 30
    assert limiter.admit("a") is None
    assert limiter.admit("a") is PEER_RATE_EXCEEDED
    assert limiter.admit("b") is None
    assert limiter.admit("a", rate_limited=False) is None
    clock.now += 31
    assert limiter.admit("a") is None


def test_rate_memory_is_bounded():
    limiter = ConnectionLimiter(10**6, 1, max_peers=5)
    for n in range(50):
        limiter.admit(f"10.0.0.{n}")
    assert limiter.peers_remembered == 5


# -- tls -------------------------------------------------------------------------------
def test_tls_context_is_at_least_1_2(tmp_path: Path):
    certs = make_certs(tmp_path)
    context = server_context(certs.cert, certs.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_tls_reload_refuses_broken_files(tmp_path: Path):
    certs = make_certs(tmp_path)
    context = server_context(certs.cert, certs.key)
    with pytest.raises(ConfigError, match="RELAY_TLS_CERT"):
        reload(context, tmp_path / "missing.pem", None)
    with pytest.raises(ConfigError):
        server_context(certs.key, None)


# -- settings ----------------------------------------------------------------------------
def settings(**values: Any) -> Any:
    return load_settings(None, relay_dry_run=True, **values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"relay_host": "0.0.0.0"}, "this would be an open relay"),
        ({"relay_host": "::"}, "this would be an open relay"),
        ({"relay_allowed_networks": "::/0"}, "this would be an open relay"),
        ({"relay_allowed_networks": "10.0.0.0/8, bogus"}, "'bogus' is not an IPv4/IPv6"),
        ({"relay_allowed_sender_domains": "exa mple..com"}, "not a domain"),
        ({"relay_from_rewrite": "Relay <relay@example.com>"}, "plain address"),
        ({"relay_auth_user": "app", "relay_auth_password": "pw"}, "SMTP AUTH needs TLS"),
        ({"relay_auth_user": "app", "relay_auth_allow_plaintext": True}, "RELAY_AUTH_PASSWORD"),
        ({"relay_smtps_port": 465}, "RELAY_SMTPS_PORT needs RELAY_TLS_CERT"),
        ({"relay_require_tls": True}, "RELAY_REQUIRE_TLS needs RELAY_TLS_CERT"),
        ({"relay_tls_key": "/k.pem"}, "RELAY_TLS_KEY needs RELAY_TLS_CERT"),
        ({"relay_proxy_protocol": True}, "RELAY_PROXY_TRUSTED_NETWORKS"),
    ],
)
def test_inconsistent_security_settings_are_refused(values: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        settings(**values)


def test_public_bind_with_networks_or_auth_is_fine():
    assert settings(relay_host="0.0.0.0", relay_allowed_networks="10.0.0.0/8").allowed_networks
    s = settings(relay_host="0.0.0.0", relay_auth_user="a", relay_auth_password="p",
                 relay_auth_allow_plaintext=True)  # fmt: skip
    assert s.allowed_networks == ()  # AUTH on, no networks: everybody must authenticate


def test_default_networks_are_loopback():
    assert settings().allowed_networks == (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"),
    )  # fmt: skip
