"""RELAY_EVENT_LOOP: which loop the relay runs on."""

from __future__ import annotations

import asyncio
import importlib.util
from types import ModuleType

import pytest

from relay.config import Settings
from relay.errors import ConfigError
from relay.ops.eventloop import loop_factory, new_event_loop, run


def _missing(name: str) -> ModuleType:
    raise ImportError(name)


def test_asyncio_choice_is_the_standard_loop() -> None:
    assert loop_factory("asyncio") is asyncio.new_event_loop


def test_auto_falls_back_to_asyncio_without_uvloop() -> None:
    assert loop_factory("auto", importer=_missing) is asyncio.new_event_loop


def test_uvloop_choice_without_uvloop_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="RELAY_EVENT_LOOP"):
        loop_factory("uvloop", importer=_missing)


def test_auto_prefers_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory("auto") is uvloop.new_event_loop
    loop = new_event_loop("uvloop")
    try:
        assert isinstance(loop, uvloop.Loop)
        assert loop.run_until_complete(asyncio.sleep(0, result=42)) == 42
    finally:
        loop.close()


def test_setting_defaults_to_auto_and_rejects_unknown_loops() -> None:
    assert Settings(relay_dry_run=True).relay_event_loop == "auto"
    with pytest.raises(ValueError, match="relay_event_loop"):
        Settings(relay_dry_run=True, relay_event_loop="trio")


def test_run_makes_the_loop_current_like_asyncio_run() -> None:
    async def current_is_running() -> bool:
        return asyncio.get_event_loop() is asyncio.get_running_loop()

    assert run(current_is_running(), "asyncio") is True
    if importlib.util.find_spec("uvloop") is not None:
        assert run(current_is_running(), "uvloop") is True
