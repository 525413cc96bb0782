"""systemd's notify protocol (sd_notify), with the standard library only.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``: a unix datagram socket (a path,
or an abstract name written with a leading ``@``). The relay sends ``READY=1`` once it
listens, ``STOPPING=1`` when shutdown begins and, when ``WatchdogSec=`` is set (systemd
then passes ``WATCHDOG_USEC`` and ``WATCHDOG_PID``), ``WATCHDOG=1`` at half that interval.

The watchdog is honest: the pings come from a task on the relay's event loop, so a loop
that is blocked or dead stops them and systemd restarts the service. Outside systemd
(no ``NOTIFY_SOCKET``) every method is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

from relay.ops.log import get_logger

__all__ = ["Notifier"]

log = get_logger("relay.ops.systemd")


class Notifier:
    """Sends sd_notify datagrams to ``socket_path``; does nothing when that is None."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self._address = _address(socket_path) if socket_path else None
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_values(
        cls, notify_socket: str | None, watchdog_usec: int | None, watchdog_pid: int | None
    ) -> Notifier:
        """A Notifier from systemd's variables; the watchdog only if it is meant for us."""
        if watchdog_pid is not None and watchdog_pid != os.getpid():
            watchdog_usec = None
        return cls(notify_socket, watchdog_usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def notify(self, state: str) -> bool:
        """Send ``state`` (e.g. ``READY=1``); False when not under systemd or it failed."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode("utf-8"), self._address)
        except OSError as exc:
            log.warning("sd_notify_failed", state=state, error=str(exc))
            return False
        return True

    def ready(self, status: str = "", healthy: Callable[[], bool] = lambda: True) -> None:
        """Tell systemd the service is up, and start the watchdog pings if asked for.

        Each ping is sent from the running event loop and only while ``healthy()`` holds.
        """
        self.notify(f"READY=1\nSTATUS={status}" if status else "READY=1")
        interval = self.watchdog_interval
        if interval is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watchdog(interval, healthy))

    async def stopping(self) -> None:
        """Tell systemd shutdown has begun and stop the watchdog pings."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.notify("STOPPING=1")

    async def _watchdog(self, interval: float, healthy: Callable[[], bool]) -> None:
        while True:
            if healthy():
                self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def _address(socket_path: str) -> str | bytes:
    """The sendto() address: ``@name`` is the abstract socket ``\\0name``."""
    if socket_path.startswith("@"):
        return b"\0" + socket_path[1:].encode("utf-8")
    return socket_path
