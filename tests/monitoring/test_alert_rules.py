"""The alert rules (deploy/prometheus/alerts.yml), the Alertmanager config and the Grafana
dashboard, checked with the real tools: promtool (Debian `prometheus`) and amtool (Debian
`prometheus-alertmanager`). Every expression names only metrics a process exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from testsupport.metric_names import (
    KUBE_STATE_METRICS_NAMES,
    PROMETHEUS_NAMES,
    exported,
    promql_metric_names,
)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTMANAGER = ROOT / "deploy" / "alertmanager"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "iotmeter-overview.json"
ALLOWED = exported() | PROMETHEUS_NAMES | KUBE_STATE_METRICS_NAMES
GROUPS = {"iotmeter-service-health", "iotmeter-api-performance", "iotmeter-mqtt-pipeline",
          "iotmeter-device-fleet", "iotmeter-kubernetes"}


def tool(name: str, package: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/bin", name), Path("/usr/sbin", name)) if p.exists()), None)
    if found is None:
        pytest.fail(f"{name} not found: install Debian's `{package}` "
                    "(scripts/system-deps.sh test)", pytrace=False)
    return found


def run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def promql_names(expr: str) -> set[str]:
    return promql_metric_names(expr)


def rules() -> list[tuple[str, dict[str, Any]]]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [(g["name"], r) for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", []) if "expr" in t]


# --- rules ------------------------------------------------------------------------------------

def test_at_least_12_rules_in_the_5_groups() -> None:
    by_group: dict[str, int] = {}
    for group, _ in rules():
        by_group[group] = by_group.get(group, 0) + 1
    assert set(by_group) == GROUPS
    assert sum(by_group.values()) >= 12 and min(by_group.values()) >= 2


def test_every_rule_has_severity_summary_and_a_runbook_section() -> None:
    runbooks = (ROOT / "docs" / "alerts.md").read_text()
    anchors = {re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
               for h in re.findall(r"^#{2,3} (.+)$", runbooks, re.MULTILINE)}
    for group, rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url.split("#")[0].endswith("/docs/alerts.md"), rule["alert"]
        assert url.split("#")[1] == rule["alert"].lower() in anchors, rule["alert"]
        if group == "iotmeter-mqtt-pipeline":
            assert rule["labels"]["component"] == "pipeline", rule["alert"]


def test_rules_name_only_exported_metrics() -> None:
    for _, rule in rules():
        used = promql_names(rule["expr"])
        assert used and used <= ALLOWED, (rule["alert"], used - ALLOWED)


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = tool("promtool", "prometheus")
    run([promtool, "check", "rules", "alerts.yml"], PROMETHEUS)
    out = run([promtool, "test", "rules", "alerts_test.yml"], PROMETHEUS)
    assert "SUCCESS" in out


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    cases = [c for t in tests for c in t["alert_rule_test"]]
    for name in {r["alert"] for _, r in rules()}:
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no case where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no case where it is quiet"


def test_prometheusrule_is_generated_from_alerts_yml() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-prometheusrule.py"),
                             "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    generated = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "monitoring" /
                                "prometheusrule.yaml").read_text())
    source = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    assert generated["spec"]["groups"] == source["groups"]


# --- Alertmanager -----------------------------------------------------------------------------

def test_amtool_accepts_the_config() -> None:
    out = run([tool("amtool", "prometheus-alertmanager"), "check-config", "alertmanager.yml"],
              ALERTMANAGER)
    assert "SUCCESS" in out and "2 inhibit rules" in out


@pytest.mark.parametrize("labels, receiver", [
    (["alertname=IotmeterStoreDown", "severity=critical", "store=timeseries"], "github-critical"),
    (["alertname=IotmeterCollectorDown", "severity=critical"], "github-critical"),
    (["alertname=IotmeterSinkBacklogGrowing", "severity=warning", "component=pipeline"],
     "github-warning"),
    (["alertname=IotmeterPodRestarting", "severity=warning"], "github-warning"),
    (["alertname=Whatever"], "github-warning"),  # no severity: still reaches someone
])
def test_amtool_routes(labels: list[str], receiver: str) -> None:
    out = run([tool("amtool", "prometheus-alertmanager"), "config", "routes", "test",
               "--config.file=alertmanager.yml", "--verify.receivers=" + receiver, *labels],
              ALERTMANAGER)
    assert out.strip().splitlines()[-1] == receiver or receiver in out


def test_alertmanager_sends_to_the_relay_with_a_bearer_token_file() -> None:
    config = yaml.safe_load((ALERTMANAGER / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            assert hook["url"].endswith(":9095/webhook") and hook["send_resolved"] is True
            auth = hook["http_config"]["authorization"]
            assert auth["type"] == "Bearer" and auth["credentials_file"].startswith("/etc/")
    inhibit = config["inhibit_rules"]
    assert {"source_matchers": ['alertname="IotmeterCollectorDown"'],
            "target_matchers": ['component="pipeline"']} in inhibit
    assert any(r["source_matchers"] == ['severity="critical"'] and "alertname" in r["equal"]
               for r in inhibit)


# --- Grafana ----------------------------------------------------------------------------------

def test_dashboard_is_generated_and_has_21_panels_in_5_rows() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-grafana-dashboard.py"),
                             "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] == "IoT Meter — Overview"
    rows = [p for p in board["panels"] if p["type"] == "row"]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len(rows) == 5 and len(panels) >= 21
    kinds = {p["datasource"]["type"] for p in panels}
    assert kinds == {"prometheus", "influxdb"}
    titles = " ".join(p["title"] for p in panels)
    for wanted in ("Meters online", "Energy imported", "Energy exported", "OTA", "alerts"):
        assert wanted in titles


def test_dashboard_prometheus_panels_name_only_exported_metrics() -> None:
    for expr in dashboard_exprs():
        used = promql_names(expr)
        assert used and used <= ALLOWED, (expr, used - ALLOWED)


def test_dashboard_datasources_are_provisioned() -> None:
    provisioned = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "datasources" /
                                  "iotmeter.yaml").read_text())["datasources"]
    uids = {d["uid"] for d in provisioned}
    board = json.loads(DASHBOARD.read_text())
    assert {p["datasource"]["uid"] for p in board["panels"] if "datasource" in p} <= uids
    influx = next(d for d in provisioned if d["type"] == "influxdb")
    assert influx["jsonData"]["dbName"] == "iot-metrics"
