"""The benchmark harness works end to end (``python -m bench --quick``, tiny loads).

Smoke test only: it proves every process starts, every scenario sends its messages
without an error and the report is written. It asserts no performance figure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.paths import REPO


def test_quick_bench_runs_every_scenario_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    keys = {(row["key"], row["target"].split(" ")[0]) for row in results["rows"]}
    for key in ("small", "latency", "mix"):
        assert {(key, "upstream"), (key, "smtp"), (key, "relay")} <= keys
    assert ("big", "relay") in keys
    assert ("big-together", "relay") in keys  # several big messages at once (issue 15)
    assert ("small", "relay,") in keys  # the relay at its default pacing, side by side
    # Each relay's pacing as it logged it at start: lifted for "relay", the default else.
    assert results["pacing"] == {"relay_api_rate": 1_000_000.0, "paced_api_rate": 90.0}
    assert all(row["errors"] == 0 and row["sent"] > 0 for row in results["rows"])
    assert len(results["growth"]["batches"]) == 10
    assert len(results["verdicts"]) == 10
    assert "| relay |" in done.stdout


def test_quick_spool_bench_measures_sqlite_and_psycopg() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.spool", "--quick"],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:3]] == ["| sqlite", "| psycopg"]
    assert all(float(row.split(" | ")[1]) > 0 for row in rows[1:])
