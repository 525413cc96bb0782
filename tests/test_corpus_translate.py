"""Every real-world message of the shared corpus gives valid requests or a PermanentError."""

from __future__ import annotations

import json

import pytest

from relay.errors import PermanentError
from relay.translate.message import translate
from tests.paths import CORPUS
from tests.spec import assert_valid_request

FILES = sorted(
    str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".md"
)


def test_the_corpus_is_there() -> None:
    assert len(FILES) > 200


@pytest.mark.parametrize("relative", FILES)
def test_corpus_message_translates_or_is_refused_cleanly(relative: str) -> None:
    raw = (CORPUS / relative).read_bytes()
    try:
        translated = translate(raw, "sender@example.com", ["rcpt@example.com"])
    except PermanentError:
        return
    assert translated.payloads
    for payload in translated.payloads:
        assert_valid_request(payload)
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
        assert len(payload.get("attachments", [])) == translated.attachment_count
