"""Egress proxies: AHASEND_API_PROXY and HTTPS_PROXY/HTTP_PROXY/ALL_PROXY/NO_PROXY.

The rules (``relay.delivery.proxy.choose_proxy``) are unit-tested on their own; the path
is tested end to end through a real, private tinyproxy (``tests.proxy_support``) with each
transport: the relay delivers to the stand-in across the proxy (counted in tinyproxy's log
and by the ``Via`` header the stand-in received), goes direct for a NO_PROXY host (the proxy
sees nothing), authenticates with ``user:password@`` (never logged, never printed by
``check-config``), and answers a transient 4xx, or spools, when the proxy is unreachable.

The stand-in is plain HTTP, so both clients forward by absolute URI (``POST http://...``)
rather than tunnel with ``CONNECT`` (what an https base URL such as AhaSend's gets).
"""

from __future__ import annotations

import asyncio
import base64
import json
import smtplib
import ssl
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from relay.config import load_settings
from relay.delivery.api import AhaSendClient
from relay.delivery.proxy import bypasses_proxy, choose_proxy, mask_proxy_text, parse_proxy_url
from relay.delivery.transport import build_transport
from relay.errors import ConfigError
from tests.harness import free_port, running_relay, settings_for
from tests.interop import serving_process
from tests.ops_support import run_cli, standin_env
from tests.proxy_support import TinyProxy
from tests.security_support import Certs
from tests.standin import StandIn

pytestmark = pytest.mark.e2e
TRANSPORTS = ["httpx", "aiohttp"]
PASSWORD = "pr0xy-S3cret-9f2c"
QUEUED_FOR_DELIVERY = "2.0.0 Queued for delivery"
API = "https://api.ahasend.com"


# -- the rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "environ", "expected"),
    [
        pytest.param(API, {"HTTPS_PROXY": "http://p:1"}, "http://p:1", id="https-uses-HTTPS_PROXY"),
        pytest.param(API, {"HTTP_PROXY": "http://p:1"}, None, id="https-ignores-HTTP_PROXY"),
        pytest.param("http://api.test", {"HTTP_PROXY": "http://p:1"}, "http://p:1", id="http"),
        pytest.param(API, {"ALL_PROXY": "http://a:1"}, "http://a:1", id="all-as-fallback"),
        pytest.param(API, {"ALL_PROXY": "http://a:1", "HTTPS_PROXY": "http://p:1"}, "http://p:1",
                     id="scheme-wins-over-all"),
        pytest.param(API, {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:1"},
                     "http://low:1", id="lowercase-wins"),
        pytest.param(API, {"https_proxy": "", "HTTPS_PROXY": "http://up:1"}, "http://up:1",
                     id="empty-is-unset"),
        pytest.param(API, {"HTTPS_PROXY": "p.test:3128"}, "http://p.test:3128", id="no-scheme"),
        pytest.param(API, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "ahasend.com"}, None,
                     id="no-proxy-domain"),
        pytest.param(API, {"HTTPS_PROXY": "http://p:1", "no_proxy": "x.test, *"}, None,
                     id="no-proxy-star"),
        pytest.param(API, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "hasend.com"}, "http://p:1",
                     id="no-proxy-is-not-a-substring"),
    ],
)  # fmt: skip
def test_the_environment_proxy_for_the_base_url(
    base_url: str, environ: dict[str, str], expected: str | None
) -> None:
    proxy = choose_proxy(base_url, None, environ)
    assert (proxy.masked if proxy else None) == expected


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypassed"),
    [
        ("api.ahasend.com", 443, ".ahasend.com", True),
        ("api.ahasend.com", 443, "*.ahasend.com", True),
        ("api.ahasend.com", 443, "api.ahasend.com:443", True),
        ("api.ahasend.com", 443, "api.ahasend.com:8443", False),
        ("127.0.0.1", 80, "127.0.0.0/8", True),
        ("10.1.2.3", 80, "127.0.0.1,localhost", False),
        ("::1", 80, "::1", True),
        ("::1", 8080, "[::1]:8080", True),
        ("api.ahasend.com", 443, "", False),
    ],
)
def test_no_proxy_entries(host: str, port: int, no_proxy: str, bypassed: bool) -> None:
    assert bypasses_proxy(host, port, no_proxy) is bypassed


def test_ahasend_api_proxy_overrides_the_environment_and_no_proxy() -> None:
    environ = {"HTTPS_PROXY": "http://env:1", "NO_PROXY": "*"}
    proxy = choose_proxy(API, "http://mine:3128", environ)
    assert proxy is not None
    assert (proxy.masked, proxy.source) == ("http://mine:3128", "AHASEND_API_PROXY")


@pytest.mark.parametrize("value", ["", "none", "NONE", " none "])
def test_ahasend_api_proxy_empty_or_none_is_direct_whatever_the_environment(value: str) -> None:
    assert choose_proxy(API, value, {"HTTPS_PROXY": "http://env:1", "ALL_PROXY": "x:1"}) is None


def test_credentials_become_auth_and_are_masked() -> None:
    proxy = parse_proxy_url(f"http://alice:{PASSWORD.replace('9', '%39')}@p.test:3128", "X")
    assert proxy.password == PASSWORD
    assert proxy.masked == "http://alice:****@p.test:3128"
    assert PASSWORD not in f"{proxy} {proxy!r}"
    httpx_proxy = proxy.to_httpx()
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert str(httpx_proxy.url) == "http://p.test:3128"
    assert httpx_proxy.headers["Proxy-Authorization"] == f"Basic {basic}"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (f"http://alice:{PASSWORD}@p.test:3128", "http://alice:****@p.test:3128"),
        (f"alice:{PASSWORD}@p.test:3128", "alice:****@p.test:3128"),
        (f"http://alice:pa/ss@w{PASSWORD}@p.test:1", "http://alice:****@p.test:1"),
        ("http://p.test:3128", "http://p.test:3128"),
        ("http://alice@p.test:3128", "http://alice@p.test:3128"),
        ("none", "none"),
        (f"http://u:a://{PASSWORD}@p.test:1", "http://u:****@p.test:1"),
        (f"u:a://{PASSWORD}@p.test:1", "u:****@p.test:1"),
    ],
)
def test_shown_proxy_values_hide_the_password(value: str, shown: str) -> None:
    assert mask_proxy_text(value) == shown


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"AHASEND_API_PROXY": f"socks5://u:{PASSWORD}@p:1080"},
         "AHASEND_API_PROXY: socks5://u:****@p:1080 is not a usable proxy URL: the scheme must "
         "be http or https, not 'socks5'"),
        ({"https_proxy": f"http://u:{PASSWORD}@p:99999"},
         "HTTPS_PROXY: http://u:****@p:99999 is not a usable proxy URL: its port is not a "
         "number from 0 to 65535 (AHASEND_API_PROXY, a URL or none, overrides it)"),
        ({"AHASEND_API_PROXY": f"http://u:pa/ss@{PASSWORD}@p:1"},
         "AHASEND_API_PROXY: http://u:****@p:1 is not a usable proxy URL: percent-encode "
         "/ ? # @ in the user name and password (%2F %3F %23 %40)"),
        ({"ALL_PROXY": "http://p:1/path"},
         "ALL_PROXY: http://p:1/path is not a usable proxy URL: a proxy URL has no path "
         "(AHASEND_API_PROXY, a URL or none, overrides it)"),
        ({"ALL_PROXY": "socks5://p:1080", "AHASEND_API_PROXY": "none"}, None),
    ],
)  # fmt: skip
def test_an_unusable_proxy_url_is_a_config_error_without_the_password(
    environ: dict[str, str], message: str | None
) -> None:
    if message is None:  # overridden: the environment's proxy is not even read
        assert load_settings(environ={"RELAY_DRY_RUN": "true"} | environ).api_proxy is None
        return
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RELAY_DRY_RUN": "true"} | environ)
    assert str(caught.value) == message


def test_load_settings_reads_the_proxy_variables_from_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "relay.env"
    env_file.write_text("HTTPS_PROXY=http://file:3128\nNO_PROXY=other.test\n", encoding="utf-8")
    settings = load_settings(env_file, environ={"RELAY_DRY_RUN": "true"})
    assert settings.api_proxy is not None
    assert settings.api_proxy.masked == "http://file:3128"
    over = load_settings(env_file, environ={"RELAY_DRY_RUN": "true", "https_proxy": "env:1"})
    assert over.api_proxy is not None
    assert over.api_proxy.masked == "http://env:1"


# -- through a real proxy ----------------------------------------------------------------


def message(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.com"
    msg["To"] = "ann@example.net"
    msg["Subject"] = subject
    msg.set_content(f"Body of {subject}.\n")
    return msg


def send(port: int, subject: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail("app@example.com")[0] == 250
        assert client.rcpt("ann@example.net")[0] == 250
        code, text = client.data(message(subject).as_bytes())
        return code, text.decode()


def posts(proxy: TinyProxy, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
    """The POSTs tinyproxy logged, once there are ``count`` (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in proxy.requests() if r[0] == "POST"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[TinyProxy]:
    with TinyProxy(tmp_path) as server:
        yield server


@pytest.fixture
def auth_proxy(tmp_path: Path) -> Iterator[TinyProxy]:
    with TinyProxy(tmp_path, user="alice", password=PASSWORD) as server:
        yield server


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("variable", ["ahasend_api_proxy", "http_proxy", "all_proxy"])
def test_messages_cross_the_proxy(
    standin: StandIn, proxy: TinyProxy, transport: str, variable: str
) -> None:
    # tinyproxy closes the client connection after each forwarded request without saying
    # so (no "Connection: close"): a client may reuse it just as it closes and see
    # "Server disconnected" before sending anything. The relay's in-transaction retry
    # (RELAY_RETRY_DEADLINE, 60 s by default) covers that, as it would in production.
    settings = settings_for(standin, ahasend_api_transport=transport, relay_retry_deadline=5.0,
                            **{variable: proxy.url})  # fmt: skip
    with running_relay(settings) as relay:
        replies = [send(relay.port, f"via proxy {n}") for n in range(3)]
    assert [code for code, _ in replies] == [250, 250, 250]
    path = f"/v2/accounts/{standin.account_id}/messages/conversation"
    assert len(standin.accepted) == 3
    assert posts(proxy, len(standin.requests)) == [("POST", f"{standin.base_url}{path}")] * len(
        standin.requests
    )
    assert all("tinyproxy" in r.headers.get("via", "") for r in standin.requests)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_proxy_host_goes_direct(standin: StandIn, proxy: TinyProxy, transport: str) -> None:
    settings = settings_for(
        standin, ahasend_api_transport=transport, http_proxy=proxy.url, no_proxy="127.0.0.1"
    )
    with running_relay(settings) as relay:
        assert send(relay.port, "direct")[0] == 250
    assert len(standin.requests) == 1
    assert "via" not in standin.requests[0].headers
    assert proxy.requests() == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_proxy_credentials_are_sent(
    standin: StandIn, auth_proxy: TinyProxy, transport: str
) -> None:
    settings = settings_for(
        standin, ahasend_api_transport=transport, ahasend_api_proxy=auth_proxy.url
    )
    with running_relay(settings) as relay:
        assert send(relay.port, "with credentials")[0] == 250
    assert len(posts(auth_proxy, 1)) == 1
    assert len(standin.requests) == 1
    # The proxy consumed the credentials: they did not travel on to the API.
    assert "proxy-authorization" not in standin.requests[0].headers


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refused_proxy_credentials_are_a_4xx(
    standin: StandIn, auth_proxy: TinyProxy, transport: str
) -> None:
    wrong = auth_proxy.url.replace(PASSWORD, "wrong")
    settings = settings_for(standin, ahasend_api_transport=transport, ahasend_api_proxy=wrong)
    with running_relay(settings) as relay:
        code, text = send(relay.port, "wrong credentials")
    # tinyproxy answers 407 and closes without reading the request body: the client reads
    # the 407 (RelayMisconfigured) or, when the close resets the connection first, a
    # failed read (unreachable). Either way a transient 451 and nothing reached the API.
    assert (code, text) in {
        (451, "4.3.5 Relay misconfigured, try again later"),
        (451, "4.4.1 Upstream API unreachable, try again later"),
    }
    assert standin.requests == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unreachable_proxy_is_a_transient_4xx(standin: StandIn, transport: str) -> None:
    settings = settings_for(
        standin,
        ahasend_api_transport=transport,
        ahasend_api_proxy=f"http://127.0.0.1:{free_port()}",
    )
    with running_relay(settings) as relay:
        code, text = send(relay.port, "proxy down")
    assert (code, text) == (451, "4.4.1 Upstream API unreachable, try again later")
    assert standin.requests == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unreachable_proxy_with_a_spool_queues_then_delivers_when_it_is_back(
    standin: StandIn, tmp_path: Path, transport: str
) -> None:
    proxy = TinyProxy(tmp_path)  # its port is chosen, the proxy not started yet
    settings = settings_for(
        standin, ahasend_api_transport=transport, ahasend_api_proxy=proxy.url,
        relay_spool_dir=tmp_path / "spool", relay_spool_retry_min=0.2, relay_spool_retry_max=0.5,
    )  # fmt: skip
    with running_relay(settings) as relay:
        code, text = send(relay.port, "spooled")
        assert (code, text) == (250, f"{QUEUED_FOR_DELIVERY}: spool id 1")
        with proxy:
            assert len(standin.wait_for(1, timeout=15)) == 1
            assert len(posts(proxy, 1)) >= 1


class TlsStandIn(StandIn):
    """The stand-in over TLS (a test CA's certificate for 127.0.0.1), like AhaSend's https."""

    def __init__(self, certs: Certs) -> None:
        super().__init__(validate=False)
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(certs.cert, certs.key)

    @property
    def base_url(self) -> str:
        return super().base_url.replace("http://", "https://")

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._context)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_https_api_is_tunnelled_with_connect_and_credentials(
    tmp_path: Path, certs: Certs, transport: str
) -> None:
    """What AhaSend's https API gets: one CONNECT to it, authenticated; TLS end to end, so
    the proxy adds nothing to the request (no Via) and the API sees no proxy credentials."""
    with TlsStandIn(certs) as api, TinyProxy(tmp_path, "alice", PASSWORD) as proxy:
        port = api.port
        chosen = choose_proxy(api.base_url, None, {"https_proxy": proxy.url})
        client = AhaSendClient(
            base_url=api.base_url, api_key=api.api_key, account_id=api.account_id,
            transport=build_transport(transport, 4, proxy=chosen, verify=certs.client_context()),
        )  # fmt: skip
        try:
            delivery = await client.send(b'{"subject": "tunnelled"}', "key-tls")
        finally:
            await client.aclose()
    assert delivery.status == 202
    assert proxy.requests() == [("CONNECT", f"127.0.0.1:{port}")]
    [request] = api.requests
    assert "via" not in request.headers
    assert "proxy-authorization" not in request.headers


# -- secrets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "variable", "source"),
    [("httpx", "AHASEND_API_PROXY", "AHASEND_API_PROXY"), ("aiohttp", "http_proxy", "HTTP_PROXY")],
)
def test_the_proxy_password_never_reaches_the_logs(
    tmp_path: Path, transport: str, variable: str, source: str
) -> None:
    """Debug logs of a real ``serve`` process, through the proxy and with it down; the
    proxy from AHASEND_API_PROXY, or from the process environment as a host sets it."""
    with TinyProxy(tmp_path, user="alice", password=PASSWORD) as proxy:
        env = {variable: proxy.url, "AHASEND_API_TRANSPORT": transport,
               "RELAY_LOG_LEVEL": "debug", "RELAY_RETRY_DEADLINE": "0"}  # fmt: skip
        with serving_process(**env) as served:
            assert send(served.port, "logged")[0] == 250
            assert len(served.standin.wait_for(1)) == 1
            assert len(posts(proxy, 1)) == 1
            proxy.stop()
            assert send(served.port, "proxy gone")[0] == 451
            time.sleep(0.3)
            logs = "".join(served.logs)
    assert PASSWORD not in logs
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(e.get("proxy", "").startswith("http://alice:****@127.0.0.1:") for e in events)
    assert any(e.get("source") == source for e in events)


def test_check_config_masks_the_proxy_password(standin: StandIn) -> None:
    url = f"http://alice:{PASSWORD}@proxy.test:3128"
    result = run_cli("check-config", **standin_env(standin, https_proxy=url, NO_PROXY="x.test"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "HTTPS_PROXY=http://alice:****@proxy.test:3128" in lines
    assert "NO_PROXY=x.test" in lines
    # The stand-in is http://: HTTPS_PROXY does not apply to it.
    assert "API proxy: none (direct)" in lines
    assert PASSWORD not in result.stdout + result.stderr

    explicit = run_cli("check-config", **standin_env(standin, AHASEND_API_PROXY=url))
    assert explicit.returncode == 0, explicit.stderr
    assert "AHASEND_API_PROXY=http://alice:****@proxy.test:3128" in explicit.stdout.splitlines()
    assert (
        "API proxy: http://alice:****@proxy.test:3128 (from AHASEND_API_PROXY)"
        in explicit.stdout.splitlines()
    )
    assert PASSWORD not in explicit.stdout + explicit.stderr


def test_check_config_online_goes_through_the_proxy(standin: StandIn, tmp_path: Path) -> None:
    with TinyProxy(tmp_path, user="alice", password=PASSWORD) as proxy:
        result = run_cli("check-config", "--online", **standin_env(standin, HTTP_PROXY=proxy.url))
        seen = proxy.requests()
    assert result.returncode == 0, result.stderr
    assert [method for method, _ in seen] == ["GET", "GET"]  # ping, then the account
    assert seen[0][1] == f"{standin.base_url}/v2/ping"
    assert PASSWORD not in result.stdout + result.stderr


def test_check_config_refuses_an_unusable_proxy_with_78_and_no_password(standin: StandIn) -> None:
    url = f"ftp://alice:{PASSWORD}@proxy.test:21"
    result = run_cli("check-config", **standin_env(standin, AHASEND_API_PROXY=url))
    assert result.returncode == 78
    assert "AHASEND_API_PROXY: ftp://alice:****@proxy.test:21 is not a usable proxy URL" in (
        result.stderr
    )
    assert PASSWORD not in result.stdout + result.stderr
