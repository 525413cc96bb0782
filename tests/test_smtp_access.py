"""Unit tests of the access rules and the security hooks, without sockets.

``relay.smtp.access`` decides (pure), ``relay.smtp.guard`` wires the decisions into aiosmtpd
hooks; the session's own parsing helpers (SASL responses, MAIL's ``AUTH=``) are pure too.
The end-to-end tests (tests/test_security_*.py) drive the same rules through real clients.
"""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from relay.smtp.access import Access, ClientState
from relay.smtp.auth import AuthUser, authenticated_user, decode_response, split_plain
from relay.smtp.guard import Admission, Guard, GuardedHandler
from relay.smtp.limits import ConnectionLimiter
from relay.smtp.policy import SenderPolicy
from relay.smtp.replies import (
    AUTH_INVALID,
    AUTH_REQUIRED,
    AUTH_TOO_MANY_FAILURES,
    CLIENT_NOT_ALLOWED,
    PEER_RATE_EXCEEDED,
    SENDER_NOT_ALLOWED,
    TOO_MANY_CONNECTIONS,
)
from relay.smtp.session import without_auth_param
from tests.harness import settings_for

LAN = (ipaddress.ip_network("192.0.2.0/24"),)
INSIDE = ClientState("192.0.2.7", trusted=True)
OUTSIDE = ClientState("198.51.100.7")
EHLO = ["250-relay.test", "250-SIZE 100", "250-AUTH LOGIN PLAIN", "250 HELP"]


def access(**values: Any) -> Access:
    return Access(**({"networks": LAN} | values))


# -- connect -----------------------------------------------------------------------------
def test_client_is_trusted_inside_the_networks() -> None:
    assert access().client("192.0.2.7") == INSIDE
    assert access().client("198.51.100.7") == OUTSIDE
    assert access().client("::ffff:192.0.2.7").trusted


@pytest.mark.parametrize(
    ("client", "auth", "refusal"),
    [
        (INSIDE, False, None),
        (OUTSIDE, False, CLIENT_NOT_ALLOWED),
        (OUTSIDE, True, None),  # may connect, must authenticate
        (ClientState("127.0.0.1"), False, None),  # health checks get the greeting
        (ClientState("::1"), False, None),
    ],
)
def test_connect_refusal(client: ClientState, auth: bool, refusal: Any) -> None:
    assert access(auth_enabled=auth).connect_refusal(client) is refusal


def test_only_trusted_proxies_may_name_the_client() -> None:
    rules = access(proxy_networks=(ipaddress.ip_network("10.0.0.1/32"),))
    assert rules.proxy_peer_trusted("10.0.0.1")
    assert not rules.proxy_peer_trusted("10.0.0.2")
    assert not rules.proxy_peer_trusted("192.0.2.7")  # trusted to send, not to proxy


def guard(max_connections: int = 10, rate: int = 0, **values: Any) -> Guard:
    return Guard(
        settings=settings_for(), access=access(**values),
        limiter=ConnectionLimiter(max_connections, rate),
    )  # fmt: skip


def test_admission_asks_the_limits_first_then_the_rules() -> None:
    full = guard(max_connections=1)
    assert full.admit("198.51.100.7") == Admission(OUTSIDE, CLIENT_NOT_ALLOWED, holds_slot=True)
    assert full.admit("192.0.2.7") == Admission(INSIDE, TOO_MANY_CONNECTIONS, holds_slot=False)
    full.limiter.release()
    assert full.admit("192.0.2.7") == Admission(INSIDE, None, holds_slot=True)


def test_the_peer_rate_spares_trusted_clients() -> None:
    rated = guard(rate=1, auth_enabled=True)
    assert rated.admit("198.51.100.7").refusal is None
    assert rated.admit("198.51.100.7") == Admission(OUTSIDE, PEER_RATE_EXCEEDED, False)
    assert rated.admit("192.0.2.7").refusal is None
    assert rated.admit("192.0.2.7").refusal is None


def test_access_from_settings() -> None:
    settings = settings_for(
        relay_allowed_networks="192.0.2.0/24", relay_proxy_trusted_networks="10.0.0.1/32",
        relay_allowed_sender_domains="example.com", relay_auth_user="app",
        relay_auth_password="pw", relay_auth_allow_plaintext=True, relay_auth_max_failures=5,
    )  # fmt: skip
    rules = Access.from_settings(settings)
    assert rules.networks == LAN
    assert rules.proxy_peer_trusted("10.0.0.1")
    assert rules.auth_enabled
    assert rules.senders == SenderPolicy(frozenset({"example.com"}))
    assert rules.max_auth_failures == 5


# -- MAIL ---------------------------------------------------------------------------------
APP = AuthUser("app")
SCANNER = AuthUser("scanner", frozenset({"example.org"}))


@pytest.mark.parametrize(
    ("client", "user", "auth", "address", "refusal"),
    [
        (INSIDE, None, False, "app@example.com", None),
        (OUTSIDE, None, True, "app@example.com", AUTH_REQUIRED),
        (OUTSIDE, None, False, "app@example.com", CLIENT_NOT_ALLOWED),
        (OUTSIDE, APP, True, "app@example.com", None),
        (INSIDE, None, False, "root@printer.lan", SENDER_NOT_ALLOWED),
        (OUTSIDE, SCANNER, True, "scan@example.org", SENDER_NOT_ALLOWED),  # not relay-wide
        (OUTSIDE, SCANNER, True, "scan@example.com", SENDER_NOT_ALLOWED),  # not the user's
    ],
)
def test_mail_refusal(
    client: ClientState, user: AuthUser | None, auth: bool, address: str, refusal: Any
) -> None:
    rules = access(auth_enabled=auth, senders=SenderPolicy(frozenset({"example.com"})))
    assert rules.mail_refusal(client, user, address) is refusal


def test_mail_from_rewrite_accepts_any_sender_domain() -> None:
    rules = access(senders=SenderPolicy(frozenset({"example.com"}), "relay@example.com"))
    assert rules.mail_refusal(INSIDE, None, "root@printer.lan") is None


# -- AUTH and EHLO ------------------------------------------------------------------------
def test_auth_failures_end_the_session_at_the_limit() -> None:
    rules = access(max_auth_failures=3)
    assert [rules.auth_failure(n).reply for n in (1, 2, 3)] == [
        AUTH_INVALID, AUTH_INVALID, AUTH_TOO_MANY_FAILURES,
    ]  # fmt: skip
    assert [rules.auth_failure(n).disconnect for n in (1, 2, 3)] == [False, False, True]


def test_ehlo_hides_auth_unless_configured() -> None:
    assert access(auth_enabled=True).ehlo_lines(EHLO) == EHLO
    assert access().ehlo_lines(EHLO) == ["250-relay.test", "250-SIZE 100", "250 HELP"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("AGFwcABwdw==", b"\0app\0pw"), ("not base64!", None), ("AGFwcABwdw", None), ("é", None)],
)
def test_decode_response(text: str, expected: bytes | None) -> None:
    assert decode_response(text) == expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"\0app\0pw", (b"app", b"pw")),
        (b"admin\0app\0pw", (b"app", b"pw")),  # the authorisation identity is ignored
        (b"app\0pw", None),
        (b"\0app\0pw\0more", None),
    ],
)
def test_split_plain(message: bytes, expected: tuple[bytes, bytes] | None) -> None:
    assert split_plain(message) == expected


def test_authenticated_user_is_the_sessions_auth_data() -> None:
    assert authenticated_user(SimpleNamespace(auth_data=APP)) == APP
    assert authenticated_user(SimpleNamespace(auth_data=None)) is None
    assert authenticated_user(SimpleNamespace(auth_data="app")) is None


# -- MAIL's AUTH= parameter ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("FROM:<a@example.com> AUTH=<>", "FROM:<a@example.com>"),
        ("from: <a@example.com> auth=a+2Bb@example.com SIZE=10", "FROM:<a@example.com> SIZE=10"),
        ("FROM:<a@example.com>AUTH=<>", "FROM:<a@example.com>"),
        ("FROM:a@example.com AUTH=<> BODY=8BITMIME", "FROM:a@example.com BODY=8BITMIME"),
        ("FROM:<a@example.com> AUTH", "FROM:<a@example.com>"),
        ('FROM:<"x> AUTH=y"@example.com> AUTH=<>', 'FROM:<"x> AUTH=y"@example.com>'),
        # unchanged: aiosmtpd answers them as it would
        ("FROM:<a@example.com> AUTH=", "FROM:<a@example.com> AUTH="),
        ("FROM:<a@example.com>  SIZE=10", "FROM:<a@example.com>  SIZE=10"),
        ("FROM:", "FROM:"),
        ("TO:<a@example.com> AUTH=<>", "TO:<a@example.com> AUTH=<>"),
        (None, None),
    ],
)
def test_without_auth_param(arg: str | None, expected: str | None) -> None:
    assert without_auth_param(arg) == expected


# -- the hooks ----------------------------------------------------------------------------
class Inner:
    """The delivery handler's hooks, recording what reached them."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def handle_EHLO(self, *args: Any) -> list[str]:
        self.calls.append("EHLO")
        return EHLO

    async def handle_MAIL(self, *args: Any) -> str:
        self.calls.append("MAIL")
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, *args: Any) -> str:
        self.calls.append("RCPT")
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, *args: Any) -> str:
        self.calls.append("DATA")
        return "250 2.0.0 Queued"

    async def handle_exception(self, error: Exception) -> str:
        self.calls.append(type(error).__name__)
        return "451 4.3.0 Local error in processing, try again later"


class FakeServer:
    """The session as the hooks see it."""

    def __init__(self, client: ClientState = OUTSIDE, admitted: bool = True) -> None:
        self.client = client
        self.admitted = admitted
        self.asked: list[str] = []

    async def admit(self, address: str) -> bool:
        self.asked.append(address)
        return self.admitted


def session(user: AuthUser | None = None, peer: Any = ("10.0.0.1", 51000)) -> SimpleNamespace:
    return SimpleNamespace(auth_data=user, peer=peer)


async def test_mail_hook_refuses_before_the_delivery_handler() -> None:
    inner = Inner()
    hooks = GuardedHandler(inner, access(auth_enabled=True))
    reply = await hooks.handle_MAIL(FakeServer(), session(), None, "app@example.com", [])
    assert reply == "530 5.7.0 Authentication required"
    assert inner.calls == []
    reply = await hooks.handle_MAIL(FakeServer(), session(APP), None, "app@example.com", [])
    assert reply == "250 2.1.0 Sender OK"
    reply = await hooks.handle_MAIL(FakeServer(INSIDE), session(), None, "app@example.com", [])
    assert reply == "250 2.1.0 Sender OK"
    assert inner.calls == ["MAIL", "MAIL"]


async def test_ehlo_hook_filters_the_delivery_handlers_answer() -> None:
    inner = Inner()
    lines = await GuardedHandler(inner, access()).handle_EHLO(
        FakeServer(), session(), None, "client.test", EHLO[:1]
    )
    assert lines == ["250-relay.test", "250-SIZE 100", "250 HELP"]
    assert inner.calls == ["EHLO"]


@pytest.mark.parametrize("admitted", [True, False])
async def test_proxy_hook_admits_the_client_the_header_names(admitted: bool) -> None:
    server = FakeServer(admitted=admitted)
    proxy = SimpleNamespace(src_addr=ipaddress.ip_address("2001:db8::7"), src_port=40000)
    structlog.contextvars.clear_contextvars()
    assert await GuardedHandler(Inner(), access()).handle_PROXY(
        server, session(), None, proxy
    ) is admitted  # fmt: skip
    assert server.asked == ["2001:db8::7"]
    bound = structlog.contextvars.get_contextvars()
    assert bound == {"peer": "[2001:db8::7]:40000", "via": "10.0.0.1:51000"}


async def test_proxy_hook_without_a_source_admits_the_peer() -> None:
    """A PROXY ``LOCAL`` / ``UNKNOWN`` header names nobody: the balancer is the client."""
    server = FakeServer()
    proxy = SimpleNamespace(src_addr=None, src_port=None)
    assert await GuardedHandler(Inner(), access()).handle_PROXY(server, session(), None, proxy)
    assert server.asked == ["10.0.0.1"]


async def test_other_hooks_are_the_delivery_handlers() -> None:
    inner = Inner()
    hooks = GuardedHandler(inner, access())
    assert await hooks.handle_RCPT(FakeServer(), session(), None, "a@b.example", []) == (
        "250 2.1.5 Recipient OK"
    )
    assert await hooks.handle_DATA(FakeServer(), session(), None) == "250 2.0.0 Queued"
    assert (await hooks.handle_exception(ValueError("x"))).startswith("451 4.3.0")
    assert inner.calls == ["RCPT", "DATA", "ValueError"]
    assert not any(name.startswith("auth_") for name in dir(hooks)), "no AUTH mechanism here"


def test_guard_from_settings_shares_the_sender_policy() -> None:
    settings = settings_for(relay_allowed_sender_domains="example.com")
    built = Guard.from_settings(settings)
    assert built.senders is built.access.senders
    assert built.authenticator is None
    assert built.tls_context is None
    assert built.session_options(implicit_tls=False)["proxy_protocol_timeout"] is None
