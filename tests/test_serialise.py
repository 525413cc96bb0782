"""relay.translate.wire: the request body is the same compact UTF-8 JSON with or without
orjson, in memory or streamed (attachment data left in the received message); a dry run
logs a streamed one as it logs the same body in memory, without copying its data."""

from __future__ import annotations

import base64
import json
import os
import tracemalloc
from typing import Any

import pytest
import structlog

from relay.delivery.sender import DryRunSender
from relay.translate.rawslice import CHUNK, RawBase64, RawEncoded
from relay.translate.wire import DUMPS, Body, Dumps, StreamedBody, json_dumps, serialise

PAYLOAD: dict[str, Any] = {
    "from": {"email": "zoe@example.test", "name": "Zoë Ünïcode"},
    "to": [{"email": "a@x.test"}, {"email": "b@x.test", "name": 'Quote " and \\ slash'}],
    "subject": "Grüße ✓ 日本語 \U0001f600",
    "text_content": "line 1\r\nline 2\ttab\x00nul",
    "attachments": [{"file_name": "a.bin", "data": "AAEC" * 100, "base64": True}],
    "headers": {"X-Count": "3"},
    "sandbox": False,
}
BOTH: dict[str, Dumps] = {"default": DUMPS, "stdlib": json_dumps}


def _stdlib(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@pytest.mark.parametrize("dumps", BOTH.values(), ids=BOTH.keys())
def test_body_is_compact_utf8_json_identical_to_the_stdlib_rendering(dumps: Dumps) -> None:
    body = serialise(PAYLOAD, dumps)
    assert body == _stdlib(PAYLOAD)
    assert json.loads(body) == PAYLOAD


def _raw_attachments(count: int) -> tuple[bytearray, list[RawBase64], list[str]]:
    """A fake received message holding ``count`` base64 runs (76-character lines)."""
    raw, slices, values = bytearray(b"headers\r\n\r\n"), [], []
    for _ in range(count):
        text = base64.b64encode(os.urandom(3 * CHUNK + 7))
        start = len(raw)
        raw += b"".join(text[i : i + 76] + b"\r\n" for i in range(0, len(text), 76))
        slices.append(RawBase64(raw, start, len(raw)))
        values.append(text.decode("ascii"))
        raw += b"--boundary\r\n"
    return raw, slices, values


def _with(data: list[Any]) -> dict[str, Any]:
    files = [{"file_name": f"{i}.pdf", "data": d, "base64": True} for i, d in enumerate(data)]
    return PAYLOAD | {"attachments": files}


@pytest.mark.parametrize("dumps", BOTH.values(), ids=BOTH.keys())
def test_raw_data_is_streamed_as_the_json_of_its_text(dumps: Dumps) -> None:
    _, slices, values = _raw_attachments(2)
    body = serialise(_with(slices), dumps)
    assert isinstance(body, StreamedBody)
    expected = _stdlib(_with(values))
    assert body.to_bytes() == expected
    assert len(body) == len(expected)
    first, again = list(body.chunks()), list(body.chunks())  # a retry reads it again
    assert first == again
    assert b"".join(first) == expected
    assert max(len(chunk) for chunk in first) <= CHUNK


@pytest.mark.parametrize("dumps", BOTH.values(), ids=BOTH.keys())
def test_raw_bytes_are_streamed_as_the_json_of_their_base64(dumps: Dumps) -> None:
    """``RawEncoded`` (an attached message sent as received) beside a ``RawBase64``."""
    raw, slices, values = _raw_attachments(1)
    start = len(raw)
    raw += os.urandom(2 * CHUNK + 1)  # not a multiple of 3: the last piece is padded
    encoded = RawEncoded(raw, start, len(raw))
    body = serialise(_with([encoded, *slices]), dumps)
    assert isinstance(body, StreamedBody)
    expected = _stdlib(_with([base64.b64encode(raw[start:]).decode("ascii"), *values]))
    assert body.to_bytes() == expected
    assert len(body) == len(expected)
    assert max(len(chunk) for chunk in body.chunks()) <= CHUNK


@pytest.mark.parametrize("dumps", BOTH.values(), ids=BOTH.keys())
def test_anything_else_json_cannot_take_is_still_refused(dumps: Dumps) -> None:
    with pytest.raises(TypeError):
        serialise(PAYLOAD | {"subject": object()}, dumps)


async def _dry_run(body: Body) -> dict[str, Any]:
    """The payload a dry run logs for ``body``."""
    with structlog.testing.capture_logs() as logs:
        delivery = await DryRunSender().send(body, "k")
    assert delivery.status is None
    (event,) = [e for e in logs if e["event"] == "dry_run"]
    payload: dict[str, Any] = event["payload"]
    return payload


async def test_a_dry_run_logs_a_streamed_body_as_it_logs_the_same_body_in_memory() -> None:
    """Both kinds of data left in the message, beside data in the JSON, long and short."""
    raw, slices, values = _raw_attachments(1)
    start = len(raw)
    raw += os.urandom(3 * CHUNK)
    encoded = base64.b64encode(raw[start:]).decode("ascii")
    inline = base64.b64encode(os.urandom(300)).decode("ascii")
    streamed = serialise(_with([slices[0], RawEncoded(raw, start, len(raw)), inline, "QQ=="]))
    assert isinstance(streamed, StreamedBody)
    in_memory = serialise(_with([values[0], encoded, inline, "QQ=="]))
    assert isinstance(in_memory, bytes)
    shown = await _dry_run(streamed)
    assert shown == await _dry_run(in_memory)
    data = [a["data"] for a in shown["attachments"]]
    assert data == [f"{values[0][:40]}... ({len(values[0])} chars)",
                    f"{encoded[:40]}... ({len(encoded)} chars)",
                    f"{inline[:40]}... ({len(inline)} chars)", "QQ=="]  # fmt: skip


async def test_a_dry_run_of_a_streamed_body_does_not_copy_its_data() -> None:
    raw = bytearray(os.urandom(8 * 1024 * 1024))
    body = serialise(_with([RawEncoded(raw, 0, len(raw))]))
    assert isinstance(body, StreamedBody)
    tracemalloc.start()
    try:
        await _dry_run(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, peak  # the body as bytes would be 11 MiB
