"""The security parts of the command line, run as an operator would (subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from relay.smtp.auth import CredentialStore
from tests.paths import REPO
from tests.security_support import make_certs, message


def env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AHASEND_", "RELAY_"))}
    return clean | {"PYTHONPATH": str(REPO)} | extra


def run(*args: str, stdin: str = "", **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], input=stdin, env=env(**extra),
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip


@pytest.mark.parametrize("scheme", ["argon2", "bcrypt"])
def test_hash_password_prints_a_usable_hash(tmp_path: Path, scheme: str):
    result = run("hash-password", "--scheme", scheme, stdin="s3cret pass\n")
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    users = tmp_path / "users"
    users.write_text(f"app:{result.stdout.strip()}\n")
    assert CredentialStore(users).check(b"app", b"s3cret pass") is not None


def test_hash_password_refuses_empty_input():
    result = run("hash-password", stdin="\n")
    assert (result.returncode, result.stdout) == (64, "")


def test_open_relay_refuses_to_start():
    result = run("--dry-run", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 78
    assert "this would be an open relay" in result.stderr
    assert "RELAY_ALLOWED_NETWORKS" in result.stderr


def test_unreadable_auth_file_is_a_config_error(tmp_path: Path):
    result = run(
        "--dry-run", "--port", "0", RELAY_AUTH_FILE=str(tmp_path / "absent"),
        RELAY_AUTH_ALLOW_PLAINTEXT="true",
    )  # fmt: skip
    assert result.returncode == 78
    assert "RELAY_AUTH_FILE" in result.stderr


def test_sighup_reloads_the_certificate(tmp_path: Path):
    old = make_certs(tmp_path, "server")
    new = make_certs(tmp_path, "renewed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "--dry-run", "--port", "0"],
        env=env(RELAY_LOG_FORMAT="json", RELAY_TLS_CERT=str(old.cert), RELAY_TLS_KEY=str(old.key)),
        stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        port = _wait_event(proc, "listening")["port"]
        old.cert.write_bytes(new.cert.read_bytes())
        old.key.write_bytes(new.key.read_bytes())
        proc.send_signal(signal.SIGHUP)
        _wait_event(proc, "reloaded")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=new.client_context())
            client.send_message(message())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()


def _wait_event(proc: subprocess.Popen[str], name: str) -> dict[str, object]:
    assert proc.stderr is not None
    for line in proc.stderr:
        event: dict[str, object] = json.loads(line)
        if event["event"] == name:
            return event
    raise AssertionError(f"relay exited before logging {name!r}")
