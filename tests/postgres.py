"""A private PostgreSQL cluster for the tests: Debian's ``postgresql`` binaries, never a mock.

``PgCluster`` runs ``initdb`` into a temporary folder and starts ``postgres`` on a free
loopback port with its socket in that folder. PostgreSQL refuses to run as root, so when
the tests run as root the cluster belongs to the unprivileged ``postgres`` system user
(created by Debian's package); otherwise it runs as the current user.

Host connections need a password (``scram-sha-256``), as a real deployment's do, so a test
can prove the password never reaches a log line. ``database()`` makes a fresh database
owned by the test role and returns its libpq URL; ``stop()`` / ``start()`` take the server
away and bring it back on the same port (a database outage).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import free_port

__all__ = ["PgCluster", "pg_cluster", "running_cluster"]

BINARIES = Path("/usr/lib/postgresql")
ROLE = "relay"
PASSWORD = "pg-Secret-7f3a"  # a throwaway cluster's; tests grep logs for it


def bindir() -> Path:
    """The newest installed server's ``bin`` folder (``initdb``, ``pg_ctl``, ``postgres``)."""
    found = sorted(BINARIES.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL server not installed: apt-get install postgresql")
    return found[-1].parent


class PgCluster:
    """One private cluster: start it, make databases, stop and restart it."""

    def __init__(self) -> None:
        self.bin = bindir()
        self.root = Path(tempfile.mkdtemp(prefix="relay-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        self._counter = 0

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a cluster command as the cluster's owner; output captured."""
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        return subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, check=check, timeout=60
        )

    def init(self) -> None:
        """``initdb`` with a password-protected role ``relay`` as the superuser."""
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", ROLE, "--pwfile", str(pwfile),
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()

    SERVER_SETTINGS = "-c fsync=off -c max_connections=200"
    """``postgres`` options beyond where it listens: no flush to disk, for quick tests."""

    def start(self) -> None:
        """Start (or restart) the server on its port; returns once it accepts connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} {self.SERVER_SETTINGS}"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
            "-o", options, "-w", "-t", "30", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server at once (fast shutdown: open sessions are cut)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` through the local socket (trust) and return its unaligned output."""
        done = self._run(
            str(self.bin / "psql"), "-h", str(self.root), "-p", str(self.port), "-U", ROLE,
            "-d", database, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql,
        )  # fmt: skip
        return done.stdout.strip()

    def url(self, database: str, *, password: str = PASSWORD) -> str:
        """The libpq URL of ``database`` over TCP with the role's password."""
        return f"postgresql://{ROLE}:{password}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """Create a fresh, empty database; return its URL."""
        self._counter += 1
        name = f"t{os.getpid()}_{self._counter}_{int(time.monotonic() * 1000) % 100000}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        """Stop the server (if running) and remove every file of the cluster."""
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop",
            check=False,
        )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def running_cluster() -> Iterator[PgCluster]:
    """A new private cluster, initialised and started; destroyed on exit. Tests that stop
    and start the server take one of their own."""
    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A started private cluster shared by the session's tests (each takes its own database)."""
    with running_cluster() as cluster:
        yield cluster
