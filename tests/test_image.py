"""The real image: built from the Dockerfile with podman, run, probed, stopped.

No image registry is reachable here, so the base image ``python:3.12-slim`` is
bootstrapped from Debian packages (debootstrap: Debian 12's Python 3.11 with venv, pip
installed from Debian's wheel under /usr/local and the "externally managed" marker removed, as in
the official image, whose PATH it gets too) and stored under that
name in a podman storage of the tests' own (``STORE``, kept between runs as a cache).
The Dockerfile is built unchanged; what differs from a Docker engine, all for this
machine's sake: vfs storage, chroot isolation for RUN steps, the host network (PyPI through
the machine's proxy, whose CA bundle is mounted for the build only), runc with cgroupfs,
and lower open-file/process limits than podman's defaults (root here may not raise them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dockerfile import parse
from tests.ops_support import standin_env
from tests.paths import REPO
from tests.standin import StandIn
from tests.test_container import free_port

pytestmark = pytest.mark.container
STORE = Path("/var/tmp/ahasend-relay-podman")
BASE = "docker.io/library/python:3.12-slim"
IMAGE = "localhost/ahasend-relay:test"
BUILD_TIMEOUT = 900
OFFICIAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The official image's PATH (the Dockerfile extends it)."""
LIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("podman")
    assert tool, "podman is missing: .ci/run installs it (with runc and debootstrap)"
    command = [tool, "--root", str(STORE / "root"), "--runroot", str(STORE / "run"),
               "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
               "--events-backend", "file", *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr[-3000:]}"
    return result


def bootstrap_base() -> None:
    """``python:3.12-slim`` from Debian packages, unless the store has it already."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    tool = shutil.which("debootstrap")
    assert tool, "debootstrap is missing: .ci/run installs it"
    with tempfile.TemporaryDirectory(prefix="ahasend-relay-rootfs-") as rootfs:
        subprocess.run(
            [tool, "--variant=minbase", "--include=python3,python3-venv,python-is-python3,"
             "passwd,ca-certificates", "bookworm", rootfs, "http://deb.debian.org/debian"],
            check=True, capture_output=True, timeout=BUILD_TIMEOUT,
        )  # fmt: skip
        Path(rootfs).chmod(0o755)  # the image's "/" (a temporary directory is 0700)
        for marker in Path(rootfs).glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        # pip as the official image has it: installed with a RECORD, under /usr/local
        # (from Debian's bundled wheel; Debian disables ensurepip for its own Python), so
        # that `pip uninstall pip` removes it.
        [wheel] = [f"/{p.relative_to(rootfs)}"
                   for p in Path(rootfs).glob("usr/share/python-wheels/pip-*.whl")]  # fmt: skip
        subprocess.run(["chroot", rootfs, "python3", f"{wheel}/pip", "install", "--no-index",
                        "--no-cache-dir", "--ignore-installed", wheel],
                       check=True, capture_output=True, timeout=300)  # fmt: skip
        archive = Path(rootfs + ".tar")
        try:
            subprocess.run(["tar", "-C", rootfs, "-cf", str(archive), "."], check=True,
                           timeout=300)  # fmt: skip
            podman("import", "--change", f"ENV PATH={OFFICIAL_PATH}", "--change",
                   "CMD python3", str(archive), BASE, timeout=300)  # fmt: skip
        finally:
            archive.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    bootstrap_base()
    ca = Path(os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
              or "/etc/ssl/certs/ca-certificates.crt")  # fmt: skip
    pip_conf = tmp_path_factory.mktemp("build") / "pip.conf"
    pip_conf.write_text("[global]\ncert = /etc/ssl/build-ca.crt\n")
    podman(
        "build", "--format", "docker", "--layers=false", "--isolation", "chroot",
        "--network", "host", "--pull=never", "-v", f"{pip_conf}:/etc/pip.conf:ro",
        "-v", f"{ca}:/etc/ssl/build-ca.crt:ro", "-t", IMAGE, str(REPO), timeout=BUILD_TIMEOUT,
    )  # fmt: skip
    return IMAGE


def inspect(name: str, template: str) -> str:
    return podman("inspect", "--format", template, name).stdout.strip()


@pytest.fixture
def container(image: str, standin: StandIn) -> Iterator[tuple[str, int]]:
    name = f"ahasend-relay-test-{os.getpid()}-{time.monotonic_ns()}"
    smtp, metrics = free_port(), free_port()
    env = standin_env(standin, RELAY_HOST="127.0.0.1", RELAY_PORT=str(smtp),
                      RELAY_METRICS_HOST="127.0.0.1", RELAY_METRICS_PORT=str(metrics))  # fmt: skip
    podman("run", "-d", "--name", name, "--network", "host", *LIMITS,
           *(f"--env={k}={v}" for k, v in env.items()), image)  # fmt: skip
    try:
        yield name, smtp
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_image_config_matches_the_dockerfile(image: str) -> None:
    found = json.loads(podman("image", "inspect", image).stdout)[0]
    config = found["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["ahasend-relay"]
    assert config["Cmd"] == ["serve"]
    assert config["StopSignal"] == "SIGTERM"
    assert found["Healthcheck"]["Test"] == ["CMD", "ahasend-relay", "healthcheck"]
    assert "MALLOC_MMAP_THRESHOLD_=131072" in config["Env"]


def test_the_runtime_image_has_no_pip_or_setuptools(image: str) -> None:
    probe = ("import importlib.util as u, sys; "
             "sys.exit(any(u.find_spec(m) for m in ('pip', 'setuptools')))")  # fmt: skip
    result = podman("run", "--rm", "--network", "none", *LIMITS, "--entrypoint", "python",
                    image, "-c", probe, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    pip = podman("run", "--rm", "--network", "none", *LIMITS, "--entrypoint", "/bin/sh",
                 image, "-c", "pip --version || python -m pip --version", check=False)  # fmt: skip
    assert pip.returncode != 0
    assert "No module named pip" in pip.stdout + pip.stderr
    group = podman("run", "--rm", "--network", "none", *LIMITS, "--entrypoint", "getent",
                   image, "group", "10001").stdout  # fmt: skip
    assert group.startswith("relay:x:10001:")


def test_the_container_runs_unprivileged_is_healthy_and_stops_with_0(
    container: tuple[str, int], standin: StandIn
) -> None:
    name, smtp = container
    deadline = time.monotonic() + 60
    while podman("healthcheck", "run", name, check=False).returncode != 0:
        assert inspect(name, "{{.State.Running}}") == "true", podman("logs", name).stderr
        assert time.monotonic() < deadline, "HEALTHCHECK never passed"
        time.sleep(0.5)
    pid = int(inspect(name, "{{.State.Pid}}"))
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    assert status["Uid"].split()[0] == "10001"
    assert status["Gid"].split()[0] == "10001"
    assert status["NSpid"].split()[-1] == "1"  # the relay is PID 1 of the container
    with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as client:
        client.sendmail("app@example.com", ["you@example.org"],
                        b"From: app@example.com\r\nSubject: image\r\n\r\nhello\r\n")  # fmt: skip
    assert len(standin.requests) == 1
    os.kill(pid, 0)  # still alive; now the engine's stop: STOPSIGNAL, then wait
    assert signal.Signals[parse()[-1].one("STOPSIGNAL").args] is signal.SIGTERM
    podman("stop", "-t", "30", name, timeout=60)
    assert inspect(name, "{{.State.ExitCode}}") == "0"
    logs = podman("logs", name)
    lines = (logs.stdout + logs.stderr).splitlines()
    assert lines
    events = [json.loads(line)["event"] for line in lines]  # every line JSON
    assert "message" in events
    assert events[-1] == "stopped"
