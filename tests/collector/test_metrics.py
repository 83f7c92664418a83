"""The batch-fed lag histogram exports exactly what prometheus_client's own Histogram would."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from iotmeter_tui.backend.collector.metrics import LAG_BUCKETS, BatchHistogram


def _exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines()
            if not line.startswith("#") and "_created" not in line]


def test_batch_histogram_matches_prometheus_histogram() -> None:
    rng = random.Random(7)
    # Values on the bucket bounds too: "le" means a bound's own value falls in its bucket.
    values = [rng.choice([rng.uniform(0, 4000), rng.choice(LAG_BUCKETS), 0.0])
              for _ in range(5000)]
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("lag_seconds", "lag", buckets=LAG_BUCKETS, registry=theirs)
    batched = BatchHistogram("lag_seconds", "lag", LAG_BUCKETS, ours)
    for value in values:
        reference.observe(value)
    for start in range(0, len(values), 700):
        batched.observe_many(values[start:start + 700])
    batched.observe_many([])
    # Every bucket and the count exactly; the sum up to float rounding (added in batches).
    assert [line for line in _exposition(ours) if "_sum" not in line] == [
        line for line in _exposition(theirs) if "_sum" not in line]
    assert ours.get_sample_value("lag_seconds_sum") == pytest.approx(
        theirs.get_sample_value("lag_seconds_sum"), rel=1e-12)
    assert ours.get_sample_value("lag_seconds_count") == 5000
