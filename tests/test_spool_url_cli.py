"""RELAY_SPOOL_URL from the operator's side: settings, check-config, ``queue --spool-url``.

Every refusal is checked with its exit status and exact message; the URL's password is
never printed (check-config masks it, errors name the URL masked). The ``queue`` tools
run against a real private cluster (``tests.postgres``), as real processes where the
environment matters (RELAY_SPOOL_URL, RELAY_SPOOL_URL_FILE, PGPASSFILE).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli.main import EX_CANTCREAT, EX_CONFIG, main
from relay.config import mask_url_password, url_passwords
from relay.delivery.spool import PostgresSpool
from relay.delivery.spool.pg_schema import SCHEMA_VERSION
from tests.harness import free_port
from tests.ops_support import clean_env, run_cli
from tests.paths import REPO
from tests.postgres import PASSWORD, ROLE, PgCluster
from tests.test_queue_cli import fill, run

CONFIG_ERROR = "ahasend-relay: configuration error: "


@pytest.fixture(autouse=True)
def no_spool_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RELAY_SPOOL_DIR", "RELAY_SPOOL_URL", "RELAY_SPOOL_URL_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def filled(pg_cluster: PgCluster) -> str:
    """A database holding one queued and one dead message (ids 1 and 2); its URL."""
    url = pg_cluster.database()
    asyncio.run(_fill(url))
    return url


async def _fill(url: str) -> None:
    spool = PostgresSpool(url)
    await spool.open()
    await fill(spool)  # test_queue_cli's two messages, on the shared spool


# -- settings ------------------------------------------------------------------------------


def test_spool_dir_and_spool_url_together_exit_78(tmp_path: Path) -> None:
    result = run_cli(
        "check-config", RELAY_DRY_RUN="true", RELAY_SPOOL_DIR=str(tmp_path),
        RELAY_SPOOL_URL=f"postgresql://relay:{PASSWORD}@db/relay",
    )  # fmt: skip
    assert result.returncode == EX_CONFIG
    assert result.stderr == (
        CONFIG_ERROR + "RELAY_SPOOL_DIR and RELAY_SPOOL_URL are both set: choose one spool "
        "(a local SQLite directory, or the shared PostgreSQL database)\n"
    )
    assert PASSWORD not in result.stdout + result.stderr


def test_a_lease_under_twice_the_api_timeout_exits_78() -> None:
    result = run_cli(
        "check-config", RELAY_DRY_RUN="true", AHASEND_API_TIMEOUT="40", RELAY_SPOOL_LEASE="79"
    )
    assert result.returncode == EX_CONFIG
    assert result.stderr == (
        CONFIG_ERROR + "RELAY_SPOOL_LEASE (79 s) must be at least twice AHASEND_API_TIMEOUT "
        "(40 s): a claim must outlast a delivery attempt, or two replicas could send the "
        "same message\n"
    )
    assert run_cli("check-config", RELAY_DRY_RUN="true", AHASEND_API_TIMEOUT="40",
                   RELAY_SPOOL_LEASE="80").returncode == 0  # fmt: skip


def test_a_spool_url_that_is_not_a_libpq_url_exits_78_without_echoing_it() -> None:
    result = run_cli("check-config", RELAY_DRY_RUN="true",
                     RELAY_SPOOL_URL=f"mysql://relay:{PASSWORD}@db/relay")  # fmt: skip
    assert result.returncode == EX_CONFIG
    assert result.stderr == (
        CONFIG_ERROR
        + "RELAY_SPOOL_URL: must be a libpq URL: postgresql://user:password@host:port/dbname\n"
    )
    assert PASSWORD not in result.stdout + result.stderr


def test_the_url_and_its_file_together_exit_78(tmp_path: Path) -> None:
    url_file = tmp_path / "spool-url"
    url_file.write_text(f"postgresql://relay:{PASSWORD}@db/relay\n")
    result = run_cli("check-config", RELAY_DRY_RUN="true", RELAY_SPOOL_URL_FILE=str(url_file),
                     RELAY_SPOOL_URL=f"postgresql://relay:{PASSWORD}@db/relay")  # fmt: skip
    assert result.returncode == EX_CONFIG
    assert result.stderr == (
        CONFIG_ERROR + "RELAY_SPOOL_URL is given twice (RELAY_SPOOL_URL and "
        "RELAY_SPOOL_URL_FILE): keep one\n"
    )


@pytest.mark.parametrize("source", ["variable", "file"])
def test_check_config_shows_the_url_with_its_password_masked(source: str, tmp_path: Path) -> None:
    url = f"postgresql://relay:{PASSWORD}@db.example.com:5433/relay?sslmode=verify-full"
    env = {"RELAY_SPOOL_URL": url}
    if source == "file":
        (tmp_path / "url").write_text(url + "\n")
        env = {"RELAY_SPOOL_URL_FILE": str(tmp_path / "url")}
    result = run_cli("check-config", RELAY_DRY_RUN="true", **env)
    assert result.returncode == 0, result.stderr
    assert (
        "RELAY_SPOOL_URL=postgresql://relay:***@db.example.com:5433/relay?sslmode=verify-full"
        in result.stdout.splitlines()
    )
    assert "RELAY_SPOOL_LEASE=60.0" in result.stdout.splitlines()
    assert PASSWORD not in result.stdout + result.stderr


def test_masking_covers_both_places_a_url_can_hold_a_password() -> None:
    assert mask_url_password("postgresql://u:p%40ss@h/d") == "postgresql://u:***@h/d"
    assert mask_url_password("postgresql://h/d?user=u&password=s3&sslmode=require") == (
        "postgresql://h/d?user=u&password=***&sslmode=require"
    )
    assert mask_url_password("postgresql://u@h/d") == "postgresql://u@h/d"
    assert sorted(url_passwords("postgresql://u:p%40ss@h/d")) == ["p%40ss", "p@ss"]


# -- queue --spool-url -----------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_queue_list_takes_the_url_before_or_after_the_action(
    filled: str, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--spool-url", filled, "list"] if where == "before" else ["list", "--spool-url", filled]
    status, out = run(capsys, *argv)
    assert status == 0
    lines = out.splitlines()
    assert "<app@example.com> -> a@example.org" in lines[1]
    assert "422 invalid recipient" in lines[4]
    assert lines[-1] == "-- 1 queued, 1 dead, 0 delivered"


def test_queue_show_retry_delete_on_the_shared_spool(
    filled: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = run(capsys, "show", "1", "--spool-url", filled)
    assert status == 0
    assert "subject:         Monthly report" in out
    assert run(capsys, "--spool-url", filled, "retry", "2") == (
        0, "1 message(s) scheduled for immediate retry\n",
    )  # fmt: skip
    assert run(capsys, "--spool-url", filled, "delete", "1") == (0, "message 1 deleted\n")
    assert run(capsys, "delete", "1", "--spool-url", filled)[0] == 1
    _, out = run(capsys, "--spool-url", filled, "list")
    assert out.splitlines()[-1] == "-- 1 queued, 0 dead, 0 delivered"


def test_queue_reads_relay_spool_url(filled: str) -> None:
    result = run_cli("queue", "list", RELAY_SPOOL_URL=filled)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split()[:2] == ["ID", "STATE"]  # no log lines
    assert result.stdout.splitlines()[-1] == "-- 1 queued, 1 dead, 0 delivered"


def test_processes_starting_together_on_a_fresh_database_migrate_once(
    pg_cluster: PgCluster,
) -> None:
    url = pg_cluster.database()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "relay", "queue", "list", "--spool-url", url],
            env=clean_env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, outputs
    assert all(out.decode().endswith("-- 0 queued, 0 dead, 0 delivered\n") for out, _ in outputs)
    name = url.rsplit("/", 1)[1]
    versions = pg_cluster.psql("SELECT version FROM relay_schema_version ORDER BY 1", name)
    assert versions.splitlines() == [str(v) for v in range(1, SCHEMA_VERSION + 1)]


def test_queue_with_the_password_in_pgpassfile(
    filled: str, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_cluster.port}:*:{ROLE}:{PASSWORD}\n")
    pgpass.chmod(0o600)
    without_password = filled.replace(f":{PASSWORD}@", "@")
    result = run_cli("queue", "list", RELAY_SPOOL_URL=without_password, PGPASSFILE=str(pgpass))
    assert result.returncode == 0, result.stderr
    assert "1 queued, 1 dead" in result.stdout
    refused = run_cli("queue", "list", RELAY_SPOOL_URL=without_password,
                      PGPASSFILE=str(tmp_path / "none"), timeout=60)  # fmt: skip
    assert refused.returncode == EX_CANTCREAT


def test_queue_against_an_unreachable_database_exits_73_without_the_password() -> None:
    url = f"postgresql://relay:{PASSWORD}@127.0.0.1:{free_port()}/relay"
    result = run_cli("queue", "list", RELAY_SPOOL_URL=url, timeout=60)
    assert result.returncode == EX_CANTCREAT
    masked = url.replace(PASSWORD, "***")
    assert result.stderr.splitlines()[-1].startswith(f"ahasend-relay: spool {masked}: ")
    assert PASSWORD not in result.stdout + result.stderr


def test_queue_with_both_spools_named_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--spool-dir", str(tmp_path), "list", "--spool-url", "postgresql://h/d"]
    assert main(["queue", *argv]) == EX_CONFIG
    assert capsys.readouterr().err == (
        CONFIG_ERROR + "--spool-dir and --spool-url are both given: choose one spool\n"
    )
