"""Issue 13 (security hardening) through the real SMTP path: each item's exact reply."""

from __future__ import annotations

import base64
import smtplib
import statistics
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from tests.harness import RunningRelay, running_relay, settings_for
from tests.rawsmtp import RawSMTP
from tests.security_support import (
    PASSWORD,
    Certs,
    Conversation,
    message,
    plain_token,
    write_users,
)
from tests.standin import StandIn

pytestmark = pytest.mark.e2e


def _tls_settings(standin: StandIn, certs: Certs, tmp_path: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "relay_tls_cert": certs.cert,
        "relay_tls_key": certs.key,
        "relay_auth_file": write_users(tmp_path / "users"),
        "relay_auth_failure_delay": 0.0,
        "relay_smtps_port": 0,
    }
    return settings_for(standin, **(values | overrides))


@pytest.fixture
def tls_relay(standin: StandIn, certs: Certs, tmp_path: Path) -> Iterator[RunningRelay]:
    with running_relay(_tls_settings(standin, certs, tmp_path)) as running:
        yield running


def test_second_starttls_inside_tls_gets_554_and_the_session_goes_on(
    tls_relay: RunningRelay, standin: StandIn, certs: Certs
) -> None:
    with smtplib.SMTP("127.0.0.1", tls_relay.port, timeout=10) as client:
        client.starttls(context=certs.client_context())
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS") == (554, b"5.5.1 TLS already active")
        client.login("app", PASSWORD)
        client.send_message(message())
    assert len(standin.requests) == 1


def test_starttls_on_the_smtps_port_gets_554(
    tls_relay: RunningRelay, standin: StandIn, certs: Certs
) -> None:
    assert tls_relay.server is not None
    assert tls_relay.server.smtps_port is not None
    with smtplib.SMTP_SSL(
        "127.0.0.1", tls_relay.server.smtps_port, context=certs.client_context(), timeout=10
    ) as client:
        client.ehlo("client.test")
        assert client.docmd("STARTTLS") == (554, b"5.5.1 TLS already active")
        assert client.noop()[0] == 250


KELVIN_KIOSK = "\u212aiosk.example"  # "Kiosk.example" with U+212A KELVIN SIGN for the K


def test_a_kelvin_sign_look_alike_is_not_the_allowed_sender_domain(standin: StandIn) -> None:
    settings = settings_for(standin, relay_allowed_sender_domains="kiosk.example")
    with running_relay(settings) as relay, RawSMTP(relay.port) as smtp:
        smtp.cmd("EHLO client.test")
        assert smtp.cmd(f"MAIL FROM:<ceo@{KELVIN_KIOSK}> SMTPUTF8") == (
            "550 5.7.1 Sender address not allowed"
        )
        assert smtp.cmd("RSET").startswith("250 ")
        assert smtp.cmd("MAIL FROM:<ceo@KIOSK.Example>").startswith("250 ")
    assert standin.requests == []


def _encoded(value: str) -> str:
    """One RFC 2047 word (``email.header.Header`` would fold at U+2028 and hide it)."""
    return f"=?utf-8?b?{base64.b64encode(value.encode()).decode()}?="


def _hostile_message(*extra: str) -> bytes:
    """Subject and names with separators and bidi controls (RFC 2047), hostile file names."""
    msg = EmailMessage()
    msg.set_content("body")
    for name in ("..", "x/..", "a" * 5000 + ".pdf", "\u00fc" * 300 + ".txt"):
        msg.add_attachment(b"data", maintype="application", subtype="octet-stream", filename=name)
    hostile_subject = "Invoice\u2028Bcc: victim@example.org\u2029paid\u0085now \u202etxt.exe"
    lines = [
        "From: " + _encoded("Bank\u202e \u2066Support\u2069") + " <app@example.com>",
        "To: " + _encoded("Alice\u2028Admin") + " <alice@example.net>",
        "Subject: " + _encoded(hostile_subject),
        *extra,
    ]
    return "\r\n".join(lines).encode() + b"\r\n" + msg.as_bytes(policy=SMTP)


def _tag_headers(tags: list[str]) -> list[str]:
    """``ahasend-tags`` headers (they accumulate) of at most 20 tags each, under 998 bytes."""
    return [f"ahasend-tags: {','.join(tags[i : i + 20])}" for i in range(0, len(tags), 20)]


def _send(relay: RunningRelay, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        client.sendmail("app@example.com", ["alice@example.net"], raw)


def test_separators_bidi_controls_and_hostile_attachment_names_are_cleaned(
    standin: StandIn,
) -> None:
    with running_relay(settings_for(standin)) as relay:
        _send(relay, _hostile_message("ahasend-tags: a,b"))
    (request,) = standin.requests
    body = request.json
    assert body["subject"] == "Invoice Bcc: victim@example.org paid now txt.exe"
    assert body["from"] == {"email": "app@example.com", "name": "Bank Support"}
    assert body["to"] == [{"email": "alice@example.net", "name": "Alice Admin"}]
    names = [a["file_name"] for a in body["attachments"]]
    assert names[:2] == ["attachment", "attachment"]
    assert names[2] == "a" * 251 + ".pdf"
    assert names[3].endswith(".txt")
    assert len(names[3].encode()) <= 255
    assert names[3] == "ü" * 125 + ".txt"
    assert body["tags"] == ["a", "b"]


@pytest.mark.parametrize(
    ("tags", "detail"),
    [
        (",".join(f"t{i}" for i in range(20_000)), "20000 tags, at most 50 allowed"),
        (",".join(f"t{i}" for i in range(51)), "51 tags, at most 50 allowed"),
        ("ok," + "x" * 101, "a tag of 101 characters, at most 100 allowed"),
    ],
)
def test_tags_beyond_the_limit_are_refused_with_554_naming_the_header(
    standin: StandIn, tags: str, detail: str
) -> None:
    with (
        running_relay(settings_for(standin)) as relay,
        pytest.raises(smtplib.SMTPDataError) as caught,
    ):
        _send(relay, _hostile_message(*_tag_headers(tags.split(","))))
    assert caught.value.smtp_code == 554
    assert caught.value.smtp_error.decode() == f"5.6.0 Invalid header: ahasend-tags: {detail}"
    assert standin.requests == []


def test_fifty_tags_of_a_hundred_characters_pass(standin: StandIn) -> None:
    tags = [f"{i:02d}" + "x" * 98 for i in range(50)]
    with running_relay(settings_for(standin)) as relay:
        _send(relay, _hostile_message(*_tag_headers(tags)))
    assert standin.requests[0].json["tags"] == tags


# -- user names by timing (item 3) ------------------------------------------------------

TIMING_SAMPLES = 41


def _auth_times(port: int, logins: list[tuple[str, str]]) -> list[float]:
    """Round-trip seconds of each AUTH PLAIN (all failing), interleaved by the caller."""
    times = []
    for login, password in logins:
        with RawSMTP(port) as smtp:
            smtp.cmd("EHLO client.test")
            started = time.perf_counter()
            reply = smtp.cmd(f"AUTH PLAIN {plain_token(login, password)}")
            times.append(time.perf_counter() - started)
            assert reply == "535 5.7.8 Authentication credentials invalid"
    return times


def _assert_no_user_oracle(port: int, known: str, samples: int) -> None:
    logins = [(known, "wrong"), ("nobody", "wrong")] * samples
    times = _auth_times(port, logins)
    known_median = statistics.median(times[0::2])
    unknown_median = statistics.median(times[1::2])
    ratio = known_median / unknown_median
    assert 0.8 <= ratio <= 1.25, (
        f"known {known_median * 1e3:.1f} ms, unknown {unknown_median * 1e3:.1f} ms"
    )


@pytest.mark.parametrize("rounds", [4, 9])
def test_a_wrong_password_and_an_unknown_user_take_the_same_time(
    standin: StandIn, tmp_path: Path, rounds: int
) -> None:
    """bcrypt users of a chosen cost: the dummy check has the same cost (medians within 20 %)."""
    users = tmp_path / "users"
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=rounds)).decode()
    users.write_text(f"app:{hashed}\n")
    settings = settings_for(
        standin, relay_auth_file=users, relay_auth_allow_plaintext=True,
        relay_auth_failure_delay=0.0, relay_peer_connection_rate=100_000,
    )  # fmt: skip
    with running_relay(settings) as relay:
        _assert_no_user_oracle(relay.port, "app", TIMING_SAMPLES)


def test_the_single_auth_user_is_hashed_like_an_unknown_user(standin: StandIn) -> None:
    settings = settings_for(
        standin, relay_auth_user="app", relay_auth_password="secret",
        relay_auth_allow_plaintext=True, relay_auth_failure_delay=0.0,
        relay_peer_connection_rate=100_000,
    )  # fmt: skip
    with running_relay(settings) as relay:
        _assert_no_user_oracle(relay.port, "app", 11)  # argon2id: ~50 ms each, idle


# -- junk commands (item 1) -------------------------------------------------------------


def test_junk_commands_past_the_limit_get_421_and_close(standin: StandIn) -> None:
    settings = settings_for(standin, relay_junk_command_limit=6)
    with running_relay(settings) as relay, RawSMTP(relay.port) as smtp:
        smtp.cmd("EHLO client.test")
        replies = [smtp.cmd(c) for c in ("NOOP", "RSET", "HELP", "VRFY app", "EXPN x", "NOOP")]
        assert [r[:3] for r in replies] == ["250", "250", "250", "252", "502", "250"]
        assert smtp.cmd("NOOP") == (
            "421 4.7.0 Too many commands without a transaction, closing connection"
        )
        assert smtp.closed()


def test_commands_inside_a_transaction_are_not_junk(standin: StandIn) -> None:
    settings = settings_for(standin, relay_junk_command_limit=2)
    with running_relay(settings) as relay, RawSMTP(relay.port) as smtp:
        smtp.cmd("EHLO client.test")
        assert smtp.cmd("MAIL FROM:<app@example.com>").startswith("250")
        assert [smtp.cmd("NOOP")[:3] for _ in range(10)] == ["250"] * 10
        assert smtp.cmd("RCPT TO:<alice@example.net>").startswith("250")
        assert smtp.cmd("DATA").startswith("354")
        smtp.send(b"Subject: hi\r\n\r\nbody\r\n")
        assert smtp.cmd(".").startswith("250 2.0.0 Queued")
    assert len(standin.requests) == 1


# -- connection exhaustion (item 1) -----------------------------------------------------


def test_outsiders_holding_the_cap_leave_an_allowed_client_its_220(standin: StandIn) -> None:
    """AUTH on, 12 slots: 127.0.0.2 (outside) holds all it may; 127.0.0.1 still delivers."""
    settings = settings_for(
        standin, relay_max_connections=12, relay_allowed_networks="127.0.0.1/32",
        relay_auth_user="app", relay_auth_password=PASSWORD, relay_auth_allow_plaintext=True,
        relay_max_connections_per_client=0, relay_peer_connection_rate=0,
    )  # fmt: skip
    with running_relay(settings) as relay:
        held = [Conversation(relay.port, source="127.0.0.2") for _ in range(12)]
        replies = [smtp.reply() for smtp in held]
        assert replies.count("421 4.7.0 Too many connections, try again later") == 1
        assert sum(r.startswith("220 ") for r in replies) == 11
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.send_message(message())
        for smtp in held:
            smtp.close()
    assert len(standin.requests) == 1


def test_one_address_holds_at_most_its_per_client_cap(standin: StandIn) -> None:
    settings = settings_for(
        standin, relay_allowed_networks="127.0.0.1/32", relay_auth_user="app",
        relay_auth_password=PASSWORD, relay_auth_allow_plaintext=True,
        relay_max_connections_per_client=3, relay_peer_connection_rate=0,
    )  # fmt: skip
    with running_relay(settings) as relay:
        held = [Conversation(relay.port, source="127.0.0.2") for _ in range(3)]
        assert all(smtp.reply().startswith("220 ") for smtp in held)
        with Conversation(relay.port, source="127.0.0.2") as extra:
            assert extra.reply() == (
                "421 4.7.0 Too many concurrent connections from your address, try again later"
            )
            assert extra.closed_by_server()
        with Conversation(relay.port, source="127.0.0.3") as other:
            assert other.reply().startswith("220 ")
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
            client.send_message(message())
        for smtp in held:
            smtp.close()
    assert len(standin.requests) == 1
