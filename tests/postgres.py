"""A private PostgreSQL cluster for the tests: Debian's ``postgresql`` binaries, never a mock.

``PgCluster`` runs ``initdb`` into a temporary folder and starts ``postgres`` on a free
loopback port with its socket in that folder. PostgreSQL refuses to run as root, so when
the tests run as root the cluster belongs to the unprivileged ``postgres`` system user
(created by Debian's package); otherwise it runs as the current user.

Host connections need a password (``scram-sha-256``), as a real deployment's do, so a test
can prove the password never reaches a log line. ``database()`` makes a fresh database
owned by the test role and returns its libpq URL; ``stop()`` / ``start()`` take the server
away and bring it back on the same port (a database outage).

``PgCluster(tls=ServerTls(cert, key))`` starts the server with ``ssl=on`` and that
certificate (its key copied in, owned by the server, mode 0600), logs each connection
(``log_connections``: the server log says ``SSL enabled`` for a TLS one), and with
``required`` (the default) accepts host connections on ``hostssl`` lines only: a client
without TLS is refused.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import free_port

__all__ = ["PgCluster", "ServerTls", "pg_cluster", "running_cluster"]

BINARIES = Path("/usr/lib/postgresql")
ROLE = "relay"
PASSWORD = "pg-Secret-7f3a"  # a throwaway cluster's; tests grep logs for it


def bindir() -> Path:
    """The newest installed server's ``bin`` folder (``initdb``, ``pg_ctl``, ``postgres``)."""
    found = sorted(BINARIES.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL server not installed: apt-get install postgresql")
    return found[-1].parent


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate (PEM, chain first) and key; ``required``: TLS or refused."""

    cert: Path
    key: Path
    required: bool = True


class PgCluster:
    """One private cluster: start it, make databases, stop and restart it."""

    def __init__(self, tls: ServerTls | None = None) -> None:
        self.bin = bindir()
        self.root = Path(tempfile.mkdtemp(prefix="relay-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.tls = tls
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
        if self.tls is not None:
            self._install_tls(self.tls)

    def _own(self, path: Path) -> Path:
        """``path`` made the cluster owner's, readable by it alone."""
        path.chmod(0o600)
        if self._as_postgres:
            shutil.chown(path, "postgres", "postgres")
        return path

    def _install_tls(self, tls: ServerTls) -> None:
        """Copy the certificate and key in (the server refuses a key others can read);
        with ``required``, turn the ``host`` lines of pg_hba.conf into ``hostssl`` ones."""
        self._own(Path(shutil.copyfile(tls.cert, self.root / "server.crt")))
        self._own(Path(shutil.copyfile(tls.key, self.root / "server.key")))
        if tls.required:
            hba = self.data / "pg_hba.conf"
            lines = hba.read_text(encoding="utf-8").splitlines()
            hba.write_text(
                "".join(re.sub(r"^host(\s)", r"hostssl\1", line) + "\n" for line in lines),
                encoding="utf-8",
            )

    SERVER_SETTINGS = "-c fsync=off -c max_connections=200"
    """``postgres`` options beyond where it listens: no flush to disk, for quick tests."""

    def start(self) -> None:
        """Start (or restart) the server on its port; returns once it accepts connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} {self.SERVER_SETTINGS}"
        )
        if self.tls is not None:
            options += (
                f" -c ssl=on -c ssl_cert_file={self.root / 'server.crt'}"
                f" -c ssl_key_file={self.root / 'server.key'} -c log_connections=on"
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

    def server_log(self) -> str:
        """What the server has logged so far (each connection, with ``tls``)."""
        return (self.root / "server.log").read_text(encoding="utf-8", errors="replace")

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
def running_cluster(tls: ServerTls | None = None) -> Iterator[PgCluster]:
    """A new private cluster (with ``tls``, see ``PgCluster``), initialised and started;
    destroyed on exit. Tests that stop and start the server take one of their own."""
    cluster = PgCluster(tls)
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
