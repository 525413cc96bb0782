"""check-config, send-test, healthcheck, --help and --version, run as subprocesses."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay import __version__
from relay.cli.main import EX_CONFIG, EX_OK, _check_online, summary
from relay.config import Settings
from relay.delivery.api import AhaSendClient
from tests.harness import RunningRelay, running_relay, settings_for
from tests.ops_support import run_cli, standin_env
from tests.standin import Scripted, StandIn

pytestmark = pytest.mark.e2e
OTHER_ACCOUNT = "11111111-2222-4333-8444-555555555555"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def relay(standin: StandIn) -> Iterator[RunningRelay]:
    with running_relay(settings_for(standin, relay_metrics_port=0)) as running:
        yield running


# -- --version and --help --------------------------------------------------------------


def test_version() -> None:
    result = run_cli("--version")
    assert (result.returncode, result.stdout) == (0, f"ahasend-relay {__version__}\n")


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        ("serve", "--env-file"),
        ("check-config", "--online"),
        ("send-test", "--no-sandbox"),
        ("healthcheck", "--timeout"),
    ],
)
def test_every_command_has_help(command: str, mentions: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: ahasend-relay {command}")
    assert mentions in result.stdout


def test_top_level_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("serve", "check-config", "send-test", "healthcheck"):
        assert command in result.stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr


# -- check-config ------------------------------------------------------------------------


def test_check_config_prints_a_masked_summary(standin: StandIn) -> None:
    result = run_cli("check-config", **standin_env(standin, RELAY_PORT="2600"))
    assert result.returncode == EX_OK, result.stderr
    lines = result.stdout.splitlines()
    assert "AHASEND_API_KEY=[set]" in lines
    assert f"AHASEND_ACCOUNT_ID={standin.account_id}" in lines
    assert "RELAY_PORT=2600" in lines
    assert "RELAY_METRICS_PORT=" in lines
    assert lines[-1] == "configuration OK"
    assert standin.api_key not in result.stdout + result.stderr
    assert standin.probes == []  # offline: AhaSend was not called


def test_check_config_without_credentials_exits_78() -> None:
    result = run_cli("check-config")
    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    assert result.stderr == (
        "ahasend-relay: configuration error: AHASEND_API_KEY and AHASEND_ACCOUNT_ID must be "
        "set (or RELAY_DRY_RUN=true to run without)\n"
    )


def test_check_config_names_the_invalid_variable(standin: StandIn) -> None:
    result = run_cli("check-config", **standin_env(standin, RELAY_METRICS_PORT="metrics"))
    assert result.returncode == EX_CONFIG
    assert result.stderr.startswith("ahasend-relay: configuration error: RELAY_METRICS_PORT:")
    assert len(result.stderr.splitlines()) == 1


def test_check_config_reads_an_env_file(tmp_path: Path, standin: StandIn) -> None:
    env_file = tmp_path / "relay.env"
    env_file.write_text(
        "".join(f"{k}={v}\n" for k, v in standin_env(standin, RELAY_PORT="2601").items())
    )
    result = run_cli("check-config", "--env-file", str(env_file))
    assert result.returncode == EX_OK, result.stderr
    assert "RELAY_PORT=2601" in result.stdout.splitlines()
    missing = run_cli("check-config", "--env-file", str(env_file) + ".missing")
    assert missing.returncode == EX_CONFIG
    assert "is not a readable file" in missing.stderr


def test_check_config_online_proves_key_and_account(standin: StandIn) -> None:
    result = run_cli("check-config", "--online", **standin_env(standin))
    assert result.returncode == EX_OK, result.stderr
    assert "API key accepted (GET /v2/ping)" in result.stdout
    assert f"account {standin.account_id}" in result.stdout.splitlines()[-1]
    assert [p.path for p in standin.probes] == ["/v2/ping", f"/v2/accounts/{standin.account_id}"]
    assert all(p.method == "GET" for p in standin.probes)
    assert standin.requests == []  # nothing was sent


def test_check_config_online_with_a_wrong_key_exits_78(standin: StandIn) -> None:
    result = run_cli("check-config", "--online", **standin_env(standin, AHASEND_API_KEY="aha-sk-x"))
    assert result.returncode == EX_CONFIG
    assert "refused the API key (401" in result.stderr
    assert "aha-sk-x" not in result.stdout + result.stderr


def test_check_config_online_with_a_wrong_account_exits_78(standin: StandIn) -> None:
    env = standin_env(standin, AHASEND_ACCOUNT_ID=OTHER_ACCOUNT)
    result = run_cli("check-config", "--online", **env)
    assert result.returncode == EX_CONFIG
    assert f"does not know account {OTHER_ACCOUNT} for this key (404" in result.stderr


def test_check_config_online_unreachable_exits_69(standin: StandIn) -> None:
    env = standin_env(standin, AHASEND_API_BASE_URL=f"http://127.0.0.1:{closed_port()}")
    result = run_cli("check-config", "--online", **env)
    assert result.returncode == 69
    assert "UpstreamUnreachable" in result.stderr


def test_check_config_online_in_dry_run_needs_credentials() -> None:
    result = run_cli("check-config", "--online", RELAY_DRY_RUN="true")
    assert result.returncode == EX_CONFIG
    assert "--online needs AHASEND_API_KEY and AHASEND_ACCOUNT_ID" in result.stderr


async def test_online_check_with_a_key_lacking_accounts_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/ping":
            return httpx.Response(200, json={"message": "pong"})
        return httpx.Response(403, json={"message": "insufficient scope"})

    settings = Settings(ahasend_api_key="k", ahasend_account_id=OTHER_ACCOUNT)
    client = AhaSendClient(base_url="http://127.0.0.1:9", api_key="k", account_id=OTHER_ACCOUNT,
                           transport=httpx.MockTransport(answer))  # fmt: skip
    assert await _check_online(client, settings) == EX_OK
    assert "lacks the accounts:read scope" in capsys.readouterr().out


# -- send-test ---------------------------------------------------------------------------


def test_send_test_goes_through_the_running_relay(relay: RunningRelay, standin: StandIn) -> None:
    result = run_cli("send-test", "--to", "you@example.org", "--from", "me@example.com",
                     "--port", str(relay.port))  # fmt: skip
    assert result.returncode == EX_OK, result.stderr
    [request] = standin.requests
    assert result.stdout == f"250 2.0.0 Queued: {request.message_ids[0]}\n"
    assert request.json["to"] == [{"email": "you@example.org"}]
    assert request.json["from"]["email"] == "me@example.com"


def test_send_test_uses_relay_settings_for_the_address(
    relay: RunningRelay, standin: StandIn
) -> None:
    result = run_cli("send-test", "--to", "you@example.org",
                     RELAY_PORT=str(relay.port), RELAY_HOSTNAME="relay.example.com")  # fmt: skip
    assert result.returncode == EX_OK, result.stderr
    assert standin.requests[0].json["from"]["email"] == "postmaster@relay.example.com"


@pytest.mark.parametrize(("status", "code", "exit_status"), [(500, 451, 75), (422, 554, 1)])
def test_send_test_exits_non_zero_on_a_refusal(
    relay: RunningRelay, standin: StandIn, status: int, code: int, exit_status: int
) -> None:
    standin.script(Scripted(status))
    result = run_cli("send-test", "--to", "you@example.org", "--port", str(relay.port))
    assert result.returncode == exit_status
    assert result.stdout.startswith(f"{code} ")


def test_send_test_without_a_relay_exits_69() -> None:
    port = closed_port()
    result = run_cli("send-test", "--to", "you@example.org", "--port", str(port))
    assert result.returncode == 69
    assert result.stderr == (
        f"ahasend-relay: cannot send through 127.0.0.1:{port}: Connection refused\n"
    )


def test_send_test_requires_a_recipient() -> None:
    result = run_cli("send-test")
    assert result.returncode == 2
    assert "the following arguments are required: --to" in result.stderr


# -- healthcheck -------------------------------------------------------------------------


def test_healthcheck_passes_on_a_running_relay(relay: RunningRelay) -> None:
    assert relay.server is not None
    assert relay.server.admin is not None
    result = run_cli("healthcheck", RELAY_DRY_RUN="true", RELAY_PORT=str(relay.port),
                     RELAY_METRICS_PORT=str(relay.server.admin.port))  # fmt: skip
    assert result.returncode == EX_OK, result.stderr
    smtp_line, http_line = result.stdout.splitlines()
    assert smtp_line.startswith(f"smtp 127.0.0.1:{relay.port}: 220 ")
    assert http_line == f"http://127.0.0.1:{relay.server.admin.port}/healthz: 200"


def test_healthcheck_checks_smtp_alone_when_metrics_are_off(relay: RunningRelay) -> None:
    result = run_cli("healthcheck", RELAY_DRY_RUN="true", RELAY_PORT=str(relay.port))
    assert result.returncode == EX_OK
    assert len(result.stdout.splitlines()) == 1


def test_healthcheck_fails_without_a_relay() -> None:
    port = closed_port()
    result = run_cli("healthcheck", RELAY_DRY_RUN="true", RELAY_PORT=str(port))
    assert result.returncode == 1
    assert result.stderr == f"smtp 127.0.0.1:{port}: Connection refused\n"


def test_healthcheck_fails_when_healthz_is_down(relay: RunningRelay) -> None:
    port = closed_port()
    result = run_cli("healthcheck", RELAY_DRY_RUN="true", RELAY_PORT=str(relay.port),
                     RELAY_METRICS_PORT=str(port))  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"http://127.0.0.1:{port}/healthz: Connection refused"
    )


def test_healthcheck_with_invalid_settings_exits_78() -> None:
    result = run_cli("healthcheck", RELAY_PORT="smtp")
    assert result.returncode == EX_CONFIG
    assert "RELAY_PORT" in result.stderr


def test_serve_with_the_metrics_port_taken_exits_71() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--dry-run", "--port", "0", RELAY_METRICS_PORT=str(port),
                         RELAY_LOG_FORMAT="json")  # fmt: skip
    assert result.returncode == 71
    failed = json.loads(result.stderr.splitlines()[-1])  # in the log format, JSON here
    assert (failed["event"], failed["exit_status"]) == ("startup_failed", 71)
    assert failed["error"].startswith(f"cannot serve metrics on 127.0.0.1:{port}: ")


def test_summary_masks_secret_settings() -> None:
    shown = dict(summary(Settings(ahasend_api_key="aha-sk-abc", ahasend_account_id=OTHER_ACCOUNT)))
    assert shown["AHASEND_API_KEY"] == "[set]"
    assert shown["AHASEND_ACCOUNT_ID"] == OTHER_ACCOUNT
    assert "NOTIFY_SOCKET" not in shown
