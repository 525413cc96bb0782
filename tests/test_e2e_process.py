"""The relay as a real process (``python -m relay``) under real signals.

- SIGTERM during an open transaction: the transaction completes with 250, an idle session
  and new connections get ``421 4.3.2``, and the process exits 0.
- SIGKILL in the middle of a load: after a restart on the same spool, every message that
  got 250 reaches the stand-in exactly once (replays allowed, fresh acceptances == 1).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest

from relay.delivery.spool import SqliteSpool
from tests.harness import free_port
from tests.paths import REPO
from tests.standin import Recorded, Scripted, StandIn

pytestmark = pytest.mark.e2e


@contextmanager
def relay_process(
    standin: StandIn, port: int, log: Path, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m relay`` on ``port``, forwarding to ``standin``; killed if still running."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AHASEND_", "RELAY_"))}
    environ |= {
        "PYTHONPATH": str(REPO),
        "AHASEND_API_KEY": standin.api_key,
        "AHASEND_ACCOUNT_ID": standin.account_id,
        "AHASEND_API_BASE_URL": standin.base_url,
        "AHASEND_API_TIMEOUT": "5",
        "RELAY_HOST": "127.0.0.1",
        "RELAY_PORT": str(port),
        "RELAY_HOSTNAME": "relay.test",
        "RELAY_LOG_FORMAT": "json",
        **env,
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay"], cwd=REPO, env=environ, stdout=out, stderr=out
        )
    try:
        wait_listening(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        assert proc.poll() is None, "relay exited during start-up"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("relay did not start listening")


def message(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "app@example.com"
    msg["To"] = "ann@example.net"
    msg["Subject"] = subject
    msg.set_content(f"Body of {subject}\n")
    return msg.as_bytes()


def test_sigterm_finishes_the_open_transaction_and_refuses_new_sessions(
    standin: StandIn, tmp_path: Path
) -> None:
    port = free_port()
    standin.script(Scripted(202, delay=1.5))  # the transaction is in flight at SIGTERM
    with relay_process(standin, port, tmp_path / "relay.log",
                       RELAY_SHUTDOWN_TIMEOUT="10") as proc:  # fmt: skip
        idle = smtplib.SMTP("127.0.0.1", port, timeout=10)
        idle.ehlo("idle.test")
        busy = smtplib.SMTP("127.0.0.1", port, timeout=10)
        busy.ehlo("busy.test")
        busy.mail("app@example.com")
        busy.rcpt("ann@example.net")
        reply: list[tuple[int, bytes]] = []
        data = threading.Thread(target=lambda: reply.append(busy.data(message("In flight"))))
        data.start()
        wait_until(lambda: standin.connections >= 1)  # the request is at the API now
        proc.send_signal(signal.SIGTERM)
        refused = connect_until_refused(port)
        assert refused.code == 421
        assert refused.text.startswith("4.3.2 ")
        assert idle.noop()[0] == 421  # the idle session was told, then closed
        data.join(10)
        assert reply, "DATA got no answer"
        assert reply[0][0] == 250, reply
        assert reply[0][1].startswith(b"2.0.0 Queued: ")
        busy.close()
        idle.close()
        assert proc.wait(15) == 0
    assert len(standin.accepted) == 1


class Refused:
    def __init__(self, code: int, text: str) -> None:
        self.code, self.text = code, text


def connect_until_refused(port: int, timeout: float = 10.0) -> Refused:
    """Connect until the relay (now draining) answers the greeting with a 421."""
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        try:
            smtplib.SMTP("127.0.0.1", port, timeout=5).close()  # greeted: not draining yet
        except smtplib.SMTPConnectError as exc:
            return Refused(exc.smtp_code, exc.smtp_error.decode())
        time.sleep(0.05)
    raise TimeoutError("never refused")


def sender_thread(port: int, count: int, acked: dict[str, str], stop: threading.Event) -> None:
    """Send ``count`` messages one per session; record each 250 reply's text by subject."""
    for i in range(count):
        if stop.is_set():
            return
        subject = f"Load {i}"
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo("load.test")
                client.mail("app@example.com")
                client.rcpt("ann@example.net")
                code, text = client.data(message(subject))
        except (OSError, smtplib.SMTPException):
            return  # the relay was killed under us: this message was never acknowledged
        if code == 250:
            acked[subject] = text.decode()


def test_sigkill_mid_load_loses_nothing_acknowledged(standin: StandIn, tmp_path: Path) -> None:
    port, log, total, spool_dir = free_port(), tmp_path / "relay.log", 30, tmp_path / "spool"
    # One request in three fails: those are spooled (no in-transaction retries), and their
    # first retry is far off, so they are still in the spool when the relay is killed.
    standin.script(*[Scripted(503) if i % 3 == 0 else Scripted(202) for i in range(total)])
    standin.delay = 0.02
    env = {
        "RELAY_SPOOL_DIR": str(spool_dir),
        "RELAY_RETRY_DEADLINE": "0",
        "RELAY_SPOOL_RETRY_MIN": "60",
    }
    acked: dict[str, str] = {}
    stop = threading.Event()
    with relay_process(standin, port, log, **env) as proc:
        load = threading.Thread(target=sender_thread, args=(port, total, acked, stop))
        load.start()
        wait_until(lambda: len(acked) >= total // 2)
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait(10)
        stop.set()
        load.join(15)
    assert total // 2 <= len(acked) < total
    spooled = {s for s, text in acked.items() if text.startswith("2.0.0 Queued for delivery")}
    assert spooled
    assert len(spooled) <= queued_in(spool_dir)
    first_run = list(standin.requests)
    standin.clear()  # the API is healthy from now on (drops unused scripted failures)
    with relay_process(standin, port, log, **env):
        # The queue tool works on the live spool: make everything due now.
        retry = queue_command(spool_dir, "retry", "--all")
        assert retry.returncode == 0, retry.stderr
        wait_for_subjects(standin, set(acked), first_run)
        time.sleep(0.5)  # anything delivered twice would show up now
    requests = first_run + standin.requests
    fresh = Counter(r.json["subject"] for r in requests if r.accepted)
    assert all(fresh[subject] == 1 for subject in acked), fresh
    assert max(fresh.values()) == 1
    assert all(r.problems == [] for r in requests)
    assert queued_in(spool_dir) == 0


def queued_in(spool_dir: Path) -> int:
    return asyncio.run(_queued_in(SqliteSpool(spool_dir)))


async def _queued_in(spool: SqliteSpool) -> int:
    try:
        return (await spool.stats()).queued
    finally:
        await spool.close()


def queue_command(spool_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "queue", "--spool-dir", str(spool_dir), *args],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    ends = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < ends, "condition not met in time"
        time.sleep(0.01)


def wait_for_subjects(
    standin: StandIn, subjects: set[str], before: list[Recorded], timeout: float = 15.0
) -> None:
    ends = time.monotonic() + timeout
    while not subjects <= {r.json["subject"] for r in before + standin.accepted if r.accepted}:
        assert time.monotonic() < ends, "acknowledged messages never reached the API"
        time.sleep(0.05)


BLOCKER = '''\
"""Test-only sitecustomize: the optional fast modules cannot be imported, as on a
platform without their wheels. Every refused import is appended to $BLOCKED_LOG."""
import os
import sys

NAMES = {"orjson", "uvloop", "aiohttp", "httpx_aiohttp"}


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in NAMES:
            with open(os.environ["BLOCKED_LOG"], "a") as log:
                log.write(name + "\\n")
            raise ImportError(f"{name} blocked by the test (no wheel on this platform)")
        return None


sys.meta_path.insert(0, Blocker())
'''


@pytest.mark.parametrize(
    "choices",
    [
        pytest.param({}, id="auto-falls-back"),
        pytest.param(
            {"RELAY_EVENT_LOOP": "asyncio", "AHASEND_API_TRANSPORT": "httpx"}, id="explicit"
        ),
    ],
)
def test_pure_python_fallback_delivers_without_the_fast_modules(
    standin: StandIn, tmp_path: Path, choices: dict[str, str]
) -> None:
    """Without uvloop, orjson, aiohttp and httpx-aiohttp (blocked by an import hook in a
    sitecustomize on PYTHONPATH) the relay runs on the standard loop, httpx's own
    transport and the stdlib json, and delivers the same request body."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BLOCKER)
    blocked = tmp_path / "blocked.log"
    port = free_port()
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{REPO}", "BLOCKED_LOG": str(blocked), **choices}
    with relay_process(standin, port, tmp_path / "relay.log", **env):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("app@example.com", ["ann@example.net"], message("Fallback é"))
        wait_until(lambda: len(standin.accepted) == 1)
    refused = set(blocked.read_text().split())
    assert "orjson" in refused, "the relay's serialiser asked for orjson and was refused"
    if not choices:  # auto: each fast module was tried, refused, and the fallback used
        assert {"uvloop", "orjson"} <= refused
        assert refused & {"aiohttp", "httpx_aiohttp"}
    (request,) = standin.accepted
    assert request.json["subject"] == "Fallback é"
    assert request.body == json.dumps(
        request.json, ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8"), "the stdlib serialiser writes the same compact UTF-8 JSON"
