"""The rollup sink over a real spool and real stores (SQLite, and InfluxDB 1.6 with a
retention policy per level): it rolls up only what the time-series sink has stored, a late
point re-computes the buckets it falls in (backfill), and a batch rolled up twice (a crash
before the cursor was saved) counts nothing twice."""

from __future__ import annotations

import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotmeter_tui.backend.collector import spool as spool_module
from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.collector.rollup_sink import RollupSink
from iotmeter_tui.backend.collector.sinks import CursorFile, TimeSeriesSink
from iotmeter_tui.backend.collector.spool import (
    ACCEPTED,
    Position,
    Spool,
    SpoolFull,
    SpoolRecord,
)
from iotmeter_tui.backend.stores.factory import open_timeseries
from iotmeter_tui.backend.stores.rollups import HOUR_MS, MINUTE_MS, Retention
from iotmeter_tui.backend.stores.timeseries import TimeSeriesStore
from testsupport import InfluxServer
from testsupport.fleet import telemetry

H0 = 1_795_737_600_000  # a whole hour
# Long enough that H0 is kept at every level, short enough that InfluxDB makes policies.
RETENTION = Retention(raw_ms=100 * 24 * HOUR_MS, minute_ms=200 * 24 * HOUR_MS, hour_ms=None)


# "influxdb-sole": the sink of a one-worker collector, whose store folds each batch into the
# rows it wrote last (stores/rollup_fold.py); the other two recompute every touched bucket.
@pytest.fixture(params=["sqlite", "influxdb", "influxdb-sole"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TimeSeriesStore]:
    if request.param == "sqlite":
        opened = open_timeseries(f"sqlite:///{tmp_path}/ts.db", retention=RETENTION,
                                 rollups=True)
        yield opened
        opened.close()
        return
    server: InfluxServer = request.getfixturevalue("influxdb")
    database = f"rs_{uuid.uuid4().hex[:12]}"
    opened = open_timeseries(f"influxdb://{server.host}:{server.port}/{database}",
                             retention=RETENTION, rollups=True)
    opened.sole_writer = request.param == "influxdb-sole"  # type: ignore[attr-defined]
    yield opened
    opened.close()
    body = urllib.parse.urlencode({"q": f'DROP DATABASE "{database}"'}).encode()
    with urllib.request.urlopen(f"{server.http_url}/query", body, timeout=10):
        pass


def record(seq: int, ts: int, volts: float) -> SpoolRecord:
    topic, payload = telemetry("rs-1", 1, seq, ts=ts, data={"voltage_v": volts})
    return SpoolRecord(ACCEPTED, ts, "rs-1", "telemetry", "power_meter_dc", 1, seq, ts, topic,
                       "", "", payload)


class Collector:
    """The two sinks as their runners drive them, one turn at a time."""

    def __init__(self, directory: Path, store: TimeSeriesStore) -> None:
        self.spool = Spool(directory / "spool", max_bytes=64 << 20)
        stored = CursorFile(directory / "timeseries.cursor")
        self.timeseries = TimeSeriesSink(store, stored, CollectorMetrics())
        self.rollups = RollupSink(store, CursorFile(directory / "rollups.cursor"), stored,
                                  every_s=0.0, sole_writer=getattr(store, "sole_writer", False))
        self.ts_at = self.rollup_at = self.spool.start()

    def receive(self, records: list[SpoolRecord]) -> None:
        self.spool.append(records)
        self.spool.commit()

    def store_points(self) -> None:
        while True:
            batch, end = self.timeseries.next_batch(self.spool, self.ts_at)
            if not batch:
                return
            self.timeseries.write(batch, end)
            self.timeseries.save_cursor(end)
            self.ts_at = end

    def roll_up(self, *, save: bool = True) -> int:
        points, end = self.rollups.next_batch(self.spool, self.rollup_at)
        if points:
            self.rollups.write(points, end)
            if save:
                self.rollups.save_cursor(end)
                self.rollup_at = end
        return sum(len(batch) for batch in points)


def minute_and_hour(store: TimeSeriesStore) -> tuple[dict[str, float], dict[str, float]]:
    [minute] = store.history("rs-1", ["voltage_v"], H0, H0 + MINUTE_MS, 1)
    [hour] = store.history("rs-1", ["voltage_v"], H0, H0 + HOUR_MS, 1)
    return dict(minute.values["voltage_v"]), dict(hour.values["voltage_v"])


def test_rollups_follow_the_stored_points_and_late_data(tmp_path: Path,
                                                        store: TimeSeriesStore) -> None:
    collector = Collector(tmp_path, store)
    collector.receive([record(i, H0 + 1000 + i * 1000, 700.0 + i) for i in range(120)])
    # Nothing is stored yet: the rollup sink waits for the time-series sink.
    assert collector.roll_up() == 0
    assert collector.rollups.next_batch(collector.spool, collector.rollup_at)[1] == \
        collector.rollup_at
    collector.store_points()
    assert collector.roll_up() == 120
    minute, hour = minute_and_hour(store)
    # 700..758 in the first minute (ts H0+1 s .. H0+59 s); 700..819 in the hour.
    assert minute == {"min": 700.0, "max": 758.0, "mean": 729.0, "last": 758.0}
    assert hour == {"min": 700.0, "max": 819.0, "mean": 759.5, "last": 819.0}

    # Later, a point of the first minute arrives: it is stored, and its minute and
    # hour are recomputed with it.
    collector.receive([record(500, H0 + 500, 100.0)])
    collector.store_points()
    assert collector.roll_up(save=False) == 1
    late_minute, late_hour = minute_and_hour(store)
    assert late_minute == {"min": 100.0, "max": 758.0, "mean": (59 * 729.0 + 100) / 60,
                           "last": 758.0}
    assert late_hour["min"] == 100.0
    assert late_hour["mean"] == pytest.approx((120 * 759.5 + 100) / 121)
    # The process died before the rollup cursor was saved: the batch is rolled up again,
    # and nothing counts twice.
    assert collector.roll_up() == 1
    assert minute_and_hour(store) == (late_minute, late_hour)


def test_a_batch_not_yet_stored_waits_whole(tmp_path: Path, store: TimeSeriesStore) -> None:
    """The rollup sink takes a batch only once the time-series sink's saved cursor is past
    its end, and then the same batch: nothing received meanwhile joins it half-stored."""
    collector = Collector(tmp_path, store)
    collector.receive([record(i, H0 + i * 1000, 1.0) for i in range(10)])
    assert collector.roll_up() == 0  # read, but not stored: pending
    collector.store_points()
    collector.receive([record(i, H0 + i * 1000, 2.0) for i in range(10, 20)])
    assert collector.roll_up() == 10  # the pending batch, not the newer records
    assert collector.roll_up() == 0  # the newer ones wait for the time-series sink
    collector.store_points()
    assert collector.roll_up() == 10
    minute, _ = minute_and_hour(store)
    assert minute == {"min": 1.0, "max": 2.0, "mean": 1.5, "last": 2.0}
    saved = CursorFile(tmp_path / "rollups.cursor").load()
    assert saved == collector.rollup_at == collector.ts_at


def test_a_batch_that_ends_a_sealed_segment_is_taken(tmp_path: Path,
                                                     store: TimeSeriesStore) -> None:
    """The time-series sink saves the end of a sealed segment; the rollup sink's read has
    moved on to the start of the next one: the same place, so the batch is stored."""
    collector = Collector(tmp_path, store)
    collector.receive([record(i, H0 + i * 1000, 5.0) for i in range(10)])
    collector.spool.roll()
    collector.store_points()
    assert collector.roll_up() == 10
    minute, _ = minute_and_hour(store)
    assert minute["mean"] == 5.0


def test_a_batch_followed_by_empty_segments_is_taken(tmp_path: Path,
                                                      store: TimeSeriesStore) -> None:
    """Each start of the collector opens a segment: after stops and starts with nothing
    received, the time-series sink's saved cursor (the end of the last segment with data)
    and the rollup sink's read (the start of the active one) are still one place. The
    rollup sink once waited for ever there, and at a stop left its backlog in the spool."""
    collector = Collector(tmp_path, store)
    collector.receive([record(i, H0 + i * 1000, 5.0) for i in range(10)])
    collector.store_points()
    for _ in range(3):
        collector.spool.roll()
    assert collector.roll_up() == 10
    assert collector.rollup_at == Position(collector.spool.segments()[-1], 0)
    minute, _ = minute_and_hour(store)
    assert minute["mean"] == 5.0


def test_readings_whose_sum_overflows_roll_up_without_failing(
        tmp_path: Path, store: TimeSeriesStore) -> None:
    """+1e308 twice and -1e308 three times in one minute: the sum is not finite, so that
    field's bucket is left out instead of failing the batch for ever (a sink that never
    passes holds the spool, and a full spool stops ingest). InfluxDB 1.6 cannot even encode
    such a sum in its answer: the adapter folds that minute itself from the raw points."""
    collector = Collector(tmp_path, store)
    values = [1e308, 1e308, -1e308, -1e308, -1e308]
    collector.receive([record(i, H0 + i * 1000, v) for i, v in enumerate(values)])
    collector.receive([record(10 + i, H0 + 60_000 + i * 1000, 5.0) for i in range(3)])
    collector.store_points()
    assert collector.roll_up() == 8
    # The batch went through: the next minute, from ordinary readings, is rolled up.
    [minute] = store.history("rs-1", ["voltage_v"], H0 + MINUTE_MS, H0 + 2 * MINUTE_MS, 1)
    assert dict(minute.values["voltage_v"]) == {"min": 5.0, "max": 5.0, "mean": 5.0, "last": 5.0}


def test_a_held_pipeline_makes_a_batch_due_at_once(tmp_path: Path,
                                                   store: TimeSeriesStore) -> None:
    """The spool refuses a turn larger than the room left while it is far from half full:
    the rollup sink, which takes a batch once a minute, takes it now, or the pipeline would
    hold the broker's acknowledgements for that minute."""
    collector = Collector(tmp_path, store)
    collector.spool.max_bytes = 40_000
    collector.rollups.every_s = 3600.0
    collector.receive([record(i, H0 + i * 1000, 3.0) for i in range(10)])
    collector.store_points()
    assert collector.roll_up() == 10  # the first batch is due: nothing was taken yet
    collector.receive([record(i, H0 + i * 1000, 4.0) for i in range(10, 20)])
    collector.store_points()
    assert collector.spool.size_bytes < collector.spool.max_bytes // 2
    assert collector.roll_up() == 0  # not due: the hour has not passed
    with pytest.raises(SpoolFull):
        collector.receive([record(i, H0 + i * 1000, 5.0) for i in range(20, 400)])
    assert collector.spool.waiting_for_room
    assert collector.roll_up() == 10
    collector.receive([record(20, H0 + 20_000, 5.0)])
    assert not collector.spool.waiting_for_room


def test_a_backlog_larger_than_a_batch_is_taken_batch_after_batch(
        tmp_path: Path, store: TimeSeriesStore) -> None:
    """A read that stops at the batch size leaves the next batch due at once: a fleet that
    sends more than a batch a minute is not left further behind every minute."""
    collector = Collector(tmp_path, store)
    collector.rollups.every_s = 3600.0
    collector.rollups.max_records = 10
    for start in (0, 10, 20):
        collector.receive([record(i, H0 + i * 1000, 6.0) for i in range(start, start + 10)])
    collector.store_points()
    assert [collector.roll_up() for _ in range(4)] == [10, 10, 10, 0]
    assert collector.rollup_at == collector.ts_at
    collector.receive([record(30, H0 + 30_000, 6.0)])
    collector.store_points()
    assert collector.roll_up() == 0  # caught up: the next batch waits for its hour


def test_records_are_folded_while_in_memory_and_written_at_the_minute(
        tmp_path: Path, store: TimeSeriesStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between writes the sink folds what is committed while the spool still holds it in
    memory, parsed; only the write waits for the minute. Read a minute late, every record
    came from the file, decoded and parsed again: at 5,000 meters 41 % of the collector.
    Shown with a spool that keeps 15 records in memory and a segment file emptied once the
    records are folded: the batch written at the minute still holds all of them."""
    monkeypatch.setattr(spool_module, "RECENT_RECORDS", 15)
    collector = Collector(tmp_path, store)
    collector.rollups.every_s = 3600.0
    collector.receive([record(i, H0 + i * 1000, 1.0) for i in range(5)])
    collector.store_points()
    assert collector.roll_up() == 5  # the first batch is due at once
    for start, volts in ((5, 2.0), (15, 3.0)):
        collector.receive([record(i, H0 + i * 1000, volts) for i in range(start, start + 10)])
        collector.store_points()
        assert collector.roll_up() == 0  # folded; the hour has not passed
    [segment] = collector.spool.directory.glob("*" + spool_module._SUFFIX)
    segment.write_bytes(b"")  # the first 15 records are in this file only now
    collector.rollups.every_s = 0.0
    assert collector.roll_up() == 20
    minute, _ = minute_and_hour(store)
    assert minute["mean"] == pytest.approx((5 * 1.0 + 10 * 2.0 + 10 * 3.0) / 25)
    assert collector.rollup_at == collector.ts_at
