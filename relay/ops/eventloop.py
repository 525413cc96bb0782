"""Which asyncio event loop the process runs on: the standard one, or uvloop.

``RELAY_EVENT_LOOP`` picks it: ``asyncio`` (the standard loop), ``uvloop`` (fails with
``ConfigError`` when uvloop is not installed) or ``auto`` (uvloop when it is importable,
else the standard loop). uvloop is a default dependency (``bench/`` measures what it
buys); the standard loop is the fallback on platforms without its wheels.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from types import ModuleType
from typing import Any, Literal, TypeVar

from relay.errors import ConfigError

__all__ = ["EventLoopChoice", "loop_factory", "new_event_loop", "run"]

T = TypeVar("T")

EventLoopChoice = Literal["auto", "asyncio", "uvloop"]


def loop_factory(
    choice: str, importer: Callable[[str], ModuleType] = importlib.import_module
) -> Callable[[], asyncio.AbstractEventLoop]:
    """A zero-argument callable that makes a new loop of the kind ``choice`` names.

    ``importer`` imports uvloop (a seam for tests); ConfigError when ``choice`` is
    ``uvloop`` and it cannot be imported.
    """
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        uvloop = importer("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("RELAY_EVENT_LOOP: uvloop is not installed") from None
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """A new event loop of the kind ``choice`` names (see the module docstring)."""
    return loop_factory(choice)()


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """``asyncio.run(main)`` on a new loop of the kind ``choice`` names.

    Like ``asyncio.run``, the loop is the thread's current event loop while it runs
    (``asyncio.Runner`` with a ``loop_factory`` does not set it, and code that asks for
    the current loop, e.g. aiosmtpd's, would get another one).
    """
    factory = loop_factory(choice)

    def current() -> asyncio.AbstractEventLoop:
        loop = factory()
        asyncio.set_event_loop(loop)
        return loop

    try:
        with asyncio.Runner(loop_factory=current) as runner:
            return runner.run(main)
    finally:
        asyncio.set_event_loop(None)
