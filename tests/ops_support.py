"""Run the relay and its CLI as real processes, as an operator would, and read their logs.

``RelayProcess`` starts ``python -m relay serve`` with JSON logs written to a file, waits
for its ``listening`` event and learns the bound ports from the log (ports are 0).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from relay.config import PROXY_VARIABLES, TRUST_VARIABLES
from tests.paths import REPO

START_TIMEOUT = 15.0


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without relay settings, plus ``extra``; relay importable."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AHASEND_", "RELAY_", "NOTIFY_", "WATCHDOG_"))
        and k.upper() not in PROXY_VARIABLES  # a proxy of the test host must not steer it
        and k not in TRUST_VARIABLES  # nor its CA bundle
    }
    env["PYTHONPATH"] = str(REPO)
    return env | extra


def standin_env(standin: Any, **extra: str) -> dict[str, str]:
    """Settings that point the relay (or the CLI) at ``standin``."""
    return {
        "AHASEND_API_KEY": standin.api_key,
        "AHASEND_ACCOUNT_ID": standin.account_id,
        "AHASEND_API_BASE_URL": standin.base_url,
        "AHASEND_API_TIMEOUT": "2",
    } | extra


def run_cli(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m relay ARGS`` in a clean environment plus ``env``; never raises on status."""
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env=clean_env(**env), capture_output=True, text=True, timeout=timeout, check=False,
        cwd=REPO,
    )  # fmt: skip


def events(path: Path) -> list[dict[str, Any]]:
    """The JSON log events written to ``path`` so far (a partial last line is skipped)."""
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def wait_for_event(
    path: Path, name: str, proc: subprocess.Popen[bytes], timeout: float = START_TIMEOUT
) -> dict[str, Any]:
    """The first ``name`` event in the log at ``path``; fails if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events(path):
            if event.get("event") == name:
                return event
        if proc.poll() is not None:
            raise AssertionError(f"relay exited {proc.returncode}: {path.read_text()}")
        time.sleep(0.02)
    raise AssertionError(f"no {name!r} event within {timeout}s: {path.read_text()}")


class RelayProcess:
    """A relay subprocess: ``port``, ``metrics_port`` (if on), ``log`` path, ``stop()``."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc, self.log = proc, log
        self.port: int = wait_for_event(log, "listening", proc)["port"]
        self.metrics_port: int | None = None

    def wait_admin(self) -> int:
        self.metrics_port = int(wait_for_event(self.log, "admin_listening", self.proc)["port"])
        return self.metrics_port

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def events(self) -> list[dict[str, Any]]:
        return events(self.log)


@contextmanager
def relay_process(tmp_path: Path, *args: str, **env: str) -> Iterator[RelayProcess]:
    """``python -m relay serve --port 0 ARGS`` with JSON logs; killed if still running."""
    log = tmp_path / f"relay-{time.monotonic_ns()}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--port", "0", *args],
            env=clean_env(RELAY_LOG_FORMAT="json", **env), stdout=sink, stderr=sink, cwd=REPO,
        )  # fmt: skip
    try:
        yield RelayProcess(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
