"""The client matrix with AUTH and TLS: real clients through a relay that requires both.

The relay (``python -m relay``) has one AUTH user (``RELAY_AUTH_USER``/``_PASSWORD``), a
trustme certificate (``RELAY_TLS_CERT``/``_KEY``) and an SMTPS listener; no network may
send without AUTH (loopback included) and AUTH is only offered over TLS, so a delivered
message proves the client did STARTTLS (or implicit TLS) and authenticated. Each client
verifies the certificate against the test CA. Postfix takes part as a whole MTA: SASL
from a ``postmap``-ed map, ``smtp_tls_security_level = secure`` (certificate verified
for the relayhost's name); once AUTH is advertised
it sends ``MAIL FROM:<...> AUTH=<>``, which the relay accepts (RFC 4954 §5).
"""

from __future__ import annotations

import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.clients.drivers import MSMTPRC_SECURE, SECURE, Secure, SecureClient
from tests.clients.postfix import SECURE_MAIN_CF, PostfixSecurity, PrivatePostfix
from tests.clients.scenarios import KINDS, check, scenario
from tests.interop import Served, serving_process
from tests.paths import REPO
from tests.security_support import Certs, Conversation

pytestmark = pytest.mark.e2e
USER = "matrix-app"
PASSWORD = "Matrix-Pa55-w0rd"


@pytest.fixture(scope="module")
def ca(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    certs.ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def secured(certs: Certs) -> Iterator[Served]:
    """The relay; on teardown, its log must not contain the password."""
    env = {
        "RELAY_AUTH_USER": USER, "RELAY_AUTH_PASSWORD": PASSWORD,
        "RELAY_AUTH_FAILURE_DELAY": "0", "RELAY_TLS_CERT": str(certs.cert),
        "RELAY_TLS_KEY": str(certs.key), "RELAY_SMTPS_PORT": "0",
    }  # fmt: skip
    with serving_process(**env) as secured:
        yield secured
        assert not [line for line in secured.logs if PASSWORD in line], "password logged"


@pytest.fixture(scope="module")
def secure(secured: Served, ca: Path) -> Secure:
    return Secure(secured.port, secured.smtps_port(), ca, USER, PASSWORD)


@pytest.fixture(scope="module")
def postfix(secured: Served, ca: Path) -> Iterator[PrivatePostfix]:
    instance = PrivatePostfix(secured.port, PostfixSecurity(ca, USER, PASSWORD))
    try:
        yield instance.start()
    finally:
        instance.stop()


@pytest.mark.parametrize("client", SECURE, ids=lambda c: c.name)
def test_client_with_auth_and_tls(
    secured: Served, secure: Secure, client: SecureClient, tmp_path: Path
) -> None:
    s = scenario("plain", f"{client.name} secure")
    client.send(s, secure, tmp_path)
    check(s, secured.payloads(s.subject))


@pytest.mark.parametrize("kind", KINDS)
def test_postfix_relayhost_with_sasl_and_tls(
    secured: Served, postfix: PrivatePostfix, kind: str
) -> None:
    s = scenario(kind, "postfix secure")
    postfix.sendmail(s.mime(), s.sender)
    payloads = secured.payloads(s.subject, timeout=20)
    assert payloads, f"Postfix did not deliver to the relay; its log:\n{postfix.log()[-3000:]}"
    check(s, payloads)
    assert "Verified TLS connection established to localhost[127.0.0.1]" in postfix.log()


def test_a_client_without_auth_is_refused(secured: Served) -> None:
    """The control: the same relay refuses a client that skips AUTH (so AUTH above was used)."""
    with Conversation(secured.port) as smtp:
        assert smtp.reply().startswith("220")
        assert smtp.command("EHLO client.test").startswith("250")
        assert smtp.command("MAIL FROM:<app@example.com>") == "530 5.7.0 Authentication required"


def test_a_client_distrusting_the_certificate_gives_up_cleanly(secured: Served) -> None:
    """The clients above verify the certificate; a failed handshake is logged, not a bug.

    (The module's relay fixture fails on teardown if the relay logged an internal error.)
    """
    context = ssl.create_default_context()
    trustme.CA().configure_trust(context)  # some other CA
    smtp = smtplib.SMTP("127.0.0.1", secured.port, timeout=10)
    with smtp, pytest.raises(ssl.SSLCertVerificationError):
        smtp.starttls(context=context)
    assert wait_for(lambda: any("starttls_failed" in line for line in secured.logs))


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_readme_shows_the_tested_settings() -> None:
    """The README's AUTH/TLS snippets are the settings this module runs, names aside."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    msmtprc = MSMTPRC_SECURE.format(
        port=2525, ca="/etc/ssl/certs/relay-ca.pem", user="app", password="the-password"
    )
    assert msmtprc.replace("127.0.0.1", "relay.example.com") in readme
    for line in SECURE_MAIN_CF.splitlines():
        if not line.startswith(("smtp_tls_loglevel", "smtp_send_dummy_mail_auth")):
            setting = line.format(conf="/etc/postfix", ca="/etc/ssl/certs/relay-ca.pem")
            assert f"\n{setting}\n" in readme, setting
