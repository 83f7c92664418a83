"""The collector's retention thread against a real SQLite time-series file: it deletes what
the settings no longer keep, counts it, and survives a store that is busy."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.collector.retention import RetentionKeeper
from iotmeter_tui.backend.stores.rollups import HOUR_MS, Retention
from iotmeter_tui.backend.stores.timeseries import Point
from iotmeter_tui.backend.stores.timeseries_sqlite import SqliteTimeSeries


def wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def old_and_new(now_ms: int) -> list[Point]:
    return [Point("m", "power_meter_dc", now_ms - age_h * HOUR_MS, 1, i, {"v": float(i)})
            for i, age_h in enumerate((100, 50, 1))]


def test_the_keeper_deletes_what_retention_no_longer_keeps(tmp_path: Path) -> None:
    store = SqliteTimeSeries(tmp_path / "ts.db", retention=Retention(raw_ms=24 * HOUR_MS),
                             rollups=True)
    now = int(time.time() * 1000)
    store.write(old_and_new(now))
    metrics = CollectorMetrics()
    keeper = RetentionKeeper(store, metrics, interval_s=0.05, first_after_s=0.0)
    keeper.start()
    try:
        wait_for(lambda: keeper.rounds >= 2)
    finally:
        keeper.stop()
        keeper.join(5)
    assert not keeper.is_alive()
    assert [p.ts for p in store.points("m")] == [now - HOUR_MS]
    assert metrics.sample("iotmeter_retention_deleted_total", {"level": "raw"}) == 2
    # Rollups are kept for ever here: the old hours still chart.
    assert len(store.history("m", ["v"], 0, now + HOUR_MS, 1)) == 1
    store.close()


def test_a_busy_store_is_logged_and_tried_again(tmp_path: Path) -> None:
    path = tmp_path / "ts.db"
    store = SqliteTimeSeries(path, timeout=0.05, retention=Retention(raw_ms=24 * HOUR_MS))
    now = int(time.time() * 1000)
    store.write(old_and_new(now))
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the file
    metrics = CollectorMetrics()
    keeper = RetentionKeeper(store, metrics, interval_s=0.05, first_after_s=0.0)
    keeper.start()
    try:
        wait_for(lambda: metrics.sample(
            "iotmeter_sink_failures_total", {"sink": "retention"}) >= 1)
        assert len(store.points("m")) == 3  # nothing deleted while the file is held
        blocker.execute("ROLLBACK")
        wait_for(lambda: keeper.rounds >= 1)
    finally:
        keeper.stop()
        keeper.join(5)
        blocker.close()
    assert [p.ts for p in store.points("m")] == [now - HOUR_MS]
    store.close()
