"""Shared pytest fixtures: the stand-in API, a relay process, test certificates."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.interop import Served, serving_process
from tests.security_support import Certs, make_certs
from tests.standin import StandIn

pytest_plugins = ["tests.postgres"]


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """A started stand-in AhaSend API on 127.0.0.1 (ephemeral port), stopped afterwards."""
    with StandIn() as server:
        yield server


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """A relay process with default settings (no AUTH, loopback allowed) and its stand-in."""
    with serving_process() as relay:
        yield relay


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A test CA and a server certificate for 127.0.0.1 / localhost."""
    return make_certs(tmp_path_factory.mktemp("certs"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz",
        action="store_true",
        help="run the fuzz tests (tests/test_fuzz.py) 20 times longer than in CI",
    )
