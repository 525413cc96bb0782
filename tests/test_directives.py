"""AhaSend's ``ahasend-*`` SMTP headers: relay.translate.directives and their effect."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relay.errors import InvalidHeader
from relay.smtp.replies import reply_for
from relay.translate.directives import directive_fields
from relay.translate.message import translate
from tests.spec import assert_valid_request

FIXTURES = Path(__file__).parent / "fixtures" / "eml"


def with_header(line: str) -> bytes:
    return (
        f"From: a@example.com\r\nTo: b@example.net\r\nSubject: s\r\n{line}\r\n\r\nbody\r\n"
    ).encode()


def translated_payload(line: str) -> dict[str, object]:
    (payload,) = translate(with_header(line), "a@example.com", ["b@example.net"]).payloads
    assert_valid_request(payload)
    return payload


def test_every_directive_from_the_fixture() -> None:
    raw = re.sub(rb"(?<!\r)\n", b"\r\n", (FIXTURES / "directives.eml").read_bytes())
    (payload,) = translate(raw, "a@example.com", ["bob@example.net"]).payloads
    assert_valid_request(payload)
    assert payload["tags"] == ["welcome", "onboarding", "campaign-7"]
    assert payload["tracking"] == {"open": True, "click": False}
    assert payload["sandbox"] is True
    assert payload["sandbox_result"] == "bounce"
    assert payload["retention"] == {"metadata": 7, "data": 0}
    assert payload["schedule"] == {
        "first_attempt": "2026-12-01T09:30:00Z",
        "expires": "2026-12-02T09:30:00.250+02:00",
    }
    assert "headers" not in payload  # none of them is forwarded, unknown ones included


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ahasend-tags: a", {"tags": ["a"]}),
        ("ahasend-tags: , ,", {}),
        ("ahasend-track-opens: false", {"tracking": {"open": False}}),
        ("ahasend-track-opens: No", {"tracking": {"open": False}}),
        ("ahasend-track-clicks: 1", {"tracking": {"click": True}}),
        ("ahasend-track-clicks: on", {"tracking": {"click": True}}),
        ("ahasend-sandbox: false", {"sandbox": False}),
        ("ahasend-sandbox-result: suppress", {"sandbox_result": "suppress"}),
        ("ahasend-metadata-retention: 30", {"retention": {"metadata": 30}}),
        ("ahasend-metadata-retention: 1", {"retention": {"metadata": 1}}),
        ("ahasend-data-retention: 30", {"retention": {"data": 30}}),
        ("ahasend-schedule-first-attempt: 2026-12-01 09:30:00+00:00",
         {"schedule": {"first_attempt": "2026-12-01T09:30:00+00:00"}}),
        ("ahasend-schedule-expires: 2026-12-01T09:30:00-05:00",
         {"schedule": {"expires": "2026-12-01T09:30:00-05:00"}}),
    ],
)  # fmt: skip
def test_valid_directive(line: str, expected: dict[str, object]) -> None:
    payload = translated_payload(line)
    for key in ("tags", "tracking", "sandbox", "sandbox_result", "retention", "schedule"):
        assert payload.get(key) == expected.get(key)


@pytest.mark.parametrize(
    ("line", "header"),
    [
        ("ahasend-track-opens: maybe", "ahasend-track-opens"),
        ("ahasend-track-clicks:", "ahasend-track-clicks"),
        ("ahasend-sandbox: 2", "ahasend-sandbox"),
        ("ahasend-sandbox-result: explode", "ahasend-sandbox-result"),
        ("ahasend-metadata-retention: 0", "ahasend-metadata-retention"),
        ("ahasend-metadata-retention: 31", "ahasend-metadata-retention"),
        ("ahasend-data-retention: -1", "ahasend-data-retention"),
        ("ahasend-data-retention: 3.5", "ahasend-data-retention"),
        ("ahasend-data-retention: ٣", "ahasend-data-retention"),
        ("ahasend-schedule-first-attempt: 2026-12-01T09:30:00", "ahasend-schedule-first-attempt"),
        ("ahasend-schedule-first-attempt: tomorrow", "ahasend-schedule-first-attempt"),
        ("ahasend-schedule-expires: 2026-13-01T09:30:00Z", "ahasend-schedule-expires"),
        ("ahasend-schedule-expires: 2026-12-01T25:30:00Z", "ahasend-schedule-expires"),
    ],
)
def test_invalid_directive_names_the_header(line: str, header: str) -> None:
    with pytest.raises(InvalidHeader) as caught:
        translate(with_header(line.replace("٣", "=?utf-8?b?2aM=?=")), "a@x.com", ["b@x.com"])
    assert caught.value.detail.startswith(f"{header}: ")
    assert str(reply_for(caught.value)).startswith(f"554 5.6.0 Invalid header: {header}: ")


def test_directive_names_are_case_insensitive() -> None:
    fields = directive_fields([("AhaSend-Sandbox", "YES"), ("AHASEND-DATA-RETENTION", " 5 ")])
    assert fields == {"sandbox": True, "retention": {"data": 5}}


def test_repeated_tags_accumulate() -> None:
    fields = directive_fields([("ahasend-tags", "a, b"), ("ahasend-tags", "b,c")])
    assert fields == {"tags": ["a", "b", "c"]}


def test_a_repeated_directive_with_the_same_value_is_fine() -> None:
    assert directive_fields([("ahasend-sandbox", "true"), ("ahasend-sandbox", "yes")]) == {
        "sandbox": True
    }


def test_a_repeated_directive_with_different_values_is_invalid() -> None:
    with pytest.raises(InvalidHeader, match=r"^ahasend-track-opens: given more than once"):
        directive_fields([("ahasend-track-opens", "true"), ("ahasend-track-opens", "false")])


def test_long_invalid_values_are_shortened_in_the_detail() -> None:
    with pytest.raises(InvalidHeader) as caught:
        directive_fields([("ahasend-sandbox", "x" * 500)])
    assert len(caught.value.detail) < 150
