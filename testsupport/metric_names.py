"""Every metric name the iotmeter processes export, from their own registries (so a metric
renamed in code breaks the rule, dashboard and docs tests)."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from iotmeter_tui.api.metrics import ApiMetrics
from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.simulator.metrics import SimulatorMetrics
from iotmeter_tui.relay.metrics import RelayMetrics


def names(registry: CollectorRegistry) -> dict[str, str]:
    """Exposed name -> type (counters with their `_total`)."""
    out = {}
    for family in registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        out[family.name + suffix] = family.type
    return out


def all_processes() -> dict[str, dict[str, str]]:
    return {
        "collector": names(CollectorMetrics().registry),
        "alert-relay": names(RelayMetrics().registry),
        "api": names(ApiMetrics().registry),
        "simulator": names(SimulatorMetrics().registry),
    }


def exported() -> set[str]:
    """Every series name a scrape can show: histogram parts included."""
    out: set[str] = set()
    for process in all_processes().values():
        for name, kind in process.items():
            out.add(name)
            if kind == "histogram":
                out |= {name + "_bucket", name + "_sum", name + "_count", name + "_created"}
            elif kind == "counter":
                out.add(name.removesuffix("_total") + "_created")  # prometheus_client's
    return out


# Names from Prometheus itself and kube-state-metrics the rules and panels may use.
PROMETHEUS_NAMES = {"up", "ALERTS"}
KUBE_STATE_METRICS_NAMES = {
    "kube_pod_container_status_restarts_total",
    "kube_statefulset_replicas",
    "kube_statefulset_status_replicas_ready",
    "kube_deployment_status_replicas_unavailable",
}


PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                   "unless", "offset", "bool", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels dropped)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("("):
            continue  # a function
        if match.group(0).lower() not in PROMQL_KEYWORDS:
            names.add(match.group(0))
    return names
