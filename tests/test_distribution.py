"""The distribution: ``python -m build`` makes an sdist and a wheel that ``twine check``
accepts, and the wheel carries the relay (and its CLI) but no tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from relay import __version__
from tests.paths import REPO


def test_build_and_twine_check(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "node_modules", "__pycache__", "*.egg-info", "build", "dist", "results",
    ))  # fmt: skip
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)],
                           capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheel = dist / f"ahasend_relay-{__version__}-py3-none-any.whl"
    sdist = dist / f"ahasend_relay-{__version__}.tar.gz"
    assert wheel.is_file()
    assert sdist.is_file()
    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel),
                              str(sdist)], capture_output=True, text=True, timeout=120,
                             check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2
    names = zipfile.ZipFile(wheel).namelist()
    assert "relay/cli/main.py" in names
    assert "relay/envfile.py" in names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ahasend-relay = relay.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
