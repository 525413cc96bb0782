"""handler.serialise: the request body is the same compact UTF-8 JSON with or without orjson."""

from __future__ import annotations

import json
from typing import Any

from relay.translate.wire import serialise

PAYLOAD: dict[str, Any] = {
    "from": {"email": "zoe@example.test", "name": "Zoë Ünïcode"},
    "to": [{"email": "a@x.test"}, {"email": "b@x.test", "name": 'Quote " and \\ slash'}],
    "subject": "Grüße ✓ 日本語 \U0001f600",
    "text_content": "line 1\r\nline 2\ttab\x00nul",
    "attachments": [{"file_name": "a.bin", "data": "AAEC" * 100, "base64": True}],
    "headers": {"X-Count": "3"},
    "sandbox": False,
}


def test_body_is_compact_utf8_json_identical_to_the_stdlib_rendering() -> None:
    expected = json.dumps(PAYLOAD, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert serialise(PAYLOAD) == expected
    assert json.loads(serialise(PAYLOAD)) == PAYLOAD
