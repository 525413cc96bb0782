"""A private tinyproxy (Debian's ``tinyproxy``) on a free loopback port, for the proxy tests.

Each instance has its own configuration file, log and pid file in a temporary directory and
runs in the foreground (``-d``) as the current user; ``requests`` reads what crossed it from
its log (``LogLevel Connect``: one ``Request (file descriptor N): METHOD URL`` line each).

``TlsFront`` makes it an ``https://`` proxy (TLS to the proxy itself): Debian's HAProxy in
TCP mode terminating TLS with a given certificate and passing the bytes on to the tinyproxy,
so the proxy URL is ``https://[user:password@]127.0.0.1:PORT``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.harness import free_port, wait_for_port

TINYPROXY = "/usr/bin/tinyproxy"
HAPROXY = "/usr/sbin/haproxy"
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/")


class _Served:
    """A server process of the tests: ``start()`` it (or ``with``), ``stop()`` it."""

    _process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        _stop(self._process)
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class TinyProxy(_Served):
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
        wait_for_port(self.port, self._process, timeout=10.0, name="tinyproxy")
        return self


class TlsFront(_Served):
    """``with TlsFront(directory, proxy, cert, key) as front:`` HAProxy terminating TLS
    (``cert``: PEM chain, ``key``: its key) on a free port in front of the started ``proxy``;
    ``url`` is the proxy's URL with the ``https`` scheme and this port."""

    def __init__(self, directory: Path, proxy: TinyProxy, cert: Path, key: Path) -> None:
        assert shutil.which(HAPROXY), "haproxy missing: .ci/run installs it"
        self.directory = directory
        self.proxy = proxy
        self.port = free_port()
        self.pem = directory / "front.pem"  # HAProxy's crt: the chain, then the key
        self.pem.write_bytes(cert.read_bytes() + key.read_bytes())
        self.pem.chmod(0o600)
        self.log = directory / "haproxy.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT``, with the tinyproxy's credentials when it has them."""
        userinfo = f"{self.proxy.user}:{self.proxy.password}@" if self.proxy.user else ""
        return f"https://{userinfo}127.0.0.1:{self.port}"

    def start(self) -> TlsFront:
        config = self.directory / "haproxy-front.cfg"
        config.write_text(
            "global\n  maxconn 100\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n"
            "  timeout server 30s\n"
            f"frontend tls\n  bind 127.0.0.1:{self.port} ssl crt {self.pem}\n"
            "  default_backend tinyproxy\n"
            f"backend tinyproxy\n  server tinyproxy 127.0.0.1:{self.proxy.port}\n",
            encoding="utf-8",
        )
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            )  # fmt: skip
        wait_for_port(self.port, self._process, timeout=10.0, name="haproxy")
        return self


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM ``process`` if it runs, SIGKILL if it lingers."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
