"""End to end on real servers: a real Prometheus scrapes `iotmeter --collector-only` (private
mosquitto, a private influxd, SQLite, an archive directory); the InfluxDB server is stopped, the
collector's probe sees it (`/readyz` 503 naming `timeseries`, `iotmeter_store_up` 0), the real
rule fires, a real Alertmanager routes it to `iotmeter alert-relay`, which opens an issue on a
fake GitHub API over real HTTP; influxd comes back, the alert resolves, the issue is closed.
Inhibition is shown through the same Alertmanager and relay. Every PromQL expression of the
rules and the dashboard is parsed by this Prometheus, and the names it scrapes are compared with
the registries the tests use.

Prometheus gets a copy of the real rules with `for:` shortened (nothing else changed), and
Alertmanager the real config with short group timers and the test's relay address."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from iotmeter_tui.backend.broker import free_port
from testsupport.fake_github import FakeGitHub
from testsupport.metric_names import (
    KUBE_STATE_METRICS_NAMES,
    PROMETHEUS_NAMES,
    exported,
)
from testsupport.monitoring import AlertmanagerServer, PrometheusServer, get_json
from testsupport.services import InfluxServer, MosquittoServer, ServiceError

ROOT = Path(__file__).resolve().parents[2]
RELAY_TOKEN = "e2e-relay-token"
SHORT_FOR = "2s"


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60.0,
             diagnose: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}. {diagnose()}")


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def short_rules(names: set[str]) -> str:
    """The real rules named, `for:` shortened; labels, annotations and expressions as shipped."""
    real = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    groups = []
    for group in real["groups"]:
        rules = [dict(r, **{"for": SHORT_FOR}) for r in group["rules"]
                 if r["alert"] in names and not (r["alert"] == "IotmeterStoreDown"
                                                 and r["labels"]["severity"] == "warning")]
        if rules:
            groups.append({"name": group["name"], "rules": rules})
    return yaml.safe_dump({"groups": groups}, sort_keys=False)


def alertmanager_config(relay_url: str, token_file: Path) -> str:
    config = yaml.safe_load((ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    for route in [config["route"], *config["route"]["routes"]]:
        route.update(group_wait="1s", group_interval="2s", repeat_interval="1h")
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = relay_url + "/webhook"
            hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    return yaml.safe_dump(config, sort_keys=False)


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.processes: list[subprocess.Popen[str]] = []
        self.closers: list[Callable[[], None]] = []

    def spawn(self, args: list[str], env: dict[str, str], log: str) -> subprocess.Popen[str]:
        out = (self.tmp / log).open("w")
        process = subprocess.Popen([sys.executable, "-m", "iotmeter_tui", *args], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, text=True)
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        try:
            return "\n".join((self.tmp / name).read_text().splitlines()[-15:])
        except OSError:
            return ""

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
        for close in reversed(self.closers):
            close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("monitoring")
    s = Stack(tmp)
    try:
        broker = MosquittoServer()
        broker.start()
        s.closers.append(broker.close)
        influx = InfluxServer()
        influx.start()
        s.closers.append(influx.close)
        github = FakeGitHub().__enter__()
        s.closers.append(lambda: github.__exit__(None, None, None))

        base = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
        metrics_port = free_port()
        collector = s.spawn(["--collector-only"], base | {
            "IOTMETER_HOME": str(tmp / "home"), "IOTMETER_MQTT_URL": broker.url,
            "IOTMETER_TSDB_URL": influx.url, "IOTMETER_METRICS_PORT": str(metrics_port),
            "IOTMETER_HEALTH_INTERVAL_S": "0.5", "IOTMETER_FIRMWARE_LISTEN": "127.0.0.1:0",
        }, "collector.log")
        wait_for("the collector to be ready", lambda: readyz(metrics_port)[0] == 200,
                 diagnose=lambda: s.log("collector.log"))

        token_file = tmp / "relay-token"
        token_file.write_text(RELAY_TOKEN)
        relay_port = free_port()
        s.spawn(["alert-relay", "--port", str(relay_port), "--retry-budget", "5"], base | {
            "IOTMETER_HOME": str(tmp / "home"), "IOTMETER_GITHUB_REPO": github.repo,
            "IOTMETER_GITHUB_TOKEN": "ghp_e2e", "IOTMETER_GITHUB_API_URL": github.url,
            "IOTMETER_ALERT_RELAY_TOKEN_FILE": str(token_file)}, "relay.log")
        wait_for("the relay to be ready", lambda: readyz(relay_port)[0] == 200,
                 diagnose=lambda: s.log("relay.log"))
        relay_url = f"http://127.0.0.1:{relay_port}"

        alertmanager = AlertmanagerServer(alertmanager_config(relay_url, token_file))
        alertmanager.start()
        s.closers.append(alertmanager.close)

        rules = tmp / "rules.yml"
        rules.write_text(short_rules({"IotmeterStoreDown", "IotmeterCollectorDown"}))
        prometheus = PrometheusServer(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "alerting": {"alertmanagers": [{"static_configs": [
                {"targets": [f"127.0.0.1:{alertmanager.port}"]}]}]},
            "scrape_configs": [
                {"job_name": "iotmeter-collector",
                 "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]},
                {"job_name": "iotmeter-alert-relay",
                 "static_configs": [{"targets": [f"127.0.0.1:{relay_port}"]}]},
            ],
        }))
        prometheus.start()
        s.closers.append(prometheus.close)
        yield {"stack": s, "influx": influx, "github": github, "collector": collector,
               "broker_url": broker.url,
               "metrics_port": metrics_port, "alertmanager": alertmanager,
               "prometheus": prometheus, "relay_url": relay_url}
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        s.close()


def issues_titled(github: FakeGitHub, name: str) -> list[Any]:
    return [i for i in github.issues.values() if name in i.title]


def test_store_down_opens_an_issue_and_store_back_closes_it(stack: dict[str, Any]) -> None:
    influx: InfluxServer = stack["influx"]
    github: FakeGitHub = stack["github"]
    prometheus: PrometheusServer = stack["prometheus"]
    s: Stack = stack["stack"]
    port = stack["metrics_port"]

    def diagnose() -> str:
        return (f"alerts: {prometheus.query('ALERTS')} issues: {github.issues} "
                f"relay: {s.log('relay.log')}")

    wait_for("Prometheus to scrape the collector", lambda: prometheus.query(
        'iotmeter_store_up{store="timeseries"} == 1')["data"]["result"])
    assert issues_titled(github, "IotmeterStoreDown") == []

    influx.stop()
    _, body = wait_for("/readyz to name the store", lambda: (
        lambda r: r if r[0] == 503 else None)(readyz(port)))
    assert "timeseries" in body["down"]
    [issue] = wait_for("an issue for the store", lambda: issues_titled(
        github, "IotmeterStoreDown"), diagnose=diagnose)
    assert issue.state == "open"
    assert {"iotmeter-alert", "severity:critical", "alertname:IotmeterStoreDown"} <= set(
        issue.labels)
    assert "| store | timeseries |" in issue.body
    assert "docs/alerts.md#iotmeterstoredown" in issue.body

    influx.start()
    wait_for("/readyz to be ready again", lambda: readyz(port)[0] == 200)
    wait_for("the issue to be closed", lambda: issue.state == "closed", diagnose=diagnose)
    assert len(issues_titled(github, "IotmeterStoreDown")) == 1  # repeats made no second one
    assert issue.comments and issue.comments[-1].startswith("Resolved.")


def test_collector_down_inhibits_pipeline_alerts(stack: dict[str, Any]) -> None:
    """Alertmanager gets a collector-down alert and a pipeline alert of the same stack: the
    relay is sent only the first; the second stays suppressed, inhibited by it."""
    alertmanager: AlertmanagerServer = stack["alertmanager"]
    github: FakeGitHub = stack["github"]
    common = {"job": "iotmeter-collector", "instance": "c9:9108"}
    alertmanager.post_alerts([
        {"labels": {"alertname": "IotmeterCollectorDown", "severity": "critical", **common},
         "annotations": {"summary": "Collector c9:9108 cannot be scraped"}},
        {"labels": {"alertname": "IotmeterSinkBacklogGrowing", "severity": "warning",
                    "component": "pipeline", "sink": "archive", **common},
         "annotations": {"summary": "Sink archive of collector c9:9108 is falling behind"}},
        {"labels": {"alertname": "IotmeterPodRestarting", "severity": "warning",
                    "pod": "iotmeter-collector-0"},
         "annotations": {"summary": "not a pipeline alert: delivered"}},
    ])
    wait_for("the collector-down issue", lambda: issues_titled(github, "IotmeterCollectorDown"))
    wait_for("the non-pipeline warning's issue",
             lambda: issues_titled(github, "IotmeterPodRestarting"))
    by_name = {a["labels"]["alertname"]: a for a in alertmanager.alerts()}
    suppressed = by_name["IotmeterSinkBacklogGrowing"]["status"]
    assert suppressed["state"] == "suppressed" and suppressed["inhibitedBy"]
    time.sleep(3)  # past another group_interval: still nothing for the inhibited alert
    assert issues_titled(github, "IotmeterSinkBacklogGrowing") == []


def test_critical_inhibits_the_warning_of_the_same_alert(stack: dict[str, Any]) -> None:
    alertmanager: AlertmanagerServer = stack["alertmanager"]
    github: FakeGitHub = stack["github"]
    labels = {"alertname": "IotmeterApiErrorRate", "job": "iotmeter-api", "instance": "api:1"}
    alertmanager.post_alerts([
        {"labels": {**labels, "severity": "critical"}, "annotations": {"summary": "5xx"}},
        {"labels": {**labels, "severity": "warning"}, "annotations": {"summary": "5xx"}},
    ])
    [issue] = wait_for("the critical issue", lambda: issues_titled(github, "IotmeterApiErrorRate"))
    assert "severity:critical" in issue.labels
    warning = next(a for a in alertmanager.alerts()
                   if a["labels"]["alertname"] == "IotmeterApiErrorRate"
                   and a["labels"]["severity"] == "warning")
    assert warning["status"]["state"] == "suppressed"


def expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    out = [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    board = json.loads((ROOT / "deploy" / "grafana" / "dashboards" /
                        "iotmeter-overview.json").read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            if "expr" in target:
                out.append((panel["title"], target["expr"]))
    return out


def test_prometheus_accepts_every_rule_and_dashboard_expression(stack: dict[str, Any]) -> None:
    prometheus: PrometheusServer = stack["prometheus"]
    for where, expr in expressions():
        # Grafana's $__interval-style variables are not used by the Prometheus panels.
        assert "$" not in expr, where
        answer = prometheus.query(expr)
        assert answer["status"] == "success", (where, expr, answer.get("error"))


def influxql(influx: InfluxServer, query: str) -> dict[str, Any]:
    from urllib.parse import urlencode

    url = f"{influx.http_url}/query?" + urlencode({"db": influx.database, "q": query})
    with urllib.request.urlopen(url, timeout=10) as response:
        return dict(json.loads(response.read()))


def test_influxql_panels_run_on_the_telemetry(stack: dict[str, Any]) -> None:
    """The dashboard's InfluxQL panels, with Grafana's macros filled in, answer without error
    on the telemetry the collector wrote; energy is summed per supply system (device_type)."""
    influx: InfluxServer = stack["influx"]
    s: Stack = stack["stack"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
    simulator = s.spawn(["simulate", "--devices", "4", "--rate", "5", "--duration", "4",
                         "--kind", "mixed", "--prefix", "e2e-"], base | {
        "IOTMETER_HOME": str(s.tmp / "sim"), "IOTMETER_MQTT_URL": stack["broker_url"]},
        "simulator.log")
    assert simulator.wait(60) == 0, s.log("simulator.log")
    wait_for("telemetry in InfluxDB", lambda: influxql(
        influx, 'SELECT count("voltage_v") FROM "iot_telemetry"')["results"][0].get("series"),
        diagnose=lambda: s.log("collector.log"))
    board = json.loads((ROOT / "deploy" / "grafana" / "dashboards" /
                        "iotmeter-overview.json").read_text())
    queries = [t["query"] for p in board["panels"] for t in p.get("targets", [])
               if "query" in t]
    assert len(queries) >= 3
    for query in queries:
        concrete = query.replace("$timeFilter", "time > now() - 1h").replace(
            "$__interval", "1s")
        answer = wait_for(f"an answer to {query}", lambda q=concrete: (
            lambda a: a if a["results"][0].get("series") else None)(influxql(influx, q)))
        result = answer["results"][0]
        assert "error" not in result, (query, result)
        assert {series["tags"]["device_type"] for series in result["series"]} == {
            "power_meter_dc", "power_meter_ac"}, query


def test_the_running_processes_export_what_the_tests_expect(stack: dict[str, Any]) -> None:
    """The registries the rule and dashboard checks use are what the processes serve."""
    prometheus: PrometheusServer = stack["prometheus"]
    wait_for("a scrape of the relay", lambda: prometheus.query(
        'up{job="iotmeter-alert-relay"} == 1')["data"]["result"])
    names = set(get_json(f"{prometheus.url}/api/v1/label/__name__/values")["data"])
    scraped = {n for n in names if n.startswith("iotmeter_")}
    # Every iotmeter name Prometheus saw is one the registries declare...
    assert scraped <= exported(), scraped - exported()
    # ... and the collector's core and health series are among them.
    assert {"iotmeter_store_up", "iotmeter_fleet_devices", "iotmeter_broker_connected",
            "iotmeter_relay_webhooks_total", "iotmeter_dispatch_up"} <= scraped
    assert "process_resident_memory_bytes" in names
    assert not re.search(r"device_id", json.dumps(prometheus.query(
        '{__name__=~"iotmeter_.*"}')["data"]))
    assert PROMETHEUS_NAMES and KUBE_STATE_METRICS_NAMES  # the explicit allow-lists exist


def test_a_dead_collector_opens_a_collector_down_issue(stack: dict[str, Any]) -> None:
    """Last in this module: it kills the collector. Prometheus' own `up` carries the alert."""
    github: FakeGitHub = stack["github"]
    prometheus: PrometheusServer = stack["prometheus"]
    collector: subprocess.Popen[str] = stack["collector"]
    port = stack["metrics_port"]
    collector.kill()
    collector.wait(10)
    [issue] = wait_for("the collector-down issue of this collector", lambda: [
        i for i in issues_titled(github, "IotmeterCollectorDown") if f":{port}" in i.body],
        diagnose=lambda: str(prometheus.query("ALERTS")))
    assert "severity:critical" in issue.labels
    assert "docs/alerts.md#iotmetercollectordown" in issue.body
