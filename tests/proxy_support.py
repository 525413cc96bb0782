"""A private tinyproxy (Debian's ``tinyproxy``) on a free loopback port, for the proxy tests.

Each instance has its own configuration file, log and pid file in a temporary directory and
runs in the foreground (``-d``) as the current user; ``requests`` reads what crossed it from
its log (``LogLevel Connect``: one ``Request (file descriptor N): METHOD URL`` line each).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

TINYPROXY = "/usr/bin/tinyproxy"
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/")


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TinyProxy:
    """``with TinyProxy(tmp_path) as proxy:`` a started tinyproxy; ``user``/``password``
    turn on its ``BasicAuth`` (then every request must carry ``Proxy-Authorization``)."""

    def __init__(self, directory: Path, user: str = "", password: str = "") -> None:
        assert shutil.which(TINYPROXY), "tinyproxy missing: .ci/run installs it"
        self.directory = directory
        self.user, self.password = user, password
        self.port = free_port()
        self.log = directory / "tinyproxy.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, with the credentials when BasicAuth is on."""
        userinfo = f"{self.user}:{self.password}@" if self.user else ""
        return f"http://{userinfo}127.0.0.1:{self.port}"

    def requests(self) -> list[tuple[str, str]]:
        """(method, target) of every request that reached the proxy so far."""
        if not self.log.exists():
            return []
        return _REQUEST.findall(self.log.read_text(encoding="utf-8", errors="replace"))

    def start(self) -> TinyProxy:
        config = self.directory / "tinyproxy.conf"
        lines = [
            f"Port {self.port}", "Listen 127.0.0.1", "Allow 127.0.0.1", "Timeout 30",
            f'LogFile "{self.log}"', "LogLevel Connect", f'PidFile "{self.directory}/pid"',
            "MaxClients 50",
        ]  # fmt: skip
        if self.user:
            lines.append(f"BasicAuth {self.user} {self.password}")
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._process = subprocess.Popen(
            [TINYPROXY, "-d", "-c", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._wait_listening()
        return self

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"tinyproxy exited with {self._process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("tinyproxy did not listen")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._process = None

    def __enter__(self) -> TinyProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
