from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from relay.config import Settings, load_settings
from relay.errors import ConfigError
from tests.paths import REPO

ACCOUNT = "7b0ef6a2-6a4c-4b1e-9d4e-2a6f0b8c1d11"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("AHASEND_", "RELAY_")):
            monkeypatch.delenv(name)


def test_defaults_in_dry_run() -> None:
    s = load_settings(relay_dry_run=True)
    assert (s.relay_host, s.relay_port) == ("127.0.0.1", 2525)
    assert s.relay_max_message_size == 20 * 1024 * 1024
    assert s.api_base_url == "https://api.ahasend.com"


def test_credentials_required_unless_dry_run() -> None:
    with pytest.raises(ConfigError, match="AHASEND_API_KEY and AHASEND_ACCOUNT_ID must be set"):
        load_settings()


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AHASEND_API_KEY", "aha-sk-x")
    monkeypatch.setenv("AHASEND_ACCOUNT_ID", ACCOUNT)
    monkeypatch.setenv("RELAY_PORT", "2600")
    s = load_settings()
    assert s.relay_port == 2600
    assert str(s.ahasend_account_id) == ACCOUNT


def test_bad_value_names_the_variable_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PORT", "not-a-port")
    with pytest.raises(ConfigError) as info:
        load_settings(relay_dry_run=True)
    assert str(info.value).startswith("RELAY_PORT: ")
    assert "not-a-port" not in str(info.value)


def test_env_file(tmp_path: Path) -> None:
    env = tmp_path / "relay.env"
    env.write_text(f"AHASEND_API_KEY=aha-sk-file\nAHASEND_ACCOUNT_ID={ACCOUNT}\nRELAY_PORT=2700\n")
    s = load_settings(env)
    assert s.relay_port == 2700
    assert s.ahasend_api_key is not None
    assert s.ahasend_api_key.get_secret_value() == "aha-sk-file"


def test_missing_env_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--env-file"):
        load_settings(tmp_path / "nope.env")


def test_secret_is_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(ahasend_api_key="aha-sk-topsecret", ahasend_account_id=ACCOUNT)
    assert "aha-sk-topsecret" not in repr(s)


def test_example_env_documents_every_setting() -> None:
    text = (REPO / "config.example.env").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
    systemd = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
    assert all(name in text for name in systemd)
    assert {f.upper() for f in Settings.model_fields} - systemd <= documented
