"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.standin import StandIn


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """A started stand-in AhaSend API on 127.0.0.1 (ephemeral port), stopped afterwards."""
    with StandIn() as server:
        yield server
