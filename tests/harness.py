"""A real relay on a loopback port, served from a background thread for synchronous tests.

Tests drive it with real SMTP clients (smtplib, swaks) exactly as an application would.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from relay.config import Settings
from relay.delivery.sender import Sender
from relay.server import RelayServer


class RunningRelay:
    """A started RelayServer whose event loop runs in a daemon thread."""

    def __init__(self, settings: Settings, sender: Sender | None = None) -> None:
        self.settings = settings
        self._sender = sender
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.server: RelayServer | None = None

    def start(self) -> RunningRelay:
        self._thread.start()
        self.server = self.call(self._start())
        return self

    async def _start(self) -> RelayServer:
        """Start the relay; return once its start-up account read is done too, so that
        tests see the upstream requests and readiness that follow from their own steps."""
        server = RelayServer(self.settings, self._sender)
        await server.start()
        if server.account_check is not None:
            await asyncio.wait([server.account_check], timeout=10)
        return server

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run ``coro`` on the relay's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def reload(self) -> None:
        """SIGHUP's work (``RelayServer.reload``), on the relay's loop as the signal runs it."""
        assert self.server is not None
        server = self.server

        async def reload() -> None:
            server.reload()

        self.call(reload())

    def stop(self, timeout: float = 5.0) -> None:
        if self.server is not None:
            self.call(self.server.stop(grace=timeout), timeout + 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], timeout: float = 20.0, name: str = "process"
) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:``port``; fail when
    ``process`` (called ``name`` in the error) exits first or ``timeout`` runs out."""
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited ({process.returncode}) during start-up")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} ({name})")


def settings_for(standin: Any | None = None, **overrides: Any) -> Settings:
    """Settings for a relay on 127.0.0.1:0 that forwards to ``standin`` (or runs dry)."""
    values: dict[str, Any] = {
        "relay_host": "127.0.0.1",
        "relay_port": 0,
        "relay_hostname": "relay.test",
        "relay_shutdown_timeout": 2.0,
        # One attempt per request unless a test asks for in-transaction retries, so that
        # a scripted failure shows up as its own reply.
        "relay_retry_deadline": 0.0,
    }
    if standin is None:
        values["relay_dry_run"] = True
    else:
        values |= {
            "ahasend_api_key": standin.api_key,
            "ahasend_account_id": standin.account_id,
            "ahasend_api_base_url": standin.base_url,
            "ahasend_api_timeout": 5.0,
        }
    return Settings(**(values | overrides))


@contextmanager
def running_relay(settings: Settings, sender: Sender | None = None) -> Iterator[RunningRelay]:
    relay = RunningRelay(settings, sender).start()
    try:
        yield relay
    finally:
        relay.stop()
