"""Rollups: a 7-day chart of one device read from rollups against the same chart read from raw
points, and what keeping rollups up to date costs the collector, on InfluxDB and SQLite.

Chart: one device with 7 days of DC-meter points every --every-s seconds; the dashboard's
7-day window (voltage, current and power; mean, min and max; 240 buckets) asked with the
range aligned by rollups.aligned_range, so it reads the 1-minute rollups, and asked 1 ms off
that alignment, so it must read every raw point: the baseline, in the same run, run by run
taking turns. Target: < 100 ms from rollups on both backends.

Collector cost: --fleet meters at 1 Hz for --seconds, committed to a real spool as the
collector's pipeline commits them (--batch records a commit, parsed data kept on the
records as the pipeline leaves it), then taken by the collector's own sinks: the
time-series sink (the write path; what the collector runs with IOTMETER_ROLLUPS=false) and
the rollup sink (collector/rollup_sink.py) once per --rollup-every-s of fleet time, as its
runner does. Each sink's CPU (time.process_time: this process, i.e. the collector's; the
server's own is apart) is summed per message: the time-series sink alone is the baseline
"without rollups", the two together "with". The rollup sink's wall time per minute of fleet
time counts the server's work too: on InfluxDB it is measured both as one collector process
rolls up (folding each batch into the rows it wrote last) and as several do (recomputing
every touched bucket on the server).

    .venv/bin/python bench/rollups.py [--every-s 5] [--runs 11] [--fleet 200] [--seconds 600]
        [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain script from a checkout

from stores_timeseries import meter_fields, paired_latency  # noqa: E402

from iotmeter_tui.backend.collector.metrics import CollectorMetrics  # noqa: E402
from iotmeter_tui.backend.collector.rollup_sink import ROLLUP_EVERY_S, RollupSink  # noqa: E402
from iotmeter_tui.backend.collector.sinks import CursorFile, TimeSeriesSink  # noqa: E402
from iotmeter_tui.backend.collector.spool import ACCEPTED, Spool, SpoolRecord  # noqa: E402
from iotmeter_tui.backend.stores.rollup_fold import RollupBatch  # noqa: E402
from iotmeter_tui.backend.stores.rollups import HOUR_MS, aligned_range  # noqa: E402
from iotmeter_tui.backend.stores.timeseries import Point, TimeSeriesStore  # noqa: E402
from iotmeter_tui.backend.stores.timeseries_influx import InfluxTimeSeries  # noqa: E402
from iotmeter_tui.backend.stores.timeseries_sqlite import SqliteTimeSeries  # noqa: E402
from testsupport import InfluxServer  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "rollups.json"
WEEK_MS = 7 * 24 * HOUR_MS
CHART_FIELDS = ["voltage_v", "current_a", "power_kw"]
CHART_AGGREGATES = ("mean", "min", "max")
CHART_POINTS = 240  # the device screen's HISTORY_POINTS
DEVICE = "dc-week"
TARGET_MS = 100.0
END_MS = 1_795_737_600_000  # a whole hour; the week before it is charted


def week_of_points(every_s: int) -> list[list[Point]]:
    rng = random.Random(17)
    start = END_MS - WEEK_MS
    points = [Point(DEVICE, "power_meter_dc", ts, 1, n, meter_fields(rng, n))
              for n, ts in enumerate(range(start, END_MS, every_s * 1000))]
    return [points[i : i + 5_000] for i in range(0, len(points), 5_000)]


def chart(store: TimeSeriesStore, start: int, end: int) -> Callable[[], object]:
    return lambda: store.history(DEVICE, CHART_FIELDS, start, end, CHART_POINTS,
                                 aggregates=CHART_AGGREGATES)


def chart_figures(store: TimeSeriesStore, runs: int, every_s: int) -> dict[str, Any]:
    batches = week_of_points(every_s)
    started = time.perf_counter()
    for batch in batches:
        store.write(batch)
        store.roll_up(RollupBatch.of(batch))
    load_s = time.perf_counter() - started
    start, end = aligned_range(END_MS - WEEK_MS, END_MS, CHART_POINTS)
    rollup, raw = paired_latency(runs, chart(store, start, end),
                                 chart(store, start + 1, end))
    buckets = len(store.history(DEVICE, CHART_FIELDS, start, end, CHART_POINTS))
    return {
        "points": sum(len(b) for b in batches),
        "load_points_per_s": round(sum(len(b) for b in batches) / load_s),
        "buckets": buckets,
        "chart_from_rollups_ms": rollup,
        "chart_from_raw_ms": raw,
        "raw_over_rollups": round(raw["median"] / rollup["median"], 1),
        "meets_target": rollup["p95"] < TARGET_MS,
    }


def collector_figures(store: TimeSeriesStore, directory: Path, fleet: int, seconds: int,
                      commit: int, rollup_every_s: int, sole_writer: bool) -> dict[str, Any]:
    """CPU per message of the time-series sink and of the rollup sink over the same spool,
    and the rollup sink's wall time (with the server's)."""
    rng = random.Random(5)
    spool = Spool(directory / "spool", max_bytes=1 << 34)
    stored = CursorFile(directory / "timeseries.cursor")
    timeseries = TimeSeriesSink(store, stored, CollectorMetrics())
    rollups = RollupSink(store, CursorFile(directory / "rollups.cursor"), stored, every_s=0,
                         sole_writer=sole_writer)
    ts_at = rollup_at = spool.start()
    cpu = {"timeseries": 0.0, "rollups": 0.0}
    rollup_wall = 0.0
    messages = 0
    now = int(time.time() * 1000)
    start_ms = now - now % 60_000 - seconds * 1000  # the fleet's time ends now, as live data
    for chunk in range(0, seconds, rollup_every_s):
        records = []
        for second in range(chunk, min(seconds, chunk + rollup_every_s)):
            for d in range(fleet):
                ts = start_ms + second * 1000 + d
                data = meter_fields(rng, second)
                records.append(SpoolRecord(ACCEPTED, ts, f"m-{d:04d}", "telemetry",
                                           "power_meter_dc", 1, second, ts, "", "", "",
                                           json.dumps({"data": data}).encode(), data))
        for i in range(0, len(records), commit):
            spool.append(records[i : i + commit])
            spool.commit()
        messages += len(records)
        started = time.process_time()
        while True:
            batch, end = timeseries.next_batch(spool, ts_at)
            if not batch:
                break
            timeseries.write(batch, end)
            timeseries.save_cursor(end)
            ts_at = end
        cpu["timeseries"] += time.process_time() - started
        started, wall = time.process_time(), time.perf_counter()
        points, end = rollups.next_batch(spool, rollup_at)
        rollups.write(points, end)
        rollups.save_cursor(end)
        rollup_at = end
        cpu["rollups"] += time.process_time() - started
        rollup_wall += time.perf_counter() - wall
    spool.close()
    without = cpu["timeseries"] / messages * 1e6
    added = cpu["rollups"] / messages * 1e6
    return {
        "messages": messages, "fleet": fleet, "seconds": seconds,
        "rollup_every_s": rollup_every_s,
        "cpu_us_per_msg_without_rollups": round(without, 1),
        "cpu_us_per_msg_with_rollups": round(without + added, 1),
        "rollup_sink_cpu_us_per_msg": round(added, 1),
        "sole_writer": sole_writer,
        "rollup_sink_wall_s_per_fleet_minute": round(rollup_wall / seconds * 60, 3),
        "with_over_without": round((without + added) / without, 2),
    }


def sqlite_store(directory: Path, name: str, rollups: bool) -> SqliteTimeSeries:
    return SqliteTimeSeries(directory / f"{name}.db", rollups=rollups)


def influx_store(server: InfluxServer, name: str, rollups: bool) -> InfluxTimeSeries:
    return InfluxTimeSeries(f"influxdb://{server.host}:{server.port}/{name}", rollups=rollups)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every-s", type=int, default=5, help="seconds between a week's points")
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--fleet", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=600, help="of fleet time at 1 Hz")
    parser.add_argument("--batch", type=int, default=500, help="records a spool commit")
    parser.add_argument("--rollup-every-s", type=int, default=int(ROLLUP_EVERY_S))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": platform.machine(), "python": platform.python_version(),
                               "every_s": args.every_s, "chart_points": CHART_POINTS,
                               "target_ms": TARGET_MS}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        store = sqlite_store(directory, "chart", True)
        results["sqlite"] = {"chart": chart_figures(store, args.runs, args.every_s)}
        store.close()
        store = sqlite_store(directory, "collector", True)
        results["sqlite"]["collector"] = collector_figures(
            store, directory / "c-sqlite", args.fleet, args.seconds, args.batch,
            args.rollup_every_s, True)
        store.close()
    with InfluxServer() as server:
        store = influx_store(server, "chart", True)
        results["influxdb"] = {"chart": chart_figures(store, args.runs, args.every_s)}
        store.close()
        # One collector process folds (the default); several recompute on the server.
        for key, sole in (("collector", True), ("collector_several_workers", False)):
            store = influx_store(server, key, True)
            with tempfile.TemporaryDirectory() as tmp:
                results["influxdb"][key] = collector_figures(
                    store, Path(tmp), args.fleet, args.seconds, args.batch,
                    args.rollup_every_s, sole)
            store.close()
    print("charts: stores with rollups on; collector: time-series sink alone vs with the "
          "rollup sink")
    for backend in ("sqlite", "influxdb"):
        c = results[backend]["chart"]
        print(f"{backend:8} 7-day chart ({c['points']} points, {c['buckets']} buckets): "
              f"rollups median {c['chart_from_rollups_ms']['median']} ms "
              f"p95 {c['chart_from_rollups_ms']['p95']} ms, raw median "
              f"{c['chart_from_raw_ms']['median']} ms (x{c['raw_over_rollups']}); "
              f"target < {TARGET_MS:g} ms: {'met' if c['meets_target'] else 'MISSED'}")
        for key in ("collector", "collector_several_workers"):
            w = results[backend].get(key)
            if w is None:
                continue
            how = ("folded by the one collector process" if w["sole_writer"] and
                   backend == "influxdb" else "recomputed from the stored points")
            print(f"{'':8} collector CPU per message ({w['messages']:,} messages), rollups "
                  f"{how}: {w['cpu_us_per_msg_without_rollups']} µs without rollups, "
                  f"{w['cpu_us_per_msg_with_rollups']} µs with (rollup sink "
                  f"{w['rollup_sink_cpu_us_per_msg']} µs, x{w['with_over_without']}); the "
                  f"rollup sink's wall time, server included: "
                  f"{w['rollup_sink_wall_s_per_fleet_minute']} s a minute of the fleet")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
