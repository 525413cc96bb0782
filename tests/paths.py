"""Where the tests find material that lives outside the repository (never copied into it)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The ``shared/`` folder beside the checkout (``RELAY_SHARED_DIR`` overrides it)."""
    candidates = [os.environ.get("RELAY_SHARED_DIR"), REPO.parent / "shared", "/work/shared"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "ahasend" / "openapi.yaml").is_file():
            return Path(candidate)
    raise RuntimeError("shared/ not found: set RELAY_SHARED_DIR to the folder with ahasend/")


SPEC = shared_dir() / "ahasend" / "openapi.yaml"
CORPUS = shared_dir() / "corpus"
