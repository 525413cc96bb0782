"""``check-config`` is the pre-flight of ``serve``: every start-up check, the same verdict.

Each broken configuration below is given to both commands as subprocesses; both must
exit with the same status and name the same problem, so an operator who ran
``check-config`` before a restart is never surprised by ``serve``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from relay.cli.main import EX_CANTCREAT, EX_CONFIG, EX_OK
from relay.smtp.auth import hash_password
from tests.ops_support import run_cli

pytestmark = pytest.mark.e2e

ACCOUNT = "5c1d7a52-3f0e-4b8e-9a3c-7d2e1f0a9b64"
Case = Callable[[Path], tuple[dict[str, str], int, str]]


def users_file_with_a_bad_hash(tmp: Path) -> tuple[dict[str, str], int, str]:
    users = tmp / "users"
    users.write_text("alice:not-a-hash\n", encoding="utf-8")
    env = {"RELAY_AUTH_FILE": str(users), "RELAY_AUTH_ALLOW_PLAINTEXT": "true"}
    return env, EX_CONFIG, "RELAY_AUTH_FILE"


def users_file_missing(tmp: Path) -> tuple[dict[str, str], int, str]:
    env = {"RELAY_AUTH_FILE": str(tmp / "absent"), "RELAY_AUTH_ALLOW_PLAINTEXT": "true"}
    return env, EX_CONFIG, "cannot read"


def tls_files_missing(tmp: Path) -> tuple[dict[str, str], int, str]:
    env = {"RELAY_TLS_CERT": str(tmp / "cert.pem"), "RELAY_TLS_KEY": str(tmp / "key.pem")}
    return env, EX_CONFIG, "RELAY_TLS_CERT/RELAY_TLS_KEY: cannot load"


def tenant_key_file_missing(tmp: Path) -> tuple[dict[str, str], int, str]:
    tenants = tmp / "tenants.toml"
    tenants.write_text(
        f'[[tenant]]\nname = "crm"\nnetworks = ["10.0.0.0/8"]\naccount_id = "{ACCOUNT}"\n'
        f'api_key_file = "{tmp / "crm.key"}"\n',
        encoding="utf-8",
    )
    return {"RELAY_TENANTS_FILE": str(tenants)}, EX_CONFIG, "api_key_file: cannot read"


def api_ca_file_missing(tmp: Path) -> tuple[dict[str, str], int, str]:
    # Before relay.config read it, httpx alone did, building the transport: check-config
    # passed, and serve (not dry-run) exited 71 "cannot listen on ...: No such file ...".
    path = tmp / "ca.pem"
    return {"SSL_CERT_FILE": str(path)}, EX_CONFIG, f"SSL_CERT_FILE: cannot read {path}"


def spool_directory_impossible(tmp: Path) -> tuple[dict[str, str], int, str]:
    blocker = tmp / "a-file"
    blocker.write_text("not a directory\n", encoding="utf-8")
    return {"RELAY_SPOOL_DIR": str(blocker / "spool")}, EX_CANTCREAT, str(blocker / "spool")


CASES: list[Case] = [
    users_file_with_a_bad_hash,
    users_file_missing,
    tls_files_missing,
    tenant_key_file_missing,
    api_ca_file_missing,
    spool_directory_impossible,
]


def base_env(tmp: Path) -> dict[str, str]:
    return {"RELAY_DRY_RUN": "true", "RELAY_PORT": "0", "RELAY_LOG_FORMAT": "json"}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_check_config_fails_as_serve_fails(tmp_path: Path, case: Case) -> None:
    env, status, mentions = case(tmp_path)
    checked = run_cli("check-config", **base_env(tmp_path), **env)
    served = run_cli("serve", timeout=60, **base_env(tmp_path), **env)
    assert (checked.returncode, served.returncode) == (status, status), (checked, served)
    assert "configuration OK" not in checked.stdout
    assert mentions in checked.stderr
    assert mentions in served.stderr + served.stdout


def test_check_config_passes_a_configuration_serve_accepts(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('s3cret-pass')}\n", encoding="utf-8")
    env = {"RELAY_AUTH_FILE": str(users), "RELAY_AUTH_ALLOW_PLAINTEXT": "true",
           "RELAY_SPOOL_DIR": str(tmp_path / "spool")}  # fmt: skip
    checked = run_cli("check-config", **base_env(tmp_path), **env)
    assert checked.returncode == EX_OK, checked.stderr
    assert checked.stdout.splitlines()[-1] == "configuration OK"
    assert (tmp_path / "spool").is_dir()


def test_check_config_shows_only_whether_a_secret_is_set(tmp_path: Path) -> None:
    env = {"RELAY_AUTH_USER": "alice", "RELAY_AUTH_PASSWORD": "hunter2-but-longer",
           "RELAY_AUTH_ALLOW_PLAINTEXT": "true"}  # fmt: skip
    checked = run_cli("check-config", **base_env(tmp_path), **env)
    assert checked.returncode == EX_OK, checked.stderr
    assert "RELAY_AUTH_PASSWORD=[set]" in checked.stdout.splitlines()
    assert "AHASEND_API_KEY=[unset]" in checked.stdout.splitlines()
    assert "hunter2" not in checked.stdout + checked.stderr
    assert "characters" not in checked.stdout
