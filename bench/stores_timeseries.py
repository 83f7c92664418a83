"""Time-series stores: write throughput and dashboard query latency, InfluxDB and SQLite.

Writes: DC-meter points (5 float fields), 5,000-point batches over 1,000 devices, new
timestamps every round. Baselines in the same run, so the figures read as ratios: for
InfluxDB a bare keep-alive POST of pre-built, pre-gzipped line protocol for the same number of
points (the server's ceiling, no iotmeter code); for SQLite a bare executemany of the same rows
into a plain wide table (SQLite's insert ceiling, without the upserts and the latest table).

Queries, on a store holding 10,000 devices (3 points each) of which one has a day at 1 s
(86,400 points): (a) that day downsampled to 500 buckets: what the dashboard's live charts ask
(voltage, current and power, mean alone and mean/min/max), and for reference every aggregate
of 5 fields and of 1 field; (b) latest values of all 10,000 devices, and of a 50-device page
(what a fleet screen that renders only visible rows asks). For InfluxDB the same InfluxQL sent
raw, unparsed, is the baseline of each. Targets: (a) < 100 ms for the chart cases, (b) < 200 ms.

    .venv/bin/python bench/stores_timeseries.py [--rounds 3] [--runs 11] [--out FILE]
"""

from __future__ import annotations

import argparse
import functools
import gzip
import http.client
import json
import math
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain script from a checkout

from iotmeter_tui.backend.stores.timeseries import (  # noqa: E402
    MAX_TS_MS,
    Point,
    TimeSeriesStore,
)
from iotmeter_tui.backend.stores.timeseries_influx import InfluxTimeSeries  # noqa: E402
from iotmeter_tui.backend.stores.timeseries_sqlite import SqliteTimeSeries  # noqa: E402
from testsupport import InfluxServer  # noqa: E402

Batch = TypeVar("Batch")

RESULTS = Path(__file__).parent / "results" / "stores_timeseries.json"
BATCH = 5_000
WRITE_DEVICES = 1_000
FLEET = 10_000
POINTS_PER_FLEET_DEVICE = 3
DAY_S = 86_400
PAGE = 50
FIELDS = ("voltage_v", "current_a", "power_kw", "energy_import_kwh", "energy_export_kwh")
AGGREGATES = ("mean", "min", "max", "last")
# name -> (fields, aggregates) of each history query timed. The chart cases are what the
# dashboard asks and what the (a) target is about; the others show how cost scales.
HISTORY_CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "chart_3_fields_mean": (FIELDS[:3], ("mean",)),
    "chart_3_fields_mean_min_max": (FIELDS[:3], ("mean", "min", "max")),
    "all_aggregates_5_fields": (FIELDS, AGGREGATES),
    "all_aggregates_1_field": (FIELDS[:1], AGGREGATES),
}
CHART_CASES = ("chart_3_fields_mean", "chart_3_fields_mean_min_max")
TARGET_HISTORY_MS = 100.0
TARGET_LATEST_MS = 200.0
T0_MS = 1_795_740_000_000
HISTORY_DEVICE = "dc-00000"


def meter_fields(rng: random.Random, n: int) -> dict[str, float]:
    current = rng.uniform(-1500, 4000)
    voltage = rng.uniform(500, 900)
    return {
        "voltage_v": round(voltage, 2),
        "current_a": round(current, 2),
        "power_kw": round(voltage * current / 1000, 3),
        "energy_import_kwh": 182_733.41 + n * 0.01,
        "energy_export_kwh": 20_311.02 + n * 0.002,
    }


def write_batches(rounds: int, points: int) -> list[list[list[Point]]]:
    """Per round, batches of points with timestamps no other round or baseline uses."""
    rng = random.Random(7)
    out = []
    for r in range(rounds):
        batch_list: list[list[Point]] = []
        for b in range(points // BATCH):
            batch = []
            for i in range(BATCH):
                n = b * BATCH + i
                ts = T0_MS + (r * points + n) // WRITE_DEVICES * 1000 + n % 1000
                batch.append(Point(f"w-{n % WRITE_DEVICES:04d}", "power_meter_dc", ts, 1, n,
                                   meter_fields(rng, n)))
            batch_list.append(batch)
        out.append(batch_list)
    return out


def line(point: Point) -> str:
    fields = ",".join(f"{k}={float(v)!r}" for k, v in point.fields.items())
    return (f"iot_telemetry,device_id={point.device_id},device_type={point.device_type} "
            f"{fields},boot={point.boot}i,seq={point.seq}i {point.ts}")


def timed_rate(batches: Sequence[Batch], write: Callable[[Batch], object], points: int) -> float:
    """Points per second writing `batches` (holding `points` in all) one after another."""
    started = time.perf_counter()
    for batch in batches:
        write(batch)
    return points / (time.perf_counter() - started)


def alternating(
    rounds: int, ours: Callable[[int], float], baseline: Callable[[int], float]
) -> tuple[list[float], list[float]]:
    """Both rates each round, taking turns at going first: on a shared machine a load that
    comes and goes then falls on both alike."""
    mine, theirs = [], []
    for r in range(rounds):
        if r % 2:
            mine.append(ours(r))
            theirs.append(baseline(r))
        else:
            theirs.append(baseline(r))
            mine.append(ours(r))
    return mine, theirs


def timed_ms(query: Callable[[], object]) -> float:
    started = time.perf_counter()
    query()
    return (time.perf_counter() - started) * 1000


def summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "median": round(statistics.median(samples), 2),
        "p95": round(samples[max(0, math.ceil(0.95 * len(samples)) - 1)], 2),
        "min": round(samples[0], 2),
    }


def latency(runs: int, query: Callable[[], object]) -> dict[str, float]:
    query()  # warm: connections, caches, the temp bucket table
    return summary([timed_ms(query) for _ in range(runs)])


def paired_latency(
    runs: int, ours: Callable[[], object], baseline: Callable[[], object]
) -> tuple[dict[str, float], dict[str, float]]:
    """Both latencies, run by run taking turns at going first: on a shared machine a load
    that comes and goes then falls on both alike."""
    ours()
    baseline()
    mine, theirs = [], []
    for r in range(runs):
        if r % 2:
            mine.append(timed_ms(ours))
            theirs.append(timed_ms(baseline))
        else:
            theirs.append(timed_ms(baseline))
            mine.append(timed_ms(ours))
    return summary(mine), summary(theirs)


def fleet_points() -> Iterator[list[Point]]:
    """10,000 devices x 3 points, then HISTORY_DEVICE's day at 1 s, in 5,000-point batches."""
    rng = random.Random(11)
    end = T0_MS + DAY_S * 1000
    batch: list[Point] = []
    for k in range(POINTS_PER_FLEET_DEVICE):
        for d in range(1, FLEET):
            batch.append(Point(f"dc-{d:05d}", "power_meter_dc", end - (3 - k) * 1000 + d % 997,
                               1, k, meter_fields(rng, k)))
            if len(batch) == BATCH:
                yield batch
                batch = []
    for s in range(DAY_S):
        batch.append(Point(HISTORY_DEVICE, "power_meter_dc", T0_MS + s * 1000, 1, s,
                           meter_fields(rng, s)))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def query_figures(
    store: TimeSeriesStore, runs: int,
    baselines: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, Any]:
    """Latency of each dashboard query; where `baselines` has the same query sent raw, it
    is timed run by run alongside, and the ratio of the medians given."""
    for batch in fleet_points():
        store.write(batch)
    end = T0_MS + DAY_S * 1000
    page = [f"dc-{d:05d}" for d in range(2000, 2000 + PAGE)]
    assert len(store.latest()) == FLEET
    queries: dict[str, Callable[[], object]] = {}
    for name, (fields, aggregates) in HISTORY_CASES.items():
        def history(fields: Sequence[str] = fields, aggregates: Sequence[str] = aggregates
                    ) -> list[Any]:
            return store.history(HISTORY_DEVICE, fields, T0_MS, end, 500, aggregates=aggregates)

        buckets = history()
        assert len(buckets) == 500
        assert all(set(values) == set(aggregates) for values in buckets[0].values.values())
        queries[f"history_day_500_buckets_{name}_ms"] = history
    queries["latest_10000_devices_ms"] = store.latest
    queries["latest_page_of_50_devices_ms"] = lambda: store.latest(page)
    figures: dict[str, Any] = {}
    for key, query in queries.items():
        baseline = (baselines or {}).get(key)
        if baseline is None:
            figures[key] = latency(runs, query)
            continue
        ours, raw = paired_latency(runs, query, baseline)
        figures[key] = ours
        figures["baseline_raw_query_" + key] = raw
        figures["ratio_" + key] = round(ours["median"] / raw["median"], 3)
    return figures


def verdict(figures: dict[str, Any]) -> dict[str, bool]:
    return {
        **{f"history_{name}_under_100_ms": (
            figures[f"history_day_500_buckets_{name}_ms"]["median"] < TARGET_HISTORY_MS)
           for name in CHART_CASES},
        "latest_10000_under_200_ms": (
            figures["latest_10000_devices_ms"]["median"] < TARGET_LATEST_MS),
    }


# --- InfluxDB -----------------------------------------------------------------------------


class RawInflux:
    """Bare http.client on one keep-alive connection: no iotmeter code in the way."""

    def __init__(self, server: InfluxServer) -> None:
        self.connection = http.client.HTTPConnection(server.host, server.port, timeout=120)

    def post(self, target: str, body: bytes, headers: dict[str, str]) -> bytes:
        self.connection.request("POST", target, body, headers)
        response = self.connection.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{response.status}: {data[:300]!r}")
        return data

    def write(self, database: str, body: bytes) -> bytes:
        target = f"/write?db={database}&precision=ms"
        return self.post(target, body, {"Content-Encoding": "gzip"})

    def query(self, database: str, q: str) -> bytes:
        body = urllib.parse.urlencode({"db": database, "q": q, "epoch": "ms"}).encode()
        return self.post("/query", body, {"Content-Type": "application/x-www-form-urlencoded"})


def bench_influx(args: argparse.Namespace, rounds: list[list[list[Point]]]) -> dict[str, Any]:
    with InfluxServer() as server:
        raw = RawInflux(server)
        writes = influx_write_rates(server, raw, args, rounds)
        store = InfluxTimeSeries(f"influxdb://{server.host}:{server.port}/bench_query")
        figures = query_figures(store, args.runs, raw_queries(raw))
        store.close()
        return {
            "server": "influxd " + version(server),
            **writes,
            **figures,
            "reference_raw_query_latest_10000_with_last_star_ms": latency(
                args.runs, lambda: raw.query("bench_query", LATEST_WITH_LAST_STAR)),
            "targets": verdict(figures),
        }


def influx_write_rates(
    server: InfluxServer, raw: RawInflux, args: argparse.Namespace,
    rounds: list[list[list[Point]]],
) -> dict[str, Any]:
    store = InfluxTimeSeries(f"influxdb://{server.host}:{server.port}/bench_write")
    raw.query("", 'CREATE DATABASE "bench_raw"')
    # The same points, pre-built and pre-gzipped, into a database of their own.
    bodies = [[gzip.compress("\n".join(map(line, batch)).encode(), 1) for batch in r]
              for r in rounds]
    ours, baseline = alternating(
        args.rounds,
        lambda r: timed_rate(rounds[r], store.write, args.write_points),
        lambda r: timed_rate(bodies[r], lambda b: raw.write("bench_raw", b), args.write_points),
    )
    store.close()
    return {
        "write_points_per_s": round(statistics.median(ours)),
        "baseline_raw_post_points_per_s": round(statistics.median(baseline)),
        "ratio_write_to_raw_post": round(statistics.median(ours) / statistics.median(baseline), 3),
    }


_EVERY = f'WHERE time >= 0ms AND time < {MAX_TS_MS + 1}ms GROUP BY "device_id"'
_NEWEST = f'SELECT last("seq"), "device_type" FROM iot_telemetry {_EVERY}'
# For reference: the last(*) the adapter avoids (it would run last() over boot and seq too).
LATEST_WITH_LAST_STAR = f"{_NEWEST};SELECT last(*) FROM iot_telemetry {_EVERY}"


def raw_queries(raw: RawInflux) -> dict[str, Callable[[], object]]:
    """The InfluxQL the adapter sends for each query (its time bounds and names), to be sent
    bare and not parsed: the server's own cost."""
    end = T0_MS + DAY_S * 1000
    width = math.ceil(DAY_S * 1000 / 500)
    queries: dict[str, str] = {}
    for name, (fields, aggregates) in HISTORY_CASES.items():
        selected = ", ".join(f'{a}("{f}")' for f in fields for a in aggregates)
        queries[f"history_day_500_buckets_{name}_ms"] = (
            f"SELECT {selected} FROM iot_telemetry WHERE device_id = '{HISTORY_DEVICE}'"
            f" AND time >= {T0_MS}ms AND time < {end}ms"
            f" GROUP BY time({width}ms, {T0_MS % width}ms) fill(none)"
        )
    lasts = ", ".join(f'last("{f}") AS "v{i}"' for i, f in enumerate(FIELDS))
    queries["latest_10000_devices_ms"] = f"{_NEWEST};SELECT {lasts} FROM iot_telemetry {_EVERY}"
    return {key: functools.partial(raw.query, "bench_query", q) for key, q in queries.items()}


def version(server: InfluxServer) -> str:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    connection.request("GET", "/ping")
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.getheader("X-Influxdb-Version") or "?"


# --- SQLite -------------------------------------------------------------------------------


def raw_sqlite_writer(path: Path) -> Callable[[list[Point]], None]:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute(
        "CREATE TABLE points (device_id TEXT, ts INTEGER, device_type TEXT, boot INTEGER,"
        " seq INTEGER, f1 REAL, f2 REAL, f3 REAL, f4 REAL, f5 REAL,"
        " PRIMARY KEY (device_id, ts)) WITHOUT ROWID"
    )

    def write(batch: list[Point]) -> None:
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(
            "INSERT INTO points VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(p.device_id, p.ts, p.device_type, p.boot, p.seq, *p.fields.values())
             for p in batch],
        )
        connection.execute("COMMIT")

    return write


def bench_sqlite(args: argparse.Namespace, rounds: list[list[list[Point]]]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ts-", dir=args.dir) as tmp:
        store = SqliteTimeSeries(Path(tmp) / "write.db")
        raw_write = raw_sqlite_writer(Path(tmp) / "raw.db")
        ours, baseline = alternating(
            args.rounds,
            lambda r: timed_rate(rounds[r], store.write, args.write_points),
            lambda r: timed_rate(rounds[r], raw_write, args.write_points),
        )
        store.close()
        query_store = SqliteTimeSeries(Path(tmp) / "query.db")
        figures = query_figures(query_store, args.runs)
        query_store.close()
        return {
            "sqlite": sqlite3.sqlite_version,
            "write_points_per_s": round(statistics.median(ours)),
            "baseline_raw_insert_points_per_s": round(statistics.median(baseline)),
            "ratio_write_to_raw_insert": round(
                statistics.median(ours) / statistics.median(baseline), 3),
            **figures,
            "database_mib": round((Path(tmp) / "query.db").stat().st_size / 2**20, 1),
            "targets": verdict(figures),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="write rounds (median taken)")
    parser.add_argument("--write-points", type=int, default=100_000, help="points per round")
    parser.add_argument("--runs", type=int, default=11, help="runs per query latency")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--dir", default=None, help="parent of the SQLite files (a tmp dir)")
    args = parser.parse_args()

    rounds = write_batches(args.rounds, args.write_points)
    result: dict[str, Any] = {
        "bench": "stores_timeseries",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
        },
        "workload": {
            "batch_points": BATCH,
            "fields_per_point": len(FIELDS),
            "write_devices": WRITE_DEVICES,
            "write_points_per_round": args.write_points,
            "write_rounds": args.rounds,
            "fleet_devices": FLEET,
            "history_points": DAY_S,
            "history_buckets": 500,
            "history_cases": {name: {"fields": list(fields), "aggregates": list(aggregates)}
                              for name, (fields, aggregates) in HISTORY_CASES.items()},
            "query_runs": args.runs,
        },
    }
    for name, bench in (("influxdb", bench_influx), ("sqlite", bench_sqlite)):
        result[name] = bench(args, rounds)
        print(name, json.dumps(result[name], indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result)
    print(f"written to {args.out}")


def print_summary(result: dict[str, Any]) -> None:
    print(f"{'query':<52}{'store':>9}{'median ms':>11}{'p95 ms':>9}{'raw ms':>9}{'x raw':>7}")
    queries = [f"history_day_500_buckets_{name}_ms" for name in HISTORY_CASES]
    for query in [*queries, "latest_10000_devices_ms", "latest_page_of_50_devices_ms"]:
        for store in ("influxdb", "sqlite"):
            figures = result[store]
            raw = figures.get("baseline_raw_query_" + query)
            shown = (f"{raw['median']:>9.2f}{figures['ratio_' + query]:>7.2f}" if raw
                     else f"{'':>16}")
            print(f"{query:<52}{store:>9}{figures[query]['median']:>11.2f}"
                  f"{figures[query]['p95']:>9.2f}{shown}")


if __name__ == "__main__":
    main()
