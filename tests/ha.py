"""Support for the high-availability tests: relay replicas behind a real HAProxy.

- ``haproxy_config(example, bind, replicas)``: ``examples/haproxy/haproxy.cfg`` with its
  ``bind`` and ``server`` lines rewritten to loopback ports (everything else as shipped:
  TCP mode, PROXY protocol v2, ``/readyz`` checks); a line the rewrite expects and does
  not find is an error, so the example and the test cannot drift apart.
- ``HAProxy``: ``haproxy -db -f`` on that config, its log in a file.
- ``Replica``: one ``python -m relay`` process with its SMTP and metrics ports, configured
  through its environment like a deployed replica, started, SIGKILLed or stopped.
- ``send_one``: one message through SMTP from a chosen loopback source address (the
  PROXY header names it; the relay's allowed networks decide on it).
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness import free_port, wait_for_port
from tests.paths import REPO
from tests.standin import StandIn
from tests.test_e2e_process import message

EXAMPLE = REPO / "examples" / "haproxy" / "haproxy.cfg"
HAPROXY = Path("/usr/sbin/haproxy")
BALANCER = "127.0.0.1"  # HAProxy's source address towards the replicas
CLIENT = "127.0.0.2"  # the applications' address (in the replicas' allowed networks)
STRANGER = "127.0.0.3"  # a client the replicas must refuse


def haproxy_config(
    example: str, bind: int, replicas: list[tuple[int, int]], proxy: str = "v2"
) -> str:
    """``example`` listening on 127.0.0.1:``bind``, its servers the ``replicas``
    ((SMTP port, metrics port) each) on loopback; ``proxy="v1"`` switches the PROXY
    header to the text version, as the example's comment tells operators to."""
    text, found = re.subn(r"(?m)^(\s*bind) \S+$", rf"\1 127.0.0.1:{bind}", example)
    if found != 1:
        raise ValueError("the HAProxy example has no single 'bind' line")
    if proxy == "v1":
        text, found = re.subn(r"(?m)^(\s*default-server .*)send-proxy-v2", r"\1send-proxy", text)
        if found != 1:
            raise ValueError("the HAProxy example's default-server sends no PROXY v2 header")
    servers = list(re.finditer(r"(?m)^(\s*)server (\S+) \S+$", text))
    if len(servers) != len(replicas):
        raise ValueError(f"the example names {len(servers)} servers, not {len(replicas)}")
    for match, (smtp, metrics) in zip(reversed(servers), reversed(replicas), strict=True):
        line = f"{match[1]}server {match[2]} 127.0.0.1:{smtp} port {metrics}"
        text = text[: match.start()] + line + text[match.end() :]
    return text


class HAProxy:
    """A foreground ``haproxy`` on a generated config (``stop`` ends it)."""

    def __init__(self, folder: Path, replicas: list[tuple[int, int]], proxy: str = "v2") -> None:
        self.port = free_port()
        self.config = folder / "haproxy.cfg"
        self.config.write_text(haproxy_config(EXAMPLE.read_text(), self.port, replicas, proxy))
        self.log = folder / "haproxy.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                [str(HAPROXY), "-db", "-f", str(self.config)], stdout=out, stderr=out
            )
        wait_for_port(self.port, self._process)
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)


class Replica:
    """One relay process on its own SMTP and metrics ports, forwarding to ``standin``."""

    def __init__(self, name: str, standin: StandIn, folder: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.metrics_port = free_port()
        self.log = folder / f"{name}.log"
        self._standin = standin
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AHASEND_", "RELAY_"))}
        return base | {
            "PYTHONPATH": str(REPO),
            "AHASEND_API_KEY": self._standin.api_key,
            "AHASEND_ACCOUNT_ID": self._standin.account_id,
            "AHASEND_API_BASE_URL": self._standin.base_url,
            "AHASEND_API_TIMEOUT": "5",
            "RELAY_HOST": "127.0.0.1",
            "RELAY_PORT": str(self.port),
            "RELAY_HOSTNAME": f"{self.name}.test",
            "RELAY_LOG_FORMAT": "json",
            "RELAY_METRICS_HOST": "127.0.0.1",
            "RELAY_METRICS_PORT": str(self.metrics_port),
            "RELAY_PROXY_PROTOCOL": "true",
            "RELAY_PROXY_TRUSTED_NETWORKS": f"{BALANCER}/32",
            "RELAY_ALLOWED_NETWORKS": f"{CLIENT}/32",
            **self._env,
        }

    def launch(self) -> None:
        """Start the process (``wait_listening`` waits for its SMTP port)."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "relay"], cwd=REPO, env=self.environment(),
                stdout=out, stderr=out,
            )  # fmt: skip

    def wait_listening(self) -> None:
        assert self.process is not None
        wait_for_port(self.port, self.process)

    def start(self) -> Replica:
        self.launch()
        self.wait_listening()
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything or give back claims."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after 15 s); the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def smtp_from(source: str, port: int, timeout: float = 30.0) -> smtplib.SMTP:
    """An SMTP session to 127.0.0.1:``port`` whose TCP source address is ``source``."""
    return smtplib.SMTP("127.0.0.1", port, timeout=timeout, source_address=(source, 0))


def send_one(port: int, subject: str, source: str = CLIENT) -> tuple[int, str]:
    """Send one message in its own session; the DATA reply (code, text), the refusal that
    ended the session, or (0, error) when it broke (the message was then not acknowledged)."""
    try:
        with smtp_from(source, port) as client:
            client.ehlo("app.test")
            client.mail("app@example.com")
            client.rcpt("ann@example.net")
            code, text = client.data(message(subject))
    except smtplib.SMTPResponseException as exc:  # a refusal: greeting, MAIL, RCPT or DATA
        return exc.smtp_code, exc.smtp_error.decode(errors="replace")
    except (OSError, smtplib.SMTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    return code, text.decode()


@contextmanager
def behind_haproxy(
    standin: StandIn, folder: Path, count: int = 3, proxy: str = "v2", **env: str
) -> Iterator[tuple[HAProxy, list[Replica]]]:
    """``count`` replicas (started together) behind HAProxy; all stopped on exit."""
    replicas = [Replica(f"relay{i + 1}", standin, folder, env) for i in range(count)]
    balancer = HAProxy(folder, [(r.port, r.metrics_port) for r in replicas], proxy)
    try:
        for replica in replicas:
            replica.launch()
        for replica in replicas:
            replica.wait_listening()
        balancer.start()
        yield balancer, replicas
    finally:
        balancer.stop()
        for replica in replicas:
            replica.stop()
