"""What the load processes share: the ready/go handshake and the latency summary.

A load process builds its payloads first, prints ``{"ready": true}``, and starts only
when the orchestrator writes a line to its stdin: so the orchestrator can read the
target's CPU counters right before and after the load, not during start-up. The result
is one JSON line on stdout.
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Sequence
from typing import Any


def wait_for_go() -> None:
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def own_cpu() -> float:
    """CPU seconds (user + system) used by this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentiles(samples: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of ``samples`` (seconds) in milliseconds, nearest-rank."""
    if not samples:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(samples)

    def rank(p: float) -> float:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
        return round(ordered[index] * 1000, 3)

    return {
        "p50_ms": rank(50),
        "p95_ms": rank(95),
        "p99_ms": rank(99),
        "max_ms": round(ordered[-1] * 1000, 3),
    }
