"""The dashboard's rates from the collector's cumulative counters (pure logic)."""

from __future__ import annotations

from dataclasses import replace

from iotmeter_tui.backend.collector.health import CollectorHealth
from iotmeter_tui.view.health import HealthTracker

BASE = CollectorHealth(at=1000.0, starting=False, broker_connected=True, broker_error=None,
                       received=0, acked=0, duplicates=0, spool_bytes=0, spool_full=False)


def test_rates_come_from_the_counters_over_the_window() -> None:
    tracker = HealthTracker()
    tracker.add(None)  # no snapshot yet: nothing to learn
    tracker.add(BASE)
    assert tracker.rate() is None  # one sample is no rate
    for second in range(1, 7):
        tracker.add(replace(BASE, at=BASE.at + second, received=100 * second,
                            acked=80 * second))
    assert tracker.rate() == 100.0
    assert tracker.ack_rate() == 80.0
    assert len(tracker.history) == 6


def test_the_same_snapshot_twice_counts_once() -> None:
    tracker = HealthTracker()
    tracker.add(BASE)
    later = replace(BASE, at=BASE.at + 2, received=50, acked=50)
    tracker.add(later)
    tracker.add(later)  # the app polls faster than the child sends
    assert tracker.rate() == 25.0
    assert len(tracker.history) == 1
