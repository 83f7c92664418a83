"""Every metric name the iotmeter processes export, from their own registries (so a metric
renamed in code breaks the rule, dashboard and docs tests)."""

from __future__ import annotations

import importlib.util

from prometheus_client import CollectorRegistry

from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.relay.metrics import RelayMetrics

# The REST API's metrics (iotmeter_tui/api/metrics.py, ApiMetrics, on the `api` branch). Until
# that module is merged here, its five names as agreed; after the merge the import below takes
# over (the lead removes this list then).
EXPECTED_API_METRICS = {
    "iotmeter_api_requests_total": "counter",
    "iotmeter_api_request_duration_seconds": "histogram",
    "iotmeter_api_requests_in_flight": "gauge",
    "iotmeter_api_auth_failures_total": "counter",
    "iotmeter_api_rate_limited_total": "counter",
}


def names(registry: CollectorRegistry) -> dict[str, str]:
    """Exposed name -> type (counters with their `_total`)."""
    out = {}
    for family in registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        out[family.name + suffix] = family.type
    return out


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its package is not there either
        return False


def api_names() -> dict[str, str]:
    if _exists("iotmeter_tui.api.metrics"):
        from iotmeter_tui.api.metrics import ApiMetrics

        return names(ApiMetrics().registry)
    return dict(EXPECTED_API_METRICS)


def simulator_names() -> dict[str, str]:
    if _exists("iotmeter_tui.backend.simulator.metrics"):
        from iotmeter_tui.backend.simulator.metrics import SimulatorMetrics

        return names(SimulatorMetrics().registry)
    return {}


def all_processes() -> dict[str, dict[str, str]]:
    return {
        "collector": names(CollectorMetrics().registry),
        "alert-relay": names(RelayMetrics().registry),
        "api": api_names(),
        "simulator": simulator_names(),
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
