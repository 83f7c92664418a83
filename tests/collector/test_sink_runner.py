"""The sink runner's pace: a sink with a linger writes small batches at most once per
linger, goes on at once while records wait, and drains at once when the collector stops.
Real spool files and a real SQLite time-series store."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.collector.sinks import CursorFile, SinkRunner, TimeSeriesSink
from iotmeter_tui.backend.collector.spool import Spool, SpoolRecord
from iotmeter_tui.backend.stores.timeseries import Point
from iotmeter_tui.backend.stores.timeseries_sqlite import SqliteTimeSeries
from testsupport.fleet import telemetry


class TimedStore(SqliteTimeSeries):
    """The real store, noting when each write started and ended and how many points it
    took."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes: list[tuple[float, float, int]] = []

    def write(self, points: Sequence[Point]) -> None:
        started = time.monotonic()
        super().write(points)
        self.writes.append((started, time.monotonic(), len(points)))


def accepted(seq: int) -> SpoolRecord:
    _, payload = telemetry("dc-0001", 1, seq)
    return SpoolRecord.accepted(
        received_ms=1_795_740_000_000 + seq, device_id="dc-0001",
        msg_type=protocol.TELEMETRY, device_type="power_meter_dc", boot=1, seq=seq,
        ts=1_795_740_000_000 + seq * 1000, payload=payload,
        data=protocol.loads(payload)["data"])


def runner_for(tmp_path: Path) -> tuple[Spool, TimedStore, SinkRunner]:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30)
    store = TimedStore(tmp_path / "ts.db")
    metrics = CollectorMetrics()
    sink = TimeSeriesSink(store, CursorFile(tmp_path / "ts.cursor"), metrics)
    runner = SinkRunner(sink, spool, metrics, threading.Event())
    return spool, store, runner


def commit(spool: Spool, runner: SinkRunner, seqs: range) -> None:
    spool.append([accepted(s) for s in seqs])
    spool.commit()
    runner.wake.set()


def test_small_batches_are_paced_and_a_stop_drains_at_once(tmp_path: Path) -> None:
    spool, store, runner = runner_for(tmp_path)
    runner.start()
    seq = 0
    began = time.monotonic()
    while time.monotonic() - began < 1.3:  # a commit of 10 records every 10 ms
        commit(spool, runner, range(seq, seq + 10))
        seq += 10
        time.sleep(0.01)
    stopping = time.monotonic()
    runner.stop(5.0)
    runner.join(5.0)
    assert not runner.is_alive()
    assert time.monotonic() - stopping < 1.0  # not a linger's wait per batch
    starts = [at for at, _, _ in store.writes]
    # Without the linger: a write per commit or two, about a hundred of them.
    assert len(starts) <= 1.3 / TimeSeriesSink.linger_s + 2
    assert all(b - a >= TimeSeriesSink.linger_s * 0.9 for a, b in pairwise(starts[:-1]))
    assert sum(n for _, _, n in store.writes) == seq
    assert store.counts()["dc-0001"] == seq
    store.close()
    spool.close()


def test_a_backlog_is_written_without_pauses(tmp_path: Path) -> None:
    spool, store, runner = runner_for(tmp_path)
    for start in range(0, 40_000, 5_000):  # eight commits of a full half-read each
        commit(spool, runner, range(start, start + 5_000))
    runner.start()
    deadline = time.monotonic() + 30
    while sum(n for _, _, n in store.writes) < 40_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    runner.stop(5.0)
    runner.join(5.0)
    sizes = [n for _, _, n in store.writes]
    assert sum(sizes) == 40_000 and min(sizes) >= TimeSeriesSink.small_batch
    # Each batch went on as soon as the one before was written, not a linger later.
    pauses = [nxt[0] - prev[1] for prev, nxt in pairwise(store.writes)]
    assert max(pauses) < TimeSeriesSink.linger_s / 2
    assert store.counts()["dc-0001"] == 40_000
    store.close()
    spool.close()


def test_the_backlog_is_reported_before_the_first_batch(tmp_path: Path) -> None:
    """A rollup batch after a restart reads for a while before its first write: /metrics
    must show what waits meanwhile (bench/soak.py's second start stopped the collector
    while that gauge was missing)."""
    spool, store, runner = runner_for(tmp_path)
    commit(spool, runner, range(100))
    release = threading.Event()
    take = runner.sink.next_batch

    def slow_first_batch(*args: object) -> object:
        release.wait(10)
        return take(*args)  # type: ignore[arg-type]

    runner.sink.next_batch = slow_first_batch  # type: ignore[method-assign]
    gauge = runner.metrics.sink_backlog.labels("timeseries")
    runner.start()
    deadline = time.monotonic() + 5
    while gauge._value.get() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gauge._value.get() == spool.committed_size(spool.active_segment) > 0
    release.set()
    while gauge._value.get() and time.monotonic() < deadline + 5:
        time.sleep(0.01)
    assert gauge._value.get() == 0
    runner.stop(5.0)
    runner.join(5.0)
    assert store.counts()["dc-0001"] == 100
    store.close()
    spool.close()
