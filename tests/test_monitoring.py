"""examples/monitoring: alert rules checked and unit-tested by promtool, the Grafana
dashboard's queries checked by promtool and matched against what a real relay exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.metrics_support import exercised_relay, scrape
from tests.paths import REPO
from tests.standin import StandIn
from tests.test_metrics import parse

MONITORING = REPO / "examples" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTS = MONITORING / "alerts.yml"
METRIC = re.compile(r"\b((?:ahasend_relay|process)_[a-z_]+)")


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: .ci/run installs the prometheus package"
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_alert_rules_and_scrape_config_pass_promtool_check() -> None:
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 8 rules found" in rules.stdout
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("original", "broken"),
    [
        (
            "ahasend_relay_spool_oldest_age_seconds > 1800",
            "ahasend_relay_spool_oldest_age_seconds > 7200",
        ),
        ('status=~"401|403"', 'status=~"403"'),
        ("> 0.05", "> 0.5"),
        ("ahasend_relay_ready == 0\n        for: 2m", "ahasend_relay_ready == 0\n        for: 10m"),
    ],
)
def test_the_alert_unit_tests_catch_a_changed_rule(
    tmp_path: Path, original: str, broken: str
) -> None:
    text = ALERTS.read_text()
    assert original in text
    (tmp_path / "alerts.yml").write_text(text.replace(original, broken))
    shutil.copy(MONITORING / "alerts.test.yml", tmp_path)
    result = promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, with Grafana's variables filled in, as a recording rule for promtool."""
    rules = [
        {"record": f"dashboard:query_{n}",
         "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".*")}
        for n, expr in enumerate(dashboard_exprs())
    ]  # fmt: skip
    assert len(rules) > 20
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "ahasend-relay"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["instance"]["query"]["query"].startswith("label_values(")
    for panel in dashboard["panels"]:
        assert {"type", "title", "gridPos"} <= panel.keys()
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'instance=~"$instance"' in target["expr"]


@pytest.mark.e2e
def test_dashboard_and_alerts_use_only_metrics_a_real_relay_exports(
    standin: StandIn, tmp_path: Path
) -> None:
    with exercised_relay(standin, tmp_path) as relay:
        exported = {name for name, _ in parse(scrape(relay))}
    used_by_dashboard = {m for e in dashboard_exprs() for m in METRIC.findall(e)}
    used_by_alerts = {m for e in alert_exprs() for m in METRIC.findall(e)}
    assert used_by_dashboard - exported == set()
    assert used_by_alerts - exported == set()
    families = {re.sub(r"_(bucket|sum|count|total|info)$", "", n) for n in exported
                if n.startswith("ahasend_relay_")}  # fmt: skip
    shown = {re.sub(r"_(bucket|sum|count|total|info)$", "", n) for n in used_by_dashboard}
    assert families - shown == set(), "every relay metric is on the dashboard"
