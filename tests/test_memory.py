"""relay.ops.memory: glibc's mmap threshold is pinned once, unless the operator set it."""

from __future__ import annotations

import ctypes.util
from typing import Any

import pytest

from relay.ops.memory import M_MMAP_THRESHOLD, MMAP_THRESHOLD, pin_mmap_threshold


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


def test_pins_the_threshold_with_mallopt() -> None:
    libc = FakeLibc()
    assert pin_mmap_threshold(environ={}, libc=lambda: libc)
    assert libc.calls == [(M_MMAP_THRESHOLD, MMAP_THRESHOLD)]


def test_operator_setting_wins() -> None:
    libc = FakeLibc()
    assert not pin_mmap_threshold(environ={"MALLOC_MMAP_THRESHOLD_": "65536"}, libc=lambda: libc)
    assert libc.calls == []


def test_c_library_without_mallopt_is_left_alone() -> None:
    def no_mallopt() -> Any:
        return object()

    assert not pin_mmap_threshold(environ={}, libc=no_mallopt)


def test_real_glibc_accepts_it() -> None:
    if ctypes.util.find_library("c") is None or not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.skip("no mallopt in this C library")
    assert pin_mmap_threshold(environ={})
