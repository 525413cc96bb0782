"""The relay's translation of the whole shared corpus against an independent MIME parser.

postal-mime (npm, run by node once per session) parses every corpus message; both sides
are summarised and normalised as ``tests.differential`` documents, and every field that
still differs must be listed, with its reason, in ``tests/differential_allowlist.txt``. A
new difference fails, and so does an allow-list entry that no longer differs (the list
stays short and true).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay.errors import PermanentError
from relay.translate.message import translate
from tests.differential import (
    SENDER,
    allow_list,
    as_crlf,
    differences,
    ours,
    recipients,
    reference,
    theirs,
)
from tests.paths import CORPUS

FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".md")


@pytest.fixture(scope="session")
def references() -> dict[str, Any]:
    """postal-mime's summary of every corpus file, from one node process."""
    return reference(FILES)


@pytest.fixture(scope="session")
def found(references: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(file, field) -> description of every difference over the corpus."""
    result: dict[tuple[str, str], str] = {}
    for path in FILES:
        for field, what in _differences(path, references[str(path)]).items():
            result[(str(path.relative_to(CORPUS)), field)] = what
    return result


def _differences(path: Path, ref: dict[str, Any]) -> dict[str, str]:
    assert "error" not in ref, f"postal-mime failed on {path}: {ref}"
    raw = as_crlf(path.read_bytes())
    envelope = recipients(ref)
    try:
        translated = translate(raw, SENDER, envelope)
    except PermanentError as exc:
        return {"refused": str(exc)}
    return differences(ours(translated.payloads), theirs(ref, envelope, raw))


def test_the_reference_parsed_the_whole_corpus(references: dict[str, Any]) -> None:
    assert len(FILES) > 200
    assert sorted(references) == sorted(map(str, FILES))


def test_every_difference_from_the_reference_is_allow_listed(
    found: dict[tuple[str, str], str],
) -> None:
    new = {f"{path} {field}": what for (path, field), what in found.items()
           if (path, field) not in allow_list()}  # fmt: skip
    assert new == {}, "differences from postal-mime that tests/differential_allowlist.txt lacks"


def test_every_allow_listed_difference_still_exists(found: dict[tuple[str, str], str]) -> None:
    stale = sorted(f"{path} {field}" for path, field in allow_list() if (path, field) not in found)
    assert stale == [], "allow-list entries that no longer differ: remove them"


def test_the_allow_list_stays_short() -> None:
    assert len(allow_list()) <= 0.25 * len(FILES)


def test_a_new_difference_is_caught(references: dict[str, Any]) -> None:
    """The comparison is not vacuous: a changed subject or file shows up."""
    path = CORPUS / "imap_tools" / "base.eml"
    raw = as_crlf(path.read_bytes())
    ref = references[str(path)]
    mine = ours(translate(raw, SENDER, recipients(ref)).payloads)
    assert differences(mine, theirs(ref, recipients(ref), raw)) == {}
    mine["subject"] += " "
    mine["attachments"] = [("x.jpg", *mine["attachments"][0][1:])]
    assert set(differences(mine, theirs(ref, recipients(ref), raw))) == {"subject", "attachments"}
