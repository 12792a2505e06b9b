"""The alert rules and the Grafana dashboard are valid PromQL, and the alerts fire when
they should: checked with Prometheus' own ``promtool`` (Debian's ``prometheus`` package;
``make test`` installs it). That every metric they name is served by the exporter is
checked against a real scrape in tests/integration/test_metrics.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "k8s" / "components" / "alerts" / "prometheusrule.yaml"
DASHBOARD = ROOT / "k8s" / "components" / "dashboard" / "traefik-metrics-scraper.json"
PROMTOOL_TESTS = Path(__file__).parent / "promtool" / "alerts_test.yaml"
METRIC = re.compile(r"\btraefik_metrics_scraper_[a-z0-9_]+\b")


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in doc["spec"]["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def metric_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC.findall(expr)}


@pytest.fixture(scope="module")
def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        missing = "promtool is not installed (Debian: apt-get install --no-install-recommends prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}, and CI must check the alert rules")
        pytest.skip(missing)
    return exe


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_prometheusrule_spec_is_a_valid_rules_file(promtool, tmp_path):
    doc = yaml.safe_load(RULES.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(doc["spec"]))
    out = _run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = {r["alert"] for g in doc["spec"]["groups"] for r in g["rules"]}
    # What the issue asks to alert on, each with a runbook-like description.
    assert {"TraefikMetricsScraperLogGap", "TraefikMetricsScraperLogLagging", "TraefikMetricsScraperReportsDeadLettered",
            "TraefikMetricsScraperReportsWaiting", "TraefikMetricsScraperLogNotRead"} <= alerts
    for group in doc["spec"]["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_alerts_fire_when_they_should(promtool, tmp_path):
    """promtool's unit tests: each alert on synthetic series, before and after its
    threshold and its ``for``, with rendered annotations."""
    doc = yaml.safe_load(RULES.read_text())
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(doc["spec"]))
    shutil.copy(PROMTOOL_TESTS, tmp_path / "alerts_test.yaml")
    out = _run(promtool, "test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set(re.findall(r"alertname: (\S+)", PROMTOOL_TESTS.read_text()))
    assert tested == {r["alert"] for g in doc["spec"]["groups"] for r in g["rules"]}, "every alert has a test"


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    """Each panel's query, with Grafana's $__rate_interval set, as a recording rule."""
    exprs = dashboard_exprs()
    assert exprs
    rules = [{"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m")} for i, e in enumerate(exprs)]
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = _run(promtool, "check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_shape():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "traefik-metrics-scraper"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == ["Traffic", "Lag", "Delivery", "Errors"]
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource"]
    # No tunnel (subdomain) label anywhere: labels stay bounded.
    assert "subdomain" not in DASHBOARD.read_text() and "tunnel=" not in DASHBOARD.read_text()



def test_the_readme_lists_every_alert_and_counts_them():
    # The README's table had fallen four alerts behind the rule file (a new-user trial).
    doc = yaml.safe_load(RULES.read_text())
    alerts = [rule["alert"] for group in doc["spec"]["groups"] for rule in group["rules"] if "alert" in rule]
    readme = (ROOT / "README.md").read_text()
    listed = re.findall(r"^\| `(TraefikMetricsScraper\w+)` \|", readme, flags=re.M)
    assert sorted(listed) == sorted(alerts)
    assert f"SUCCESS: {len(rule_exprs())} rules found" in readme
