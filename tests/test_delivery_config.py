"""The delivery settings: defaults, and the bounce settings' consistency checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay.config import load_settings
from relay.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("AHASEND_", "RELAY_")):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings(relay_dry_run=True)
    assert s.relay_spool_dir is None
    assert s.relay_spool_max_age == 5 * 86400
    assert s.relay_retry_deadline == 60
    assert (s.relay_api_rate, s.relay_api_burst) == (90, 180)
    assert s.relay_bounce_notices is False


def test_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RELAY_SPOOL_DIR", str(tmp_path))
    monkeypatch.setenv("RELAY_SPOOL_MAX_AGE", "3600")
    monkeypatch.setenv("RELAY_BOUNCE_NOTICES", "true")
    monkeypatch.setenv("RELAY_BOUNCE_FROM", "postmaster@relay.example")
    s = load_settings(relay_dry_run=True)
    assert (s.relay_spool_dir, s.relay_spool_max_age) == (tmp_path, 3600)
    assert s.relay_bounce_from == "postmaster@relay.example"


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_spool_dir_turns_the_spool_off(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RELAY_SPOOL_DIR", value)  # the unit and image set one by default
    assert load_settings(relay_dry_run=True).relay_spool_dir is None


def test_bounce_notices_need_a_from_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RELAY_BOUNCE_FROM must be set"):
        load_settings(relay_dry_run=True, relay_bounce_notices=True, relay_spool_dir=tmp_path)


def test_bounce_notices_need_the_spool() -> None:
    with pytest.raises(ConfigError, match="needs the spool"):
        load_settings(relay_dry_run=True, relay_bounce_notices=True, relay_bounce_from="p@x.org")


@pytest.mark.parametrize(
    ("name", "value"),
    [("RELAY_API_RATE", "0"), ("RELAY_API_BURST", "0"), ("RELAY_RETRY_DEADLINE", "-1")],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings(relay_dry_run=True)
