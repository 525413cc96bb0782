from __future__ import annotations

from relay.translate.idempotency import transaction_keys


def keys(mid: str | None, rcpts: list[str], raw: bytes = b"body", count: int = 1) -> list[str]:
    return transaction_keys(mid, "app@example.com", rcpts, raw, count)


def test_same_message_same_envelope_same_key() -> None:
    assert keys("<a@x>", ["b@y", "c@y"]) == keys("<a@x>", ["C@Y", "b@y"])


def test_envelope_and_content_change_the_key() -> None:
    base = keys("<a@x>", ["b@y"])
    assert keys("<a@x>", ["c@y"]) != base
    assert keys("<a@x>", ["b@y"], raw=b"other") != base
    assert keys("<b@x>", ["b@y"]) != base


def test_without_message_id_every_transaction_is_new() -> None:
    assert keys(None, ["b@y"]) != keys(None, ["b@y"])


def test_split_requests_get_distinct_keys_within_limit() -> None:
    split = keys("<a@x>", ["b@y", "c@y"], count=3)
    assert len(set(split)) == 3
    assert all(len(k) <= 255 for k in split)
    assert split == keys("<a@x>", ["b@y", "c@y"], count=3)
