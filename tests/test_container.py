"""The image's commands, run without an engine: the Dockerfile's recipe in a fresh virtualenv.

This test does what the image would, without an engine: copies the files the build stage
COPYs, runs the build stage's RUN lines (the lock file, then the relay, into a new
virtualenv), then runs the final stage's ENTRYPOINT + CMD with its ENV, as the image's
numeric USER and, when root may
create namespaces, as PID 1 of a new PID namespace (as in a container, where the kernel
drops signals PID 1 has no handler for). It polls the HEALTHCHECK command until healthy,
sends a test message, stops the relay with the STOPSIGNAL and expects exit status 0.

Deviations from a real container, all for the test's sake: the virtualenv lives in a
temporary directory instead of /opt/ahasend-relay, the listeners use loopback and free
ports (the image uses 0.0.0.0:2525 and :9125), and AhaSend is the stand-in.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dockerfile import Stage, healthcheck_command, parse
from tests.harness import free_port
from tests.paths import REPO
from tests.standin import StandIn

pytestmark = pytest.mark.container
IMAGE_VENV = "/opt/ahasend-relay"
UID, GID = (int(part) for part in parse()[-1].one("USER").args.split(":"))
"""The image's numeric USER uid:gid (no such user needs to exist here, as in Kubernetes)."""


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    """A world-readable temporary directory (the unprivileged user must reach into it)."""
    root = Path(tempfile.mkdtemp(prefix="ahasend-relay-image-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


def copy_build_context(stage: Stage, dest: Path) -> None:
    """Carry out the build stage's ``COPY src... dst`` lines from the repository."""
    for copy in stage.all("COPY"):
        *sources, target = copy.args.split()
        target_dir = dest / target.lstrip("./") if target not in ("./", ".") else dest
        for source in sources:
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(origin, target_dir, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target_dir / origin.name)


@pytest.fixture(scope="module")
def venv(image_root: Path) -> Path:
    """The build stage's result: its RUN lines, run as written (``python`` on PATH is this
    interpreter, the virtualenv lives where the image has /opt/ahasend-relay)."""
    build = parse()[0]
    source, venv = image_root / "src", image_root / "venv"
    copy_build_context(build, source)
    tools = image_root / "bin"
    tools.mkdir()
    (tools / "python").symlink_to(sys.executable)
    env = {"PATH": f"{tools}:{os.environ.get('PATH', '/usr/bin:/bin')}", "LANG": "C.UTF-8",
           **build.env()}  # fmt: skip
    assert build.one("WORKDIR").args == "/src"
    for run in build.all("RUN"):
        subprocess.run(
            ["sh", "-ec", run.args.replace(IMAGE_VENV, str(venv))], cwd=source, env=env,
            check=True, timeout=300, capture_output=True,
        )  # fmt: skip
    return venv


def test_the_build_stage_leaves_no_pip_or_setuptools(venv: Path) -> None:
    for module in ("pip", "setuptools"):
        found = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {module}"],
                               capture_output=True, timeout=30, check=False)  # fmt: skip
        assert found.returncode != 0, f"{module} is still in the virtualenv"
    relay = subprocess.run([str(venv / "bin" / "python"), "-c", "import relay, uvloop, orjson"],
                           capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert relay.returncode == 0, relay.stderr


def image_env(venv: Path, state: Path, **overrides: str) -> dict[str, str]:
    """The final stage's ENV, with the virtualenv where the image has /opt/ahasend-relay
    and ``state`` where it has its volume."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    [volume] = parse()[-1].one("VOLUME").exec_form()
    for key, value in parse()[-1].env().items():
        local = value.replace(IMAGE_VENV, str(venv)).replace(volume, str(state))
        env[key] = local.replace("$PATH", env["PATH"])
    return env | overrides


def as_unprivileged(command: list[str], *, pid1: bool = False) -> list[str]:
    """``command`` run as the image's USER (when we are root), as PID 1 of a new namespace
    if asked."""
    if os.geteuid() != 0:
        return command
    drop = ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", "--"]
    if pid1:
        return ["unshare", "--pid", "--fork", "--kill-child", *drop, *command]
    return [*drop, *command]


def run_healthcheck(command: list[str], env: dict[str, str]) -> int:
    return subprocess.run(
        as_unprivileged(command), env=env, capture_output=True, timeout=30, check=False
    ).returncode


def relay_pid(launcher: subprocess.Popen[bytes]) -> int:
    """The relay's pid: the launcher itself, or the child ``unshare`` forked."""
    if os.geteuid() != 0:
        return launcher.pid
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if found := children.read_text().split():
            return int(found[0])
        time.sleep(0.02)
    raise AssertionError("unshare started no child")


def status_field(pid: int, name: str) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.split()
    raise AssertionError(f"{name} not in /proc/{pid}/status")


def test_image_commands_serve_heal_and_stop(venv: Path, image_root: Path) -> None:
    final = parse()[-1]
    workdir = image_root / "state"
    workdir.mkdir()
    if os.geteuid() == 0:
        os.chown(workdir, UID, GID)
    smtp_port, metrics_port = free_port(), free_port()
    with StandIn() as standin:
        env = image_env(
            venv, workdir, RELAY_HOST="127.0.0.1", RELAY_METRICS_HOST="127.0.0.1",
            RELAY_PORT=str(smtp_port), RELAY_METRICS_PORT=str(metrics_port),
            AHASEND_API_KEY=standin.api_key, AHASEND_ACCOUNT_ID=standin.account_id,
            AHASEND_API_BASE_URL=standin.base_url,
        )  # fmt: skip
        healthcheck = healthcheck_command(final)
        assert run_healthcheck(healthcheck, env) == 1  # nothing runs yet
        command = final.one("ENTRYPOINT").exec_form() + final.one("CMD").exec_form()
        launcher = subprocess.Popen(
            as_unprivileged(command, pid1=True), env=env, cwd=workdir,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            _serve_heal_and_stop(launcher, healthcheck, env, standin)
        finally:
            if launcher.poll() is None:
                launcher.kill()
            launcher.wait(10)
            assert launcher.stderr is not None
            launcher.stderr.close()
        assert run_healthcheck(healthcheck, env) == 1  # stopped


def _serve_heal_and_stop(
    launcher: subprocess.Popen[bytes], healthcheck: list[str], env: dict[str, str],
    standin: StandIn,
) -> None:  # fmt: skip
    deadline = time.monotonic() + 20
    while run_healthcheck(healthcheck, env) != 0:
        assert launcher.poll() is None, launcher.stderr.read() if launcher.stderr else ""
        assert time.monotonic() < deadline, "HEALTHCHECK never passed"
        time.sleep(0.1)
    pid = relay_pid(launcher)
    if os.geteuid() == 0:
        assert status_field(pid, "NSpid")[-1] == "1"  # PID 1 in its namespace
        assert status_field(pid, "Uid")[0] == str(UID)
        assert status_field(pid, "Gid")[0] == str(GID)
    send = [*healthcheck[:1], "send-test", "--to", "you@example.org", "--from", "a@example.com"]
    sent = subprocess.run(as_unprivileged(send), env=env, capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    # The image spools by default, on its volume, privately.
    spool = Path(env["RELAY_SPOOL_DIR"])
    assert spool.parent.name == "state"
    assert (spool.stat().st_mode & 0o777, (spool / "spool.sqlite3").stat().st_mode & 0o777) == (
        0o700,
        0o600,
    )
    [request] = standin.requests
    assert request.json["sandbox"] is True
    stop_signal = signal.Signals[parse()[-1].one("STOPSIGNAL").args]
    os.kill(pid, stop_signal)
    assert launcher.wait(15) == 0
