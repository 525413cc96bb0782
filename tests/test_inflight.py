"""InflightBudget and Hold (relay.smtp.inflight); the budget's default from memory size."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import (
    AHASEND_MAX_MESSAGE_SIZE,
    Settings,
    cgroup_memory_limit,
    default_inflight_bytes,
    physical_memory,
)
from relay.smtp.inflight import InflightBudget

GIB = 1024**3


def test_holds_share_the_budget_and_give_it_back() -> None:
    budget = InflightBudget(100)
    first, second = budget.hold(), budget.hold()
    assert first.take(60)
    assert first.take(30)
    assert not second.take(20)  # 90 + 20 > 100: refused, nothing taken
    assert (budget.used, second.taken) == (90, 0)
    assert second.take(10)
    assert budget.full
    first.release()
    first.release()  # idempotent
    assert (budget.used, budget.full) == (10, False)
    second.release()
    assert budget.used == 0


def test_zero_is_no_limit() -> None:
    hold = InflightBudget(0).hold()
    assert hold.take(10**12)
    assert not InflightBudget(0).full


def _sysconf(pages: int, page_size: int = 4096) -> object:
    values = {"SC_PHYS_PAGES": pages, "SC_PAGE_SIZE": page_size}
    return lambda name: values[name]


NO_CGROUP = (Path("/nonexistent/memory.max"),)


def test_the_default_is_an_eighth_of_physical_memory() -> None:
    assert physical_memory(_sysconf(2 * GIB // 4096)) == 2 * GIB
    assert default_inflight_bytes(_sysconf(8 * GIB // 4096), NO_CGROUP) == GIB


def test_a_smaller_container_limit_counts(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2.write_text("max\n")  # cgroup v2 without a limit
    v1.write_text(f"{2 * GIB}\n")
    assert cgroup_memory_limit((v2, v1)) == 2 * GIB
    assert default_inflight_bytes(_sysconf(64 * GIB // 4096), (v2, v1)) == GIB // 4
    v2.write_text(f"{GIB}\n")
    assert default_inflight_bytes(_sysconf(64 * GIB // 4096), (v2, v1)) == GIB // 8
    assert cgroup_memory_limit(NO_CGROUP) is None


def test_the_default_leaves_room_for_two_of_the_largest_messages() -> None:
    small_machine = _sysconf(64 * 1024 * 1024 // 4096)
    assert default_inflight_bytes(small_machine, NO_CGROUP) == 2 * AHASEND_MAX_MESSAGE_SIZE


@pytest.mark.parametrize("error", [ValueError, OSError])
def test_no_budget_where_the_memory_size_is_unknown(error: type[Exception]) -> None:
    def sysconf(name: str) -> int:
        raise error(name)

    assert physical_memory(sysconf) is None
    assert default_inflight_bytes(sysconf, NO_CGROUP) == 0
    assert default_inflight_bytes(_sysconf(-1), NO_CGROUP) == 0


def test_settings_default_comes_from_this_machine() -> None:
    assert Settings(relay_dry_run=True).relay_max_inflight_bytes == default_inflight_bytes()


def test_a_refused_upload_gives_its_bytes_back_at_once() -> None:
    budget = InflightBudget(10)
    first, second = budget.hold(), budget.hold()
    assert first.take_or_drop(6)
    assert second.take_or_drop(3)
    assert not second.take_or_drop(2)  # 11 > 10: refused, and its 3 given back now
    assert (budget.used, second.taken) == (6, 0)
    assert first.take_or_drop(4)  # the room went to the upload still being read
    assert budget.used == 10
