"""The command line, run as a user would: ``python -m relay`` in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from typing import IO, Any

import pytest

from relay import __version__
from tests.paths import REPO

ACCOUNT = "7b0ef6a2-6a4c-4b1e-9d4e-2a6f0b8c1d11"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AHASEND_", "RELAY_"))}
    env["PYTHONPATH"] = str(REPO)
    return env | extra


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env=clean_env(**env), capture_output=True, text=True, timeout=30, check=False, cwd=REPO,
    )  # fmt: skip


def read_events(stream: IO[str], until: str) -> Iterator[dict[str, Any]]:
    for line in stream:
        event: dict[str, Any] = json.loads(line)
        yield event
        if event["event"] == until:
            return


@pytest.fixture
def dry_run_relay() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "--dry-run", "--port", "0"],
        env=clean_env(RELAY_LOG_FORMAT="json"), stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.stderr is not None
    watchdog = threading.Timer(60, proc.kill)  # a hung relay ends the read loops, not the suite
    watchdog.start()
    try:
        [*_, listening] = read_events(proc.stderr, until="listening")
        yield proc, listening["port"]
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()


def test_dry_run_accepts_and_logs_payload(
    dry_run_relay: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = dry_run_relay
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "app@example.com", "ann@example.net", "Dry"
    msg.set_content("hello")
    msg.add_attachment(b"\x00" * 3000, maintype="application", subtype="octet-stream",
                       filename="blob.bin")  # fmt: skip
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("client.test")
        client.mail("app@example.com")
        client.rcpt("ann@example.net")
        code, text = client.data(msg.as_bytes())
    assert (code, text) == (250, b"2.0.0 Accepted (dry run, not sent)")
    proc.send_signal(signal.SIGTERM)
    assert proc.stderr is not None
    events = list(read_events(proc.stderr, until="stopped"))
    assert proc.wait(10) == 0
    [dry] = [e for e in events if e["event"] == "dry_run"]
    assert dry["payload"]["subject"] == "Dry"
    [attachment] = dry["payload"]["attachments"]
    assert attachment["data"].endswith("... (4000 chars)")
    assert [e["event"] for e in events][-2:] == ["shutting_down", "stopped"]


def test_missing_credentials_exit_78() -> None:
    result = run_cli()
    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        "ahasend-relay: configuration error: AHASEND_API_KEY and AHASEND_ACCOUNT_ID must be set "
        "(or RELAY_DRY_RUN=true to run without)"
    ]
    assert "Traceback" not in result.stderr


def test_bad_value_exit_78_names_variable() -> None:
    result = run_cli("--dry-run", RELAY_PORT="seventy")
    assert result.returncode == 78
    assert result.stderr.startswith("ahasend-relay: configuration error: RELAY_PORT: ")
    assert "Traceback" not in result.stderr


def test_bad_account_id_exit_78() -> None:
    result = run_cli(AHASEND_API_KEY="aha-sk-secret-value", AHASEND_ACCOUNT_ID="not-a-uuid")
    assert result.returncode == 78
    assert "AHASEND_ACCOUNT_ID" in result.stderr
    assert "aha-sk-secret-value" not in result.stderr


def test_env_file_flag(tmp_path: Any) -> None:
    env_file = tmp_path / "relay.env"
    env_file.write_text("RELAY_PORT=notaport\n")
    result = run_cli("--env-file", str(env_file), "--dry-run")
    assert result.returncode == 78
    assert "RELAY_PORT" in result.stderr
    missing = run_cli("--env-file", str(tmp_path / "absent.env"))
    assert missing.returncode == 78
    assert "--env-file" in missing.stderr


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("--dry-run", "--port", str(port), RELAY_LOG_FORMAT="json")
    assert result.returncode == 71
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ahasend-relay {__version__}"


def test_retry_deadline_at_or_above_smtp_timeout_exit_78() -> None:
    result = run_cli("--dry-run", RELAY_RETRY_DEADLINE="60", RELAY_SMTP_TIMEOUT="60")
    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        "ahasend-relay: configuration error: RELAY_RETRY_DEADLINE (60 s) must be below "
        "RELAY_SMTP_TIMEOUT (60 s): the client would be cut off while the relay still retries"
    ]


def test_inflight_budget_below_the_largest_message_exit_78() -> None:
    result = run_cli(
        "--dry-run", RELAY_MAX_INFLIGHT_BYTES="1000000", RELAY_MAX_MESSAGE_SIZE="2000000"
    )
    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        "ahasend-relay: configuration error: RELAY_MAX_INFLIGHT_BYTES (1000000) must be 0 (no "
        "limit) or at least RELAY_MAX_MESSAGE_SIZE (2000000): a message of the largest size "
        "would never be accepted"
    ]
