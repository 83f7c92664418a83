"""docs/operations.md names every metric the collector exports, and nothing it does not."""

from __future__ import annotations

import re
from pathlib import Path

from iotmeter_tui.backend.collector.metrics import CollectorMetrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def exported_names() -> set[str]:
    names = set()
    for family in CollectorMetrics().registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        names.add(family.name + suffix)
    return names


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    documented = set(re.findall(r"`(iotmeter_[a-z_]+)`", DOC.read_text()))
    table = {n for n in documented if not n.endswith(("_bucket", "_sum", "_count"))}
    assert exported_names() <= table, f"undocumented: {exported_names() - table}"
    assert table <= exported_names(), f"documented but not exported: {table - exported_names()}"


def test_every_metric_is_named_iotmeter() -> None:
    assert all(name.startswith("iotmeter_") for name in exported_names())
