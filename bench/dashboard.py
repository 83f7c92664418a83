"""Dashboard benchmark: the fleet view with 10,000 meters in the registry while the collector
ingests 10,000 msg/s.

Set-up, all on this machine: SQLite embedded stores in a temp IOTMETER_HOME holding 8,000
registered meters, the runtime on the embedded defaults (private mosquitto, the collector
worker process), and 2,000 simulated meters at 5 Hz in a separate `iotmeter simulate`
process (meters are other machines in production, so they do not share the UI's
interpreter) -- 10,000 meters in the registry, 10,000 msg/s offered to the collector. When
the machine cannot carry the whole offered rate within a minute and a half, the bench
measures at the rate reached and says so beside the figures.

The app runs headless (`run_test`) with its normal 1 s refresh. A hook on the app's display
step records every paint, and renders each update to the escape sequences a terminal would
receive, so the cost of the output is counted too. It measures:

- time to first paint: from creating the app to the first paint that shows the fleet table
  with every visible row filled in (target: under 1 s); the import time of the app module
  is printed beside it (a cold `iotmeter` pays both);
- keypress to redraw: from sending a key to the first paint that shows its effect complete
  (cursor moved and every visible row held; after a sort, the rows of the new order) over
  down, page down/up and sort keys -- p50 and p95 (target: p95 under 50 ms);
- the same keypress figures with the load stopped, as a baseline in the same run.

Prints the figures and writes bench/results/dashboard.json.

    .venv/bin/python bench/dashboard.py [--registry 10000] [--devices 2000] [--rate 5]
        [--keys 240]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textual._compositor import CompositorUpdate
from textual.app import App, ComposeResult
from textual.widgets import Static

from iotmeter_tui.app import IotmeterApp
from iotmeter_tui.backend.config import Settings, load_settings
from iotmeter_tui.backend.runtime import Runtime
from iotmeter_tui.backend.stores import open_stores
from iotmeter_tui.backend.stores.metadata import DeviceUpdate
from iotmeter_tui.backend.stores.timeseries import Point
from iotmeter_tui.screens.fleet import FleetScreen

RESULTS = Path(__file__).parent / "results"
SIZE = (120, 40)
THINK_S = 0.05  # between keys: a fast typist, not a tight loop


# --- set-up ---------------------------------------------------------------------------------


def prefill(settings: Settings, count: int) -> None:
    """`count` registered meters with one telemetry point each (what a fleet that has been
    running looks like to the dashboard)."""
    stores = open_stores(settings)
    now = int(time.time() * 1000)
    updates, points = [], []
    for i in range(count):
        device_id = f"reg-{i:05d}"
        kind = "power_meter_dc" if i % 2 else "power_meter_ac"
        seen = now - (i * 7919) % 3_600_000
        updates.append(DeviceUpdate(device_id, seen, device_type=kind,
                                    fw_version=f"1.{i % 4}.0", boot=1, heartbeat_s=30.0,
                                    connection_status="offline", status_at=seen))
        fields = ({"voltage_v": 750.0 + i % 50, "current_a": 1000.0 - i % 300,
                   "power_kw": 700.0} if i % 2 else
                  {"voltage_v": 25_000.0 + i % 500, "current_a": 300.0,
                   "active_power_kw": 7000.0})
        points.append(Point(device_id, kind, seen, 1, 0, fields))
    for start in range(0, count, 2000):
        stores.metadata.apply_collector_batch(updates[start:start + 2000], [])
        stores.timeseries.write(points[start:start + 2000])
    stores.close()


def start_load(runtime: Runtime, devices: int, rate: float, home: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, IOTMETER_MQTT_URL=runtime.mqtt_url, IOTMETER_HOME=str(home))
    return subprocess.Popen(
        [sys.executable, "-m", "iotmeter_tui", "simulate", "--devices", str(devices),
         "--rate", str(rate), "--kind", "mixed", "--prefix", "sim-", "--seed", "7"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_load(load: subprocess.Popen[bytes]) -> None:
    load.send_signal(signal.SIGTERM)
    try:
        load.wait(60)
    except subprocess.TimeoutExpired:
        load.kill()
        load.wait()


def ingest_rate(runtime: Runtime, window_s: float = 5.0) -> float:
    """Messages/s the collector received over `window_s`, from its health channel."""
    assert runtime.worker is not None

    def received() -> tuple[float, float]:
        health = runtime.worker.health() if runtime.worker else None
        if health is None:
            return time.time(), 0.0
        return health.at, float(health.received)

    t0, r0 = received()
    time.sleep(window_s)
    t1, r1 = received()
    return (r1 - r0) / (t1 - t0) if t1 > t0 else 0.0


def reach_rate(runtime: Runtime, target: float, timeout_s: float) -> float:
    """The collector's ingest rate once it is within 10% of `target`, or the best rate seen
    in `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    best = 0.0
    while time.monotonic() < deadline:
        best = max(best, ingest_rate(runtime))
        if best >= 0.9 * target:
            break
    return best


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"bench: timed out after {timeout_s:g} s waiting for {what}")


# --- measuring paints -------------------------------------------------------------------------


class PaintClock:
    """Wraps the app's display step: renders each update as a terminal would get it and
    notes when a paint first satisfies `condition`."""

    def __init__(self, app: IotmeterApp) -> None:
        self.app = app
        self.original = app._display
        self.condition: Callable[[], bool] | None = None
        self.hit: float | None = None
        self.paints = 0
        self.output_bytes = 0
        app._display = self.display  # type: ignore[method-assign]

    def display(self, screen: Any, renderable: Any) -> None:
        self.original(screen, renderable)
        if renderable is None:
            return
        if isinstance(renderable, CompositorUpdate):
            # Headless skips this; a terminal session pays it on every paint.
            self.output_bytes += len(renderable.render_segments(self.app.console))
        self.paints += 1
        if self.condition is not None and self.hit is None and self.condition():
            self.hit = time.perf_counter()

    def expect(self, condition: Callable[[], bool]) -> None:
        self.condition, self.hit = condition, None

    async def wait(self, timeout_s: float = 10.0) -> float:
        deadline = time.perf_counter() + timeout_s
        while self.hit is None:
            if time.perf_counter() > deadline:
                raise SystemExit("bench: a paint never showed the expected state")
            await asyncio.sleep(0.001)
        return self.hit


def settled(screen: FleetScreen, cursor: int | None = None) -> Callable[[], bool]:
    def check() -> bool:
        table = screen.table
        return (screen.shown_query == screen.query_state and table.viewport_held()
                and (cursor is None or table.cursor == cursor))

    return check


def key_plan(count: int) -> list[str]:
    """Mostly movement, with sorts mixed in: a session of browsing the fleet. Every key
    changes what is shown (a key that changes nothing paints nothing to time)."""
    cycle = (["down"] * 6 + ["pagedown"] * 3 + ["pageup"] * 2 + ["up"] * 2 + ["s"]
             + ["down"] * 2 + ["pagedown"] * 2 + ["S"])
    plan = []
    while len(plan) < count:
        plan.extend(cycle)
    return plan[:count]


async def measure_app(runtime: Runtime, keys: int) -> dict[str, Any]:
    created = time.perf_counter()
    app = IotmeterApp(runtime)
    clock = PaintClock(app)
    result: dict[str, Any] = {}

    def fleet_shown() -> bool:
        try:
            screen = app.screen
        except Exception:  # no screen yet
            return False
        return isinstance(screen, FleetScreen) and bool(screen.table.rows) \
            and settled(screen)()

    # Set before the app starts: run_test returns only once the app is up, and the first
    # paint with rows may come before that.
    clock.expect(fleet_shown)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        first = await clock.wait(30)
        result["first_paint_s"] = round(first - created, 3)
        result["rows_in_registry"] = screen.table.total
        await pilot.pause(1.0)
        latencies: dict[str, list[float]] = {}
        for key in key_plan(keys):
            table = screen.table
            step = {"down": 1, "up": -1, "pagedown": table._body_height(),
                    "pageup": -table._body_height()}.get(key)
            sent = time.perf_counter()
            if step is None:  # a sort: the rows of the new order, from the top
                before = screen.query_state
                clock.expect(lambda before=before: screen.query_state != before
                             and settled(screen, 0)())
            else:
                clock.expect(settled(screen, max(0, min(table.total - 1, table.cursor + step))))
            await pilot.press(key)
            hit = await clock.wait()
            latencies.setdefault(key, []).append((hit - sent) * 1000)
            await asyncio.sleep(THINK_S)
        result["paints"] = clock.paints
        result["output_bytes"] = clock.output_bytes
        result["keys"] = summarise(latencies)
    return result


class BareApp(App[None]):
    """Textual's own floor: an app that paints one line of text."""

    def compose(self) -> ComposeResult:
        yield Static("iotmeter")


async def bare_first_paint() -> float:
    created = time.perf_counter()
    app = BareApp()
    clock = PaintClock(app)  # type: ignore[arg-type]
    clock.expect(lambda: True)
    async with app.run_test(size=SIZE):
        painted = await clock.wait(30)
    return round(painted - created, 3)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def summarise(latencies: dict[str, list[float]]) -> dict[str, Any]:
    every = [v for values in latencies.values() for v in values]
    out: dict[str, Any] = {
        "all": {"n": len(every), "p50_ms": round(statistics.median(every), 1),
                "p95_ms": round(percentile(every, 95), 1), "max_ms": round(max(every), 1)},
    }
    for key, values in sorted(latencies.items()):
        out[key] = {"n": len(values), "p50_ms": round(statistics.median(values), 1),
                    "p95_ms": round(percentile(values, 95), 1)}
    return out


def import_time() -> float:
    """Seconds for a fresh interpreter to import the app (a cold `iotmeter` pays this)."""
    code = "import time; t = time.perf_counter(); import iotmeter_tui.app; " \
           "print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return round(float(out.stdout.strip()), 3)


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=int, default=10_000, help="meters in the registry")
    parser.add_argument("--devices", type=int, default=2_000, help="simulated, sending")
    parser.add_argument("--rate", type=float, default=5.0, help="messages/s per simulated")
    parser.add_argument("--keys", type=int, default=240, help="key presses per measurement")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    # ignore_cleanup_errors: a child may still be closing files when the directory goes.
    with tempfile.TemporaryDirectory(prefix="iotmeter-bench-", ignore_cleanup_errors=True) as tmp:
        home = Path(tmp) / "home"
        settings = load_settings(env={"IOTMETER_HOME": str(home),
                                      "IOTMETER_FIRMWARE_LISTEN": "127.0.0.1:0"})
        print(f"registry: {args.registry - args.devices:,} meters prefilled …", flush=True)
        prefill(settings, args.registry - args.devices)
        runtime = Runtime(settings, simulate="no")
        runtime.start()
        load = start_load(runtime, args.devices, args.rate, Path(tmp) / "sim")
        try:
            md = runtime.stores.metadata
            wait_for(lambda: md.count_devices() >= args.registry, 300,
                     f"{args.registry:,} meters in the registry")
            target = args.devices * args.rate
            rate = reach_rate(runtime, target, 90.0)
            if rate < 0.9 * target:
                print(f"load: the collector reached {rate:,.0f} of {target:,.0f} msg/s offered "
                      f"in 90 s (a loaded machine?); measuring at that", flush=True)
            print(f"load: {md.count_devices():,} meters registered, collector at "
                  f"{rate:,.0f} msg/s; measuring …", flush=True)
            load_before = os.getloadavg()[0]
            loaded = asyncio.run(measure_app(runtime, args.keys))
            loaded["loadavg_1m_before"] = round(load_before, 2)
            loaded["bare_textual_first_paint_s"] = asyncio.run(bare_first_paint())
            loaded["ingest_msgs_per_s"] = round(ingest_rate(runtime), 1)
            loaded["offered_msgs_per_s"] = target
            stop_load(load)
            wait_for(lambda: ingest_rate(runtime, 2.0) < 5, 60, "the collector to go quiet")
            print("load stopped; measuring the baseline …", flush=True)
            load_before = os.getloadavg()[0]
            baseline = asyncio.run(measure_app(runtime, args.keys))
            baseline["loadavg_1m_before"] = round(load_before, 2)
            baseline["bare_textual_first_paint_s"] = asyncio.run(bare_first_paint())
        finally:
            if load.poll() is None:
                stop_load(load)
            runtime.stop()

    result = {
        "benchmark": "dashboard fleet view: first paint and keypress-to-redraw",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "registry": args.registry,
        "simulated_devices": args.devices,
        "terminal": f"{SIZE[0]}x{SIZE[1]}",
        "import_app_s": import_time(),
        "under_load": loaded,
        "baseline_no_load": baseline,
        "targets": {"first_paint_s": 1.0, "key_p95_ms": 50.0},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "command": "python bench/dashboard.py",
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "dashboard.json").write_text(json.dumps(result, indent=2) + "\n")
    ok_paint = loaded["first_paint_s"] < 1.0
    ok_keys = loaded["keys"]["all"]["p95_ms"] < 50.0
    print(f"first paint of the fleet table: {loaded['first_paint_s'] * 1000:.0f} ms "
          f"(+ {result['import_app_s'] * 1000:.0f} ms to import the app cold; a bare Textual "
          f"app: {loaded['bare_textual_first_paint_s'] * 1000:.0f} ms) "
          f"[target < 1000 ms: {'ok' if ok_paint else 'MISSED'}]")
    print(f"keypress to redraw under {loaded['ingest_msgs_per_s']:,.0f} msg/s "
          f"(offered {loaded['offered_msgs_per_s']:,.0f}): "
          f"p50 {loaded['keys']['all']['p50_ms']} ms, p95 {loaded['keys']['all']['p95_ms']} ms "
          f"[target p95 < 50 ms: {'ok' if ok_keys else 'MISSED'}]")
    for key, figures in loaded["keys"].items():
        if key != "all":
            print(f"  {key:<9} n={figures['n']:<4} p50 {figures['p50_ms']:>6} ms  "
                  f"p95 {figures['p95_ms']:>6} ms")
    print(f"load average before: {loaded['loadavg_1m_before']} under load, "
          f"{baseline['loadavg_1m_before']} for the baseline ({os.cpu_count()} CPUs)")
    print(f"baseline, no ingest: first paint {baseline['first_paint_s'] * 1000:.0f} ms "
          f"(bare Textual {baseline['bare_textual_first_paint_s'] * 1000:.0f} ms), "
          f"keys p50 {baseline['keys']['all']['p50_ms']} ms, "
          f"p95 {baseline['keys']['all']['p95_ms']} ms")
    print(f"wrote {args.output / 'dashboard.json'}")
    return 0 if ok_paint and ok_keys else 1


if __name__ == "__main__":
    raise SystemExit(main())
