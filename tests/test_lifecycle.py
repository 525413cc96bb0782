"""One lifecycle, one cleanup path: a failure at any start-up step closes what came before.

Each test makes one start-up step fail for real (a file where the spool directory should
be, the SMTP, SMTPS or admin port already taken, the readiness announcement raising) and
checks that everything opened before it was closed: listeners and the admin server no
longer accept connections, the spool no longer answers, the API client was closed, the
worker stopped, and the signal handlers that were there before are back.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from relay.config import Settings
from relay.errors import SpoolUnavailable
from relay.ops.admin import AdminListenError
from relay.ops.log import configure
from relay.server import RelayServer, run
from tests.fakes import ACCEPTED, ScriptedSender
from tests.harness import free_port, settings_for
from tests.security_support import Certs, make_certs

SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def log() -> io.StringIO:
    out = io.StringIO()
    configure(fmt="json", level="info", stream=out)
    return out


def events(log: io.StringIO) -> list[str]:
    return [json.loads(line)["event"] for line in log.getvalue().splitlines()]


@contextmanager
def taken() -> Iterator[int]:
    """A port another program listens on for the duration."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def refuses(port: int) -> bool:
    """True when nothing accepts connections on ``port`` any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def full_settings(tmp_path: Path, certs: Certs, **overrides: Any) -> Settings:
    """Every start-up step in use: spool, both listeners, the admin server."""
    values: dict[str, Any] = {
        "relay_port": free_port(),
        "relay_smtps_port": free_port(),
        "relay_metrics_port": free_port(),
        "relay_spool_dir": tmp_path / "spool",
        "relay_tls_cert": certs.cert,
        "relay_tls_key": certs.key,
    }
    return settings_for(**(values | overrides))


async def assert_spool_closed(server: RelayServer) -> None:
    assert server.spool is not None
    with pytest.raises(SpoolUnavailable):
        await server.spool.stats()


async def test_an_unusable_spool_stops_start_up_before_anything_listens(
    tmp_path: Path, certs: Certs
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    settings = full_settings(tmp_path, certs, relay_spool_dir=blocker)
    server = RelayServer(settings, ScriptedSender([ACCEPTED]))
    with pytest.raises(SpoolUnavailable, match="cannot open spool"):
        await server.start()
    assert refuses(settings.relay_port)
    assert settings.relay_smtps_port is not None
    assert refuses(settings.relay_smtps_port)
    assert not server.listening


async def test_a_taken_smtp_port_closes_the_spool_and_the_client(
    tmp_path: Path, certs: Certs
) -> None:
    sender = ScriptedSender([ACCEPTED])
    with taken() as port:
        server = RelayServer(full_settings(tmp_path, certs, relay_port=port), sender)
        with pytest.raises(OSError, match="address already in use"):
            await server.start()
    await assert_spool_closed(server)
    assert sender.closed


@pytest.mark.parametrize(
    ("step", "error", "message"),
    [
        ("relay_smtps_port", OSError, "address already in use"),
        ("relay_metrics_port", AdminListenError, "cannot serve metrics on 127.0.0.1:"),
    ],
)
async def test_a_taken_later_port_closes_the_listeners_spool_and_client(
    tmp_path: Path, certs: Certs, step: str, error: type[Exception], message: str
) -> None:
    sender = ScriptedSender([ACCEPTED])
    with taken() as port:
        settings = full_settings(tmp_path, certs, **{step: port})
        server = RelayServer(settings, sender)
        with pytest.raises(error, match=message):
            await server.start()
    opened = [settings.relay_port, settings.relay_smtps_port]
    assert all(refuses(p) for p in opened if p is not None and p != port)
    assert not server.listening
    await assert_spool_closed(server)
    assert sender.closed


class FailingReady(asyncio.Event):
    """A readiness announcement that fails: the last start-up step of ``run``."""

    def set(self) -> None:
        raise RuntimeError("cannot announce readiness")


def keep(signum: int, frame: FrameType | None) -> None:
    raise AssertionError("the test's own handler ran")


@pytest.fixture
def own_handlers() -> Iterator[None]:
    """The test's own handlers for SIGHUP/SIGTERM/SIGINT (what ``run`` must restore)."""
    before = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, keep)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def assert_own_handlers() -> None:
    assert [signal.getsignal(signum) for signum in SIGNALS] == [keep] * len(SIGNALS)


@pytest.mark.usefixtures("own_handlers")
async def test_a_failure_after_start_stops_the_worker_and_closes_everything(
    tmp_path: Path, certs: Certs, log: io.StringIO
) -> None:
    settings = full_settings(tmp_path, certs)
    sender = ScriptedSender([ACCEPTED])
    server = RelayServer(settings, sender)
    with pytest.raises(RuntimeError, match="cannot announce readiness"):
        await run(settings, ready=FailingReady(), server=server)
    assert_own_handlers()
    assert settings.relay_smtps_port is not None
    assert settings.relay_metrics_port is not None
    for port in (settings.relay_port, settings.relay_smtps_port, settings.relay_metrics_port):
        assert refuses(port)
    await assert_spool_closed(server)
    assert sender.closed
    logged = events(log)
    assert logged.index("worker_started") < logged.index("worker_stopped")
    assert "worker_round_failed" not in logged
    assert logged[-1] == "stopped"


@pytest.mark.usefixtures("own_handlers")
async def test_a_failed_start_restores_the_signal_handlers(tmp_path: Path, certs: Certs) -> None:
    with taken() as port:
        settings = full_settings(tmp_path, certs, relay_port=port)
        with pytest.raises(OSError, match="address already in use"):
            await run(settings)
    assert_own_handlers()


@pytest.mark.usefixtures("own_handlers")
async def test_a_served_and_stopped_relay_restores_the_signal_handlers(
    tmp_path: Path, certs: Certs
) -> None:
    settings = full_settings(tmp_path, certs)
    ready = asyncio.Event()
    serving = asyncio.create_task(run(settings, ready))
    await asyncio.wait_for(ready.wait(), 10)
    assert signal.getsignal(signal.SIGTERM) is not keep  # the loop's handler meanwhile
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, 15)
    assert_own_handlers()
    assert refuses(settings.relay_port)
