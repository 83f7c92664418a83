"""Rollups: a 7-day chart of one device read from rollups against the same chart read from raw
points, and what keeping rollups up to date costs a write, on InfluxDB and SQLite.

Chart: one device with 7 days of DC-meter points every --every-s seconds; the dashboard's
7-day window (voltage, current and power; mean, min and max; 240 buckets) asked with the
range aligned by rollups.aligned_range, so it reads the 1-minute rollups, and asked 1 ms off
that alignment, so it must read every raw point: the baseline, in the same run, run by run
taking turns. Target: < 100 ms from rollups on both backends.

Rollups are opt-in (IOTMETER_ROLLUPS, off by default): every "with rollups" store here is
opened with rollups=True, as IOTMETER_ROLLUPS=true opens it.

Write cost: the collector's shape of batch (--fleet devices, one point each per second,
--batch points a batch) written with rollups on and, as the baseline, with rollups off (the
default: the adapter's plain write, no stored-point lookup), rounds taking turns: wall-clock
rate, and this process's CPU per point (what the collector pays; InfluxDB's own CPU is not
in it).

    .venv/bin/python bench/rollups.py [--every-s 5] [--runs 11] [--rounds 4] [--out FILE]
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

from stores_timeseries import alternating, meter_fields, paired_latency  # noqa: E402

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


def fleet_batches(rounds: int, fleet: int, batch: int, seconds: int) -> list[list[list[Point]]]:
    """Per round, `seconds` of the fleet at 1 Hz in batches, at times no other round uses."""
    rng = random.Random(5)
    out = []
    for r in range(rounds):
        points = [
            Point(f"w-{d:04d}", "power_meter_dc", END_MS + (r * seconds + s) * 1000 + d, 1,
                  r * seconds + s, meter_fields(rng, s))
            for s in range(seconds) for d in range(fleet)
        ]
        out.append([points[i : i + batch] for i in range(0, len(points), batch)])
    return out


def write_figures(make: Callable[[bool], TimeSeriesStore], rounds: int, fleet: int,
                  batch: int, seconds: int) -> dict[str, Any]:
    with_rollups, without = make(True), make(False)
    data = fleet_batches(rounds * 2, fleet, batch, seconds)
    total = fleet * seconds

    cpu: dict[bool, list[float]] = {True: [], False: []}

    def rate(store: TimeSeriesStore, batches: list[list[Point]], on: bool) -> float:
        started, cpu_started = time.perf_counter(), time.process_time()
        for b in batches:
            store.write(b)
        cpu[on].append((time.process_time() - cpu_started) / total * 1e6)
        return total / (time.perf_counter() - started)

    mine, theirs = alternating(rounds, lambda r: rate(with_rollups, data[2 * r], True),
                               lambda r: rate(without, data[2 * r + 1], False))
    with_rollups.close()
    without.close()
    best_mine, best_theirs = max(mine), max(theirs)
    return {
        "points_per_s_with_rollups": round(best_mine),
        "points_per_s_without_rollups": round(best_theirs),
        "rollup_cost_us_per_point": round((1 / best_mine - 1 / best_theirs) * 1e6, 1),
        # This process's CPU (the collector's, when it writes): the server's is apart.
        "client_cpu_us_per_point_with_rollups": round(min(cpu[True]), 1),
        "client_cpu_us_per_point_without_rollups": round(min(cpu[False]), 1),
        "rounds": rounds, "fleet": fleet, "batch": batch,
    }


def sqlite_store(directory: Path, name: str, rollups: bool) -> SqliteTimeSeries:
    return SqliteTimeSeries(directory / f"{name}.db", rollups=rollups)


def influx_store(server: InfluxServer, name: str, rollups: bool) -> InfluxTimeSeries:
    return InfluxTimeSeries(f"influxdb://{server.host}:{server.port}/{name}", rollups=rollups)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every-s", type=int, default=5, help="seconds between a week's points")
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--fleet", type=int, default=500)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--seconds", type=int, default=10, help="of the fleet per write round")
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
        results["sqlite"]["write"] = write_figures(
            lambda on: sqlite_store(directory, f"w{int(on)}", on),
            args.rounds, args.fleet, args.batch, args.seconds)
    with InfluxServer() as server:
        store = influx_store(server, "chart", True)
        results["influxdb"] = {"chart": chart_figures(store, args.runs, args.every_s)}
        store.close()
        results["influxdb"]["write"] = write_figures(
            lambda on: influx_store(server, f"w{int(on)}", on),
            args.rounds, args.fleet, args.batch, args.seconds)
    print("charts: stores with rollups on (IOTMETER_ROLLUPS=true); writes: rollups on vs off")
    for backend in ("sqlite", "influxdb"):
        c, w = results[backend]["chart"], results[backend]["write"]
        print(f"{backend:8} 7-day chart ({c['points']} points, {c['buckets']} buckets): "
              f"rollups median {c['chart_from_rollups_ms']['median']} ms "
              f"p95 {c['chart_from_rollups_ms']['p95']} ms, raw median "
              f"{c['chart_from_raw_ms']['median']} ms (x{c['raw_over_rollups']}); "
              f"target < {TARGET_MS:g} ms: {'met' if c['meets_target'] else 'MISSED'}")
        print(f"{'':8} writes: {w['points_per_s_with_rollups']} points/s with rollups, "
              f"{w['points_per_s_without_rollups']} without "
              f"({w['rollup_cost_us_per_point']} µs a point); client CPU "
              f"{w['client_cpu_us_per_point_with_rollups']} µs a point with, "
              f"{w['client_cpu_us_per_point_without_rollups']} without")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
