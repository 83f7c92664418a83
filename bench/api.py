"""REST API benchmark: wrk against `iotmeter api` (gunicorn, a separate process as in
production) on a private PostgreSQL database and a private InfluxDB holding a fleet of
`--devices` meters, each with its latest values, and one meter with 24 h of 1 s data.

For each query it prints and writes to bench/results/api.json:
- through the API with wrk: requests/s, and p50/p95/p99 latency, at one connection (the
  latency a caller sees) and at `--connections` (throughput);
- the same query made straight on the store in this process, sequentially, in the same run:
  p50/p95/p99 and the API/store ratio of the p50s, so the API's own overhead shows.

Queries: a page of 100 devices; one device's latest values; the fleet's latest values; 24 h
of 1 s data downsampled to 500 points.

    .venv/bin/python bench/api.py [--devices 10000] [--seconds 10] [--connections 8]
        [--workers 2] [--store-runs 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iotmeter_tui.backend.apikeys import ApiKeyService
from iotmeter_tui.backend.broker import free_port
from iotmeter_tui.backend.config import load_settings
from iotmeter_tui.backend.stores import Stores, open_stores
from iotmeter_tui.backend.stores.metadata import DeviceUpdate
from iotmeter_tui.backend.stores.timeseries import Point
from testsupport import InfluxServer, PostgresDatabase

RESULTS = Path(__file__).parent / "results"
DAY_S = 86_400
FIELDS = ("voltage_v", "current_a", "power_kw", "energy_import_kwh", "energy_export_kwh")
BATCH = 5000

# wrk reports percentiles only through Lua: this script adds the key and prints JSON.
WRK_LUA = """
wrk.headers["Authorization"] = "Bearer %s"
done = function(summary, latency, requests)
  local s = summary.duration / 1e6
  io.write(string.format(
    'WRK {"requests": %%d, "seconds": %%.3f, "errors": %%d, "non2xx": %%d, '
    .. '"p50_ms": %%.3f, "p95_ms": %%.3f, "p99_ms": %%.3f}\\n',
    summary.requests, s, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000))
end
"""


def populate(stores: Stores, devices: int, now_ms: int) -> tuple[list[str], float]:
    """`devices` online meters with one point each, and 24 h of 1 s data for the first.
    Returns the ids and the seconds it took."""
    started = time.monotonic()
    ids = [f"dc-{i:05d}" for i in range(devices)]
    updates = [DeviceUpdate(d, now_ms, device_type="power_meter_dc", fw_version="1.0.0",
                            boot=1, heartbeat_s=30.0, connection_status="online")
               for d in ids]
    for i in range(0, len(updates), BATCH):
        stores.metadata.apply_collector_batch(updates[i:i + BATCH], [])
    latest = [Point(d, "power_meter_dc", now_ms - 1000, 1, 1,
                    {f: 100.0 + n for n, f in enumerate(FIELDS)}) for d in ids]
    for i in range(0, len(latest), BATCH):
        stores.timeseries.write(latest[i:i + BATCH])
    start = now_ms - DAY_S * 1000
    day = [Point(ids[0], "power_meter_dc", start + s * 1000, 1, 10 + s,
                 {"voltage_v": 750.0 + (s % 100), "current_a": float(s % 2000),
                  "power_kw": 900.0, "energy_import_kwh": 1000.0 + s / 3600,
                  "energy_export_kwh": 10.0}) for s in range(DAY_S)]
    for i in range(0, len(day), BATCH):
        stores.timeseries.write(day[i:i + BATCH])
    return ids, time.monotonic() - started


def wrk(url: str, key: str, seconds: int, connections: int, workdir: Path) -> dict[str, Any]:
    script = workdir / "auth.lua"
    script.write_text(WRK_LUA % key)
    threads = min(2, connections)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
         "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    result = json.loads(line[4:])
    result["rps"] = round(result["requests"] / result["seconds"], 1)
    return result


def store_timing(call: Callable[[], Any], runs: int) -> dict[str, Any]:
    call()  # warm: connections, caches
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()

    def pct(p: float) -> float:
        return round(times[min(len(times) - 1, int(len(times) * p / 100))], 3)

    return {"runs": runs, "p50_ms": round(statistics.median(times), 3), "p95_ms": pct(95),
            "p99_ms": pct(99), "rps_sequential": round(1000 / statistics.mean(times), 1)}


def start_api(env: dict[str, str], port: int, workers: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "iotmeter_tui", "api", "--port", str(port), "--workers",
         str(workers)], env={**os.environ, **env}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                if r.status == 200:
                    return process
        except OSError:
            time.sleep(0.2)
        if process.poll() is not None:
            break
    process.kill()
    raise SystemExit(f"iotmeter api did not start: {process.stderr.read().decode()[-2000:]}"
                     if process.stderr else "iotmeter api did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store-runs", type=int, default=50)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")

    workdir = Path(tempfile.mkdtemp(prefix="iotmeter-bench-api-"))
    with InfluxServer() as influx, PostgresDatabase() as database:
        env = {"IOTMETER_HOME": str(workdir / "home"), "IOTMETER_DB_URL": database.url,
               "IOTMETER_TSDB_URL": influx.url, "IOTMETER_ARCHIVE_URL":
               f"file://{workdir}/archive", "IOTMETER_API_RATE_LIMIT": "0",
               "IOTMETER_LOG_LEVEL": "WARNING"}
        settings = load_settings(env=env)
        stores = open_stores(settings)
        process = None
        try:
            stores.metadata.migrate()
            now_ms = int(time.time() * 1000)
            ids, fill_s = populate(stores, args.devices, now_ms)
            print(f"populated {args.devices} devices + 86,400 points in {fill_s:.1f} s",
                  flush=True)
            key = ApiKeyService(stores.metadata).create("bench", "viewer")[1]
            port = free_port()
            process = start_api(env, port, args.workers)
            base = f"http://127.0.0.1:{port}/api/v1"
            start = now_ms - DAY_S * 1000
            one = ids[len(ids) // 2]
            queries: list[tuple[str, str, Callable[[], Any]]] = [
                ("device_page_100", f"{base}/devices?limit=100&sort=device_id",
                 lambda: stores.metadata.list_devices(order_by="device_id", limit=100)),
                ("device_latest", f"{base}/telemetry/latest?device={one}",
                 lambda: stores.timeseries.latest([one])),
                ("fleet_latest", f"{base}/telemetry/latest",
                 lambda: stores.timeseries.latest()),
                ("day_downsampled_500",
                 f"{base}/devices/{ids[0]}/telemetry?fields=voltage_v,current_a&start={start}"
                 f"&end={now_ms}&every={DAY_S * 1000 // 500}ms&agg=mean",
                 lambda: stores.timeseries.history(ids[0], ["voltage_v", "current_a"], start,
                                                   now_ms, 500, aggregates=["mean"])),
            ]
            results: dict[str, Any] = {}
            for name, url, direct in queries:
                with urllib.request.urlopen(urllib.request.Request(
                        url, headers={"Authorization": f"Bearer {key}"}), timeout=60) as r:
                    body = json.load(r)
                size = len(body.get("items", body.get("points", [])))
                runs = max(5, args.store_runs // 10) if name == "fleet_latest" else \
                    args.store_runs
                before = store_timing(direct, runs)
                single = wrk(url, key, args.seconds, 1, workdir)
                loaded = wrk(url, key, args.seconds, args.connections, workdir)
                after = store_timing(direct, runs)
                # The store measured before and after the API runs (the machine is shared,
                # its load moves): the ratio is taken against the faster of the two.
                store = min(before, after, key=lambda t: t["p50_ms"])
                results[name] = {
                    "items": size, "store": store, "store_before": before,
                    "store_after": after, "api_1_connection": single,
                    f"api_{args.connections}_connections": loaded,
                    "overhead_p50_ratio": round(single["p50_ms"] / store["p50_ms"], 2)
                    if store["p50_ms"] else None}
                print(f"{name:22} items {size:>6}  store p50 {store['p50_ms']:8.2f} ms  "
                      f"api(1) p50 {single['p50_ms']:8.2f} p95 {single['p95_ms']:8.2f} "
                      f"p99 {single['p99_ms']:8.2f} ms {single['rps']:7.1f} req/s  "
                      f"api({args.connections}) p99 {loaded['p99_ms']:8.2f} ms "
                      f"{loaded['rps']:7.1f} req/s  ratio {results[name]['overhead_p50_ratio']}",
                      flush=True)
                if single["non2xx"] or loaded["non2xx"] or single["errors"] or loaded["errors"]:
                    print(f"  {name}: errors or non-2xx answers in the run", flush=True)
        finally:
            if process is not None:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
            stores.close()
            shutil.rmtree(workdir, ignore_errors=True)

    report = {"devices": args.devices, "seconds_per_run": args.seconds,
              "connections": args.connections, "workers": args.workers,
              "cpus": os.cpu_count(), "populate_s": round(fill_s, 1),
              "note": "2 cores shared with 7 other developers' work: figures are noisy",
              "queries": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "api.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'api.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
