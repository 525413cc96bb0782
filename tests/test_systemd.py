"""sd_notify: datagrams on a real unix socket, from the Notifier and from a real relay."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.ops.systemd import Notifier
from tests.ops_support import relay_process


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a path, as systemd's NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        yield sock, str(path)


def receive_until(sock: socket.socket, wanted: str, timeout: float = 10) -> list[str]:
    """Every datagram received up to and including one containing ``wanted``."""
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        seen.append(sock.recv(4096).decode())
        if wanted in seen[-1].splitlines():
            return seen
    raise AssertionError(f"{wanted} not received; got {seen}")


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier(None, watchdog_usec=1_000_000)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.notify("READY=1") is False


def test_notify_sends_to_a_path_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert Notifier(path).notify("READY=1")
    assert sock.recv(4096) == b"READY=1"


def test_notify_sends_to_an_abstract_socket() -> None:
    name = f"ahasend-relay-test-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier("@" + name).notify("STOPPING=1")
        assert sock.recv(4096) == b"STOPPING=1"


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    assert Notifier(str(tmp_path / "missing.sock")).notify("READY=1") is False


def test_watchdog_for_another_pid_is_ignored() -> None:
    assert Notifier.from_values("/run/x", 2_000_000, os.getpid() + 1).watchdog_interval is None
    assert Notifier.from_values("/run/x", 2_000_000, os.getpid()).watchdog_interval == 1.0


async def test_watchdog_pings_until_stopping(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    sock.setblocking(False)
    notifier = Notifier(path, watchdog_usec=20_000)  # a ping every 10 ms
    notifier.ready()
    loop = asyncio.get_running_loop()
    received = [await loop.sock_recv(sock, 4096) for _ in range(3)]
    await notifier.stopping()
    assert received == [b"READY=1", b"WATCHDOG=1", b"WATCHDOG=1"]
    rest = []
    while (data := await asyncio.wait_for(loop.sock_recv(sock, 4096), 2)) != b"STOPPING=1":
        rest.append(data)
    assert set(rest) <= {b"WATCHDOG=1"}
    await asyncio.sleep(0.05)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)  # no ping after STOPPING=1


@pytest.mark.e2e
def test_real_relay_notifies_ready_watchdog_and_stopping(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    with relay_process(tmp_path, "--dry-run", NOTIFY_SOCKET=path, WATCHDOG_USEC="200000") as relay:
        [ready] = receive_until(sock, "READY=1")
        assert f"STATUS=listening on 127.0.0.1:{relay.port}" in ready.splitlines()
        assert receive_until(sock, "WATCHDOG=1") == ["WATCHDOG=1"]
        assert relay.stop() == 0
        assert set(receive_until(sock, "STOPPING=1")[:-1]) <= {"WATCHDOG=1"}


@pytest.mark.e2e
def test_real_relay_notifies_ready_on_an_abstract_socket(tmp_path: Path) -> None:
    name = f"ahasend-relay-test-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(10)
        with relay_process(tmp_path, "--dry-run", NOTIFY_SOCKET="@" + name) as relay:
            assert receive_until(sock, "READY=1")
            assert relay.stop() == 0


async def test_watchdog_pings_only_while_healthy(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    sock.setblocking(False)
    healthy = [False]
    notifier = Notifier(path, watchdog_usec=20_000)
    notifier.ready(healthy=lambda: healthy[0])
    loop = asyncio.get_running_loop()
    assert await loop.sock_recv(sock, 4096) == b"READY=1"
    await asyncio.sleep(0.1)  # several intervals, no ping while unhealthy
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
    healthy[0] = True
    assert await asyncio.wait_for(loop.sock_recv(sock, 4096), 2) == b"WATCHDOG=1"
    await notifier.stopping()
