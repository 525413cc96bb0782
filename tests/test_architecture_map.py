"""The README's "Architecture" section is the map of the package: it names every module.

A module is named when its name appears in the section as a code span (`` `tenants` ``) or
its path does (``relay/smtp/session.py``). A new module missing from the map fails here,
and so does a path left on the map after its module went.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "relay"


def architecture_section() -> str:
    """The README's text from "## Architecture" to the next second-level heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Architecture\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def named(section: str, module: Path) -> bool:
    """Whether the section names ``module``: its name as a code span, or its path."""
    return f"`{module.stem}`" in section or module.relative_to(ROOT).as_posix() in section


def test_every_module_is_on_the_map() -> None:
    section = architecture_section()
    modules = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"]
    assert len(modules) > 50
    assert [str(m.relative_to(ROOT)) for m in modules if not named(section, m)] == []


def test_every_path_on_the_map_exists() -> None:
    paths = set(re.findall(r"relay/[\w/]+(?:\.py|/)", architecture_section()))
    assert paths
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []
