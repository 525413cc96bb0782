"""requirements/image.lock: every dependency of the image pinned to one version, with hashes."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.paths import REPO

LOCK = REPO / "requirements" / "image.lock"


def pins() -> dict[str, tuple[str, list[str]]]:
    """{name: (version, hashes)} of the lock file."""
    text = re.sub(r"\\\n\s*", " ", LOCK.read_text())
    found = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line)
        assert match, f"not an exact pin: {line}"
        hashes = re.findall(r"--hash=sha256:(\w{64})", line)
        found[canonicalize_name(match[1])] = (match[2], hashes)
    return found


def test_every_image_dependency_is_pinned_with_hashes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["fast"]
    ]
    build = [Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())
             ["build-system"]["requires"]]  # fmt: skip
    locked = pins()
    for requirement in wanted + build:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in {LOCK.name}"
        version, hashes = locked[name]
        assert requirement.specifier.contains(version, prereleases=True), (name, version)
    for name, (_, hashes) in locked.items():
        assert hashes, f"{name} has no hash"
