"""An ``https://`` egress proxy (TLS to the proxy itself), built from real parts.

HAProxy terminates TLS in TCP mode with a test CA's certificate in front of a tinyproxy
that wants ``alice``'s password (``tests.proxy_support.TlsFront``), so the proxy URL is
``https://alice:PASSWORD@127.0.0.1:PORT``. The relay trusts the test CA through
``SSL_CERT_FILE``, read by ``relay.config`` like the proxy variables, which verifies the
API's certificate and the proxy's alike, with either transport:

- an https API (AhaSend's case) is tunnelled with ``CONNECT`` inside the TLS to the proxy
  (TLS in TLS), an http one forwarded by absolute URI over it; tinyproxy's log counts
  what crossed it; the API never sees the proxy's credentials;
- without the CA the proxy's certificate is not trusted: ``451 4.4.1``, nothing reaches
  tinyproxy, and the log says why;
- a real ``serve`` process (uvloop, debug logs) through it never logs the password;
- the README's advice for a private proxy CA, one bundle with certifi's CAs, crosses the
  proxy and still trusts every root the relay trusts without ``SSL_CERT_FILE`` (certifi's:
  the public CAs a public API's certificate chains to);
- an ``SSL_CERT_FILE`` that cannot be used stops ``check-config`` and ``serve`` with 78.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest
import structlog

from relay.config import load_settings
from relay.errors import ConfigError
from tests.harness import running_relay, settings_for
from tests.ops_support import relay_process, run_cli, standin_env
from tests.proxy_support import TinyProxy, TlsFront
from tests.security_support import Certs
from tests.standin import StandIn
from tests.test_proxy import TRANSPORTS, TlsStandIn, send

pytestmark = pytest.mark.e2e
PASSWORD = "https-Pr0xy-S3cret-4d1e"
UNREACHABLE = (451, "4.4.1 Upstream API unreachable, try again later")


@pytest.fixture(scope="module")
def ca_file(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test CA's certificate (it signed the proxy's and the https stand-in's)."""
    path = tmp_path_factory.mktemp("trust") / "ca.pem"
    certs.ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def front(tmp_path: Path, certs: Certs) -> Iterator[TlsFront]:
    """The https proxy: HAProxy (TLS, the test CA's certificate) in front of tinyproxy."""
    with (
        TinyProxy(tmp_path, user="alice", password=PASSWORD) as proxy,
        TlsFront(tmp_path, proxy, certs.cert, certs.key) as tls,
    ):
        yield tls


@pytest.fixture(params=["https", "http"])
def api(request: pytest.FixtureRequest, certs: Certs) -> Iterator[StandIn]:
    """The stand-in API, over TLS (AhaSend's case: CONNECT) or plain (absolute URI)."""
    with TlsStandIn(certs) if request.param == "https" else StandIn() as server:
        yield server


def crossed(front: TlsFront, method: str, count: int) -> list[tuple[str, str]]:
    """The ``method`` requests tinyproxy logged, once there are ``count`` (or after 5 s)."""
    deadline = time.monotonic() + 5.0
    while True:
        found = [r for r in front.proxy.requests() if r[0] == method]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_messages_cross_an_https_proxy(
    api: StandIn, front: TlsFront, ca_file: Path, transport: str
) -> None:
    # tinyproxy closes a forwarded (http) connection after each request without saying so:
    # the in-transaction retry covers a reuse that meets the close, as in test_proxy.py.
    settings = settings_for(api, ahasend_api_transport=transport, ahasend_api_proxy=front.url,
                            ssl_cert_file=ca_file, relay_retry_deadline=5.0)  # fmt: skip
    with running_relay(settings) as relay:
        replies = [send(relay.port, f"via https proxy {n}") for n in range(2)]
    assert [code for code, _ in replies] == [250, 250]
    assert len(api.accepted) == 2
    if api.base_url.startswith("https://"):  # tunnels (the start-up account read's too)
        assert set(front.proxy.requests()) == {("CONNECT", f"127.0.0.1:{api.port}")}
        assert all("via" not in r.headers for r in api.requests)  # TLS end to end
    else:
        path = f"/v2/accounts/{api.account_id}/messages/conversation"
        posts = crossed(front, "POST", len(api.requests))
        assert posts == [("POST", f"{api.base_url}{path}")] * len(api.requests)
        assert all("tinyproxy" in r.headers.get("via", "") for r in api.requests)
    assert all("proxy-authorization" not in r.headers for r in api.requests)


def test_a_private_ca_bundled_with_certifis_keeps_the_public_roots(
    api: StandIn, front: TlsFront, ca_file: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes() + ca_file.read_bytes())
    settings = settings_for(api, ahasend_api_proxy=front.url, ssl_cert_file=bundle,
                            relay_retry_deadline=5.0)  # fmt: skip
    public = load_settings(environ={"RELAY_DRY_RUN": "true"}).api_trust.get_ca_certs(True)
    private = ssl.PEM_cert_to_DER_cert(ca_file.read_text(encoding="ascii"))
    assert set(settings.api_trust.get_ca_certs(binary_form=True)) == {*public, private}
    assert len(public) > 100  # certifi's bundle, not an empty store
    with running_relay(settings) as relay:
        assert send(relay.port, "bundled")[0] == 250
    assert len(api.accepted) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_untrusted_proxy_certificate_is_an_unreachable_api(
    api: StandIn, front: TlsFront, transport: str
) -> None:
    """No SSL_CERT_FILE: the CAs of certifi's bundle, which did not sign the proxy's."""
    settings = settings_for(api, ahasend_api_transport=transport, ahasend_api_proxy=front.url)
    with structlog.testing.capture_logs() as logged, running_relay(settings) as relay:
        reply = send(relay.port, "untrusted proxy")
    assert reply == UNREACHABLE
    assert front.proxy.requests() == []
    assert api.requests == []
    [line] = [e for e in logged if e["event"] == "message"]
    assert "CERTIFICATE_VERIFY_FAILED" in line["error_detail"], line
    assert PASSWORD not in repr(logged)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_https_proxy_password_never_reaches_a_serve_process_logs(
    tmp_path: Path, certs: Certs, front: TlsFront, ca_file: Path, transport: str
) -> None:
    with TlsStandIn(certs) as api:
        tunnel = ("CONNECT", f"127.0.0.1:{api.port}")
        env = standin_env(api, HTTPS_PROXY=front.url, SSL_CERT_FILE=str(ca_file),
                          AHASEND_API_TRANSPORT=transport, RELAY_LOG_LEVEL="debug")  # fmt: skip
        with relay_process(tmp_path, **env) as relay:
            assert send(relay.port, "logged")[0] == 250
            assert relay.stop() == 0
        checked = run_cli("check-config", **env)
    assert set(front.proxy.requests()) == {tunnel}
    log = relay.log.read_text()
    assert PASSWORD not in log
    events = [json.loads(line) for line in log.splitlines()]
    assert [e for e in events if e["level"] not in ("debug", "info")] == []  # TLS in TLS too
    [chosen] = [e for e in events if e["event"] == "api_proxy"]
    assert (chosen["proxy"], chosen["source"]) == (f"https://alice:****@127.0.0.1:{front.port}",
                                                   "HTTPS_PROXY")  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    lines = checked.stdout.splitlines()
    assert f"API proxy: https://alice:****@127.0.0.1:{front.port} (from HTTPS_PROXY)" in lines
    assert f"SSL_CERT_FILE={ca_file}" in lines
    assert PASSWORD not in checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("variable", "problem"),
    [
        ("SSL_CERT_FILE", "cannot read {path}: No such file or directory"),
        ("SSL_CERT_DIR", "{path} is not a directory"),
    ],
)
def test_an_unusable_trust_setting_is_a_config_error(
    tmp_path: Path, variable: str, problem: str
) -> None:
    path = tmp_path / "absent"
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RELAY_DRY_RUN": "true", variable: str(path)})
    assert str(caught.value) == f"{variable}: {problem.format(path=path)}"


def test_a_file_without_a_certificate_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    path.write_text("not a certificate\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RELAY_DRY_RUN": "true", "SSL_CERT_FILE": str(path)})
    assert str(caught.value) == f"SSL_CERT_FILE: {path} holds no PEM certificate"


def test_the_trust_settings_are_read_from_the_env_file(tmp_path: Path, ca_file: Path) -> None:
    env_file = tmp_path / "relay.env"
    env_file.write_text(f"SSL_CERT_FILE={ca_file}\nSSL_CERT_DIR={tmp_path}\n", encoding="utf-8")
    settings = load_settings(env_file, environ={"RELAY_DRY_RUN": "true"})
    assert (settings.ssl_cert_file, settings.ssl_cert_dir) == (ca_file, tmp_path)
    unset = load_settings(env_file, environ={"RELAY_DRY_RUN": "true", "SSL_CERT_FILE": ""})
    assert (unset.ssl_cert_file, unset.ssl_cert_dir) == (ca_file, tmp_path)  # empty: unset
    env_file.write_text("SSL_CERT_FILE=\n", encoding="utf-8")
    assert load_settings(env_file, environ={"RELAY_DRY_RUN": "true"}).ssl_cert_file is None
