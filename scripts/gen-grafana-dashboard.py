#!/usr/bin/env python3
"""Write the Grafana dashboard "IoT Meter — Overview" (deploy/grafana/dashboards/) from the
panel list below: 5 rows (service health, HTTP traffic, MQTT pipeline, fleet and business,
Kubernetes), Prometheus panels plus InfluxQL panels on the telemetry itself.
tests/monitoring/test_grafana.py fails when the JSON is stale, when a panel names a metric no
process exports, or when Prometheus refuses an expression.
Usage: scripts/gen-grafana-dashboard.py [--check]"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "deploy" / "grafana" / "dashboards" / "iotmeter-overview.json"
PROM = {"type": "prometheus", "uid": "prometheus"}
INFLUX = {"type": "influxdb", "uid": "influxdb"}
COLLECTOR = 'job=~"(.+/)?iotmeter-collector"'


def prom(title: str, kind: str, *exprs: tuple[str, str], unit: str = "short") -> dict[str, Any]:
    return {"title": title, "type": kind, "datasource": PROM, "unit": unit,
            "targets": [{"refId": chr(65 + i), "datasource": PROM, "expr": expr,
                         "legendFormat": legend} for i, (expr, legend) in enumerate(exprs)]}


def influx(title: str, query: str, unit: str) -> dict[str, Any]:
    return {"title": title, "type": "timeseries", "datasource": INFLUX, "unit": unit,
            "targets": [{"refId": "A", "datasource": INFLUX, "rawQuery": True,
                         "resultFormat": "time_series", "query": query,
                         "alias": "$tag_device_type"}]}


def energy(field: str) -> str:
    # Per device the counter's growth in each interval, then summed per supply system
    # (device_type): a meter that restarts never subtracts (non_negative_difference).
    return (f'SELECT sum("kwh") FROM (SELECT non_negative_difference(last("{field}")) AS "kwh" '
            'FROM "iot_telemetry" WHERE $timeFilter GROUP BY time($__interval), "device_id", '
            '"device_type") GROUP BY time($__interval), "device_type" fill(0)')


ROWS: list[tuple[str, list[dict[str, Any]]]] = [
    ("Service health", [
        prom("Collectors up", "stat", (f"sum(up{{{COLLECTOR}}})", "up")),
        prom("Stores up (probe)", "stat", ("min by (store) (iotmeter_store_up)", "{{store}}")),
        prom("Broker connected", "stat", ("min(iotmeter_broker_connected)", "broker")),
        prom("API and relay up", "stat",
             ('sum by (job) (up{job=~"(.+/)?iotmeter-(api|alert-relay)"})', "{{job}}")),
        prom("Alerts firing", "stat",
             ('count by (severity) (ALERTS{alertstate="firing"})', "{{severity}}")),
    ]),
    ("HTTP traffic", [
        prom("API requests by status", "timeseries",
             ("sum by (status) (rate(iotmeter_api_requests_total[5m]))", "{{status}}"),
             unit="reqps"),
        prom("API latency p95 by route", "timeseries",
             ("histogram_quantile(0.95, sum by (route, le) "
              "(rate(iotmeter_api_request_duration_seconds_bucket[5m])))", "{{route}}"),
             unit="s"),
        prom("API requests in flight", "timeseries",
             ("sum(iotmeter_api_requests_in_flight)", "in flight")),
        prom("API auth failures and rate limiting", "timeseries",
             ("sum by (reason) (rate(iotmeter_api_auth_failures_total[5m]))", "auth: {{reason}}"),
             ("sum(rate(iotmeter_api_rate_limited_total[5m]))", "rate limited"), unit="reqps"),
        prom("Alert relay deliveries", "timeseries",
             ("sum by (result) (rate(iotmeter_relay_webhooks_total[5m]))", "{{result}}"),
             ("sum by (status) (rate(iotmeter_relay_github_requests_total[5m]))",
              "GitHub {{status}}"), unit="reqps"),
    ]),
    ("MQTT pipeline", [
        prom("Messages in and acknowledged", "timeseries",
             ("sum(rate(iotmeter_messages_received_total[1m]))", "received"),
             ("sum(rate(iotmeter_messages_acked_total[1m]))", "acked"),
             ("sum(rate(iotmeter_messages_duplicate_total[1m]))", "duplicates"), unit="msgps"),
        prom("Rejections by reason", "timeseries",
             ("sum by (reason) (rate(iotmeter_messages_rejected_total[5m]))", "{{reason}}"),
             unit="msgps"),
        prom("Spool and sink backlog", "timeseries",
             ("sum(iotmeter_spool_bytes)", "spool"),
             ("sum by (sink) (iotmeter_sink_backlog_bytes)", "backlog {{sink}}"), unit="bytes"),
        prom("End-to-end lag p95", "timeseries",
             ("histogram_quantile(0.95, sum by (le) "
              "(rate(iotmeter_end_to_end_lag_seconds_bucket[5m])))", "p95"), unit="s"),
        prom("Broker ($SYS)", "timeseries",
             ("max(iotmeter_broker_clients_connected)", "clients"),
             ("max(rate(iotmeter_broker_publish_dropped_total[5m]))", "dropped/s"),
             ("max(iotmeter_broker_messages_stored)", "stored")),
        prom("Sink write time p95", "timeseries",
             ("histogram_quantile(0.95, sum by (sink, le) "
              "(rate(iotmeter_sink_write_seconds_bucket[5m])))", "{{sink}}"), unit="s"),
    ]),
    ("Fleet and business", [
        prom("Meters online", "stat",
             ('max(iotmeter_fleet_devices{status="online"})', "online")),
        prom("Meters by status", "timeseries",
             ("max by (status) (iotmeter_fleet_devices)", "{{status}}")),
        influx("Energy imported per supply system", energy("energy_import_kwh"), "kwatth"),
        influx("Energy exported per supply system", energy("energy_export_kwh"), "kwatth"),
        influx("Mean voltage per supply system",
               'SELECT mean("voltage_v") FROM "iot_telemetry" WHERE $timeFilter '
               'GROUP BY time($__interval), "device_type" fill(none)', "volt"),
        prom("Open meter alerts by severity", "timeseries",
             ("max by (severity) (iotmeter_fleet_alerts_open)", "{{severity}}")),
        prom("OTA progress (targets by state)", "timeseries",
             ("max by (state) (iotmeter_fleet_ota_targets)", "{{state}}"),
             ("max(iotmeter_fleet_ota_campaigns_active)", "campaigns active")),
        prom("Commands by state", "timeseries",
             ("max by (state) (iotmeter_fleet_commands)", "{{state}}"),
             ("sum by (kind) (rate(iotmeter_dispatch_published_total[5m]))", "published {{kind}}")),
    ]),
    ("Kubernetes", [
        prom("Container restarts (15 min)", "timeseries",
             ('sum by (pod) (increase(kube_pod_container_status_restarts_total'
              '{namespace="iotmeter"}[15m]))', "{{pod}}")),
        prom("Collector replicas ready / desired", "timeseries",
             ('sum(kube_statefulset_status_replicas_ready{namespace="iotmeter"})', "ready"),
             ('sum(kube_statefulset_replicas{namespace="iotmeter"})', "desired")),
        prom("Deployments: unavailable replicas", "timeseries",
             ('sum by (deployment) (kube_deployment_status_replicas_unavailable'
              '{namespace="iotmeter"})', "{{deployment}}")),
        prom("Process memory (RSS)", "timeseries",
             ('process_resident_memory_bytes{job=~"(.+/)?iotmeter-.*"}', "{{job}} {{instance}}"),
             unit="bytes"),
    ]),
]


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for title, row in ROWS:
        panels.append({"id": next_id, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id, y = next_id + 1, y + 1
        width = 24 // len(row) if len(row) <= 4 else 6
        for index, spec in enumerate(row):
            x = (index * width) % 24
            if index and x == 0:
                y += 8
            panel = {"id": next_id, "title": spec["title"], "type": spec["type"],
                     "datasource": spec["datasource"], "targets": spec["targets"],
                     "gridPos": {"h": 8, "w": width, "x": x, "y": y},
                     "fieldConfig": {"defaults": {"unit": spec["unit"]}, "overrides": []},
                     "options": {}}
            panels.append(panel)
            next_id += 1
        y += 8
    return {
        "uid": "iotmeter-overview", "title": "IoT Meter — Overview",
        "tags": ["iotmeter"], "timezone": "utc", "schemaVersion": 39, "version": 1,
        "editable": True, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": []}, "annotations": {"list": []}, "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    wanted = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != wanted:
            print(f"{TARGET.relative_to(ROOT)} is stale: run scripts/gen-grafana-dashboard.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
