"""docs/operations.md names every metric every iotmeter process exports (collector, alert relay,
REST API, simulator), and nothing they do not; the standard process metrics are there too."""

from __future__ import annotations

import re
from pathlib import Path

from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from testsupport.metric_names import all_processes, names

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def application_names() -> set[str]:
    return {name for process in all_processes().values() for name in process
            if name.startswith("iotmeter_")}


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    documented = set(re.findall(r"^\| `(iotmeter_[a-z_]+)` \|", DOC.read_text(), re.MULTILINE))
    exported = application_names()
    assert exported <= documented, f"undocumented: {exported - documented}"
    assert documented <= exported, f"documented but not exported: {documented - exported}"


def test_at_least_40_application_metrics() -> None:
    assert len(application_names()) >= 40


def test_the_api_metrics_are_the_ones_the_rules_and_dashboard_were_written_against() -> None:
    api = all_processes()["api"]
    assert {n: t for n, t in api.items() if n.startswith("iotmeter_")} == {
        "iotmeter_api_requests_total": "counter",
        "iotmeter_api_request_duration_seconds": "histogram",
        "iotmeter_api_requests_in_flight": "gauge",
        "iotmeter_api_auth_failures_total": "counter",
        "iotmeter_api_rate_limited_total": "counter",
    }


def test_application_metrics_are_named_iotmeter_and_process_metrics_are_standard() -> None:
    for process, exported in all_processes().items():
        others = {n for n in exported if not n.startswith("iotmeter_")}
        assert all(n.startswith(("process_", "python_")) for n in others), (process, others)
    collector = names(CollectorMetrics().registry)
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
            "python_info"} <= set(collector)


def test_no_metric_has_a_device_label() -> None:
    for family in CollectorMetrics().registry.collect():
        for sample in family.samples:
            assert not {"device_id", "device"} & set(sample.labels), family.name
