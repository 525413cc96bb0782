"""Spool permissions: directory 0700, files 0600, whatever existed before and whatever umask.

The spool holds whole messages. A directory that already exists with 0755 (made by an
installer, a volume, an older relay) is tightened; one the relay cannot tighten (another
user's, open to all) makes ``serve`` exit 73 naming it, like a spool it cannot open.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from relay.delivery.spool import FILENAME, SqliteSpool
from relay.ops.log import configure
from tests.ops_support import clean_env
from tests.paths import REPO

NOBODY = 65534


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The common 022 umask, under which SQLite alone would make 0644 files."""
    old = os.umask(0o022)
    yield
    os.umask(old)


async def add_one(spool: SqliteSpool) -> None:
    await spool.add(b"{}", "key-1", mail_from="a@x.test", rcpt_tos=["b@y.test"],
                    error="test", first_retry=30, max_age=3600)  # fmt: skip


async def test_a_new_spool_in_an_existing_0755_directory_is_private(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    spool = SqliteSpool(directory)
    try:
        await add_one(spool)
        db = directory / FILENAME
        wal, shm = db.with_name(FILENAME + "-wal"), db.with_name(FILENAME + "-shm")
        assert wal.exists()
        assert shm.exists()
        assert mode(directory) == 0o700
        assert (mode(db), mode(wal), mode(shm)) == (0o600, 0o600, 0o600)
    finally:
        await spool.close()


async def test_an_older_world_readable_spool_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    directory.chmod(0o755)
    db = directory / FILENAME
    old = sqlite3.connect(db)  # as an older relay left it: 0644 file, 0644 -wal
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE t (x)")
    old.close()
    db.chmod(0o644)
    leftover = db.with_name(FILENAME + "-wal")
    leftover.write_bytes(b"")
    leftover.chmod(0o644)
    spool = SqliteSpool(directory)
    try:
        await add_one(spool)
        assert mode(directory) == 0o700
        assert mode(db) == 0o600
        for side in ("-wal", "-shm"):
            assert mode(db.with_name(FILENAME + side)) == 0o600
    finally:
        await spool.close()


@pytest.fixture
def foreign_open_directory() -> Iterator[Path]:
    """A directory open to all (0777) that belongs to root, for a relay running as nobody."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the relay as another user (setpriv)")
    directory = Path(tempfile.mkdtemp(prefix="relay-spool-"))  # in /tmp: nobody reaches it
    directory.chmod(0o777)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture
def reachable_by_nobody() -> Iterator[None]:
    """Let user nobody reach the checkout and the interpreter (``o+x`` on each ancestor
    folder that lacks it, e.g. the 0700 folder of ``mktemp -d`` a clean clone lives in),
    as an install the relay's user runs from must be; restored afterwards."""
    changed: list[tuple[Path, int]] = []
    for start in (REPO, Path(sys.executable).resolve()):
        for folder in [start, *start.parents] if start.is_dir() else start.parents:
            current = folder.stat().st_mode
            if not current & stat.S_IXOTH and (folder, current) not in changed:
                changed.append((folder, current))
                folder.chmod(current | stat.S_IXOTH)
    try:
        yield
    finally:
        for folder, current in changed:
            folder.chmod(stat.S_IMODE(current))


def test_serve_refuses_an_open_spool_directory_it_cannot_tighten_with_73(
    foreign_open_directory: Path, reachable_by_nobody: None
) -> None:
    env = clean_env(RELAY_SPOOL_DIR=str(foreign_open_directory), RELAY_LOG_FORMAT="json")
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
               sys.executable, "-m", "relay", "serve", "--dry-run", "--port", "0"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30,
                            check=False, cwd=REPO)  # fmt: skip
    assert result.returncode == 73, result.stderr
    failed = json.loads(result.stderr.splitlines()[-1])
    assert (failed["event"], failed["exit_status"]) == ("startup_failed", 73)
    assert failed["error"] == (
        f"spool {foreign_open_directory} is mode 0777, open to other users, and cannot be "
        "made 0700: Operation not permitted; chmod it, or point RELAY_SPOOL_DIR at a "
        "directory of the relay's own"
    )
    assert mode(foreign_open_directory) == 0o777
    assert not (foreign_open_directory / FILENAME).exists()


async def test_tightening_is_logged(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    directory.chmod(0o755)
    out = io.StringIO()
    configure(fmt="json", level="info", stream=out)
    try:
        spool = SqliteSpool(directory)
        await spool.close()
    finally:
        structlog.reset_defaults()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    tightened = [e for e in events if e["event"] == "spool_permissions_tightened"]
    assert [(e["path"], e["was"], e["now"]) for e in tightened] == [
        (str(directory), "0755", "0700")
    ]
