"""``ahasend-relay queue``: list, show, retry, delete, through ``cli.main`` as a user runs it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from relay.cli.main import EX_CONFIG, main
from relay.delivery.spool import SpoolBackend, SqliteSpool


@pytest.fixture(autouse=True)
def no_spool_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELAY_SPOOL_DIR", raising=False)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    asyncio.run(fill(SqliteSpool(tmp_path)))
    return tmp_path


async def fill(spool: SpoolBackend) -> None:
    """Two spooled messages, the second dead: what every queue-tool test starts from."""
    for key, rcpt in (("k1", "a@example.org"), ("k2", "b@example.org")):
        await spool.add(
            b'{"from":{"email":"app@example.com"},"to":[{"email":"a@example.org"}],'
            b'"subject":"Monthly report"}',
            key, mail_from="app@example.com", rcpt_tos=[rcpt],
            error="UpstreamServerError: 503 down", first_retry=600, max_age=3600,
        )  # fmt: skip
    await spool.kill(2, "422 invalid recipient")
    await spool.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(["queue", *argv])
    return status, capsys.readouterr().out


def test_list(spool_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(capsys, "--spool-dir", str(spool_dir), "list")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "STATE", "AGE", "TRIES"]
    assert "queued" in lines[1]
    assert "<app@example.com> -> a@example.org" in lines[1]
    assert "UpstreamServerError: 503 down" in lines[2]
    assert "dead" in lines[3]
    assert "422 invalid recipient" in lines[4]
    assert lines[-1] == "-- 1 queued, 1 dead, 0 delivered"


def test_list_by_state(spool_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = run(capsys, "--spool-dir", str(spool_dir), "list", "--state", "dead")
    assert "b@example.org" in out
    assert "a@example.org" not in out


def test_show(spool_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(capsys, "--spool-dir", str(spool_dir), "show", "1")
    assert status == 0
    assert "idempotency key: k1" in out
    assert "subject:         Monthly report" in out
    assert "state:           queued" in out
    assert run(capsys, "--spool-dir", str(spool_dir), "show", "9") == (1, "no message with id 9\n")


def test_retry_one_and_all(spool_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(capsys, "--spool-dir", str(spool_dir), "retry", "2")
    assert (status, out) == (0, "1 message(s) scheduled for immediate retry\n")
    spool = SqliteSpool(spool_dir)
    assert [e.id for e in asyncio.run(spool.claim(10, lease=0))] == [2]
    status, out = run(capsys, "--spool-dir", str(spool_dir), "retry", "--all")
    assert [e.id for e in asyncio.run(spool.claim(10, lease=0))] == [1, 2]
    asyncio.run(spool.close())
    assert run(capsys, "--spool-dir", str(spool_dir), "retry", "7")[0] == 1


def test_delete(spool_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--spool-dir", str(spool_dir), "delete", "1") == (0, "message 1 deleted\n")
    assert run(capsys, "--spool-dir", str(spool_dir), "delete", "1")[0] == 1
    _, out = run(capsys, "--spool-dir", str(spool_dir), "list")
    assert out.splitlines()[-1] == "-- 0 queued, 1 dead, 0 delivered"


def test_spool_dir_from_an_env_file(
    spool_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = tmp_path / "relay.env"
    env.write_text(f"RELAY_SPOOL_DIR={spool_dir}\n")
    status, out = run(capsys, "--env-file", str(env), "list")
    assert status == 0
    assert "1 queued" in out


def test_without_a_spool_dir_it_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["queue", "list"]) == EX_CONFIG
    assert "RELAY_SPOOL_DIR" in capsys.readouterr().err
    assert main(["queue", "--spool-dir", str(tmp_path / "none"), "list"]) == EX_CONFIG
    assert "no spool at" in capsys.readouterr().err


def test_show_names_a_running_claim(spool_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "claimed until:   -" in run(capsys, "--spool-dir", str(spool_dir), "show", "1")[1]
    spool = SqliteSpool(spool_dir)
    asyncio.run(spool.retry(1, max_age=3600))
    [entry] = asyncio.run(spool.claim(10, lease=600))
    asyncio.run(spool.close())
    assert entry.claimed_until is not None
    when = datetime.fromtimestamp(entry.claimed_until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"claimed until:   {when}" in run(capsys, "--spool-dir", str(spool_dir), "show", "1")[1]
