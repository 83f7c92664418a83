"""Score the anomaly detector, and the fixed-threshold rules alone, against labelled faults.

The simulator's physics (`FeederMeter`) and its labelled data faults (`DataFaults`) generate
each device's telemetry in simulated time, far faster than wall time; the collector's
`AnomalyDetector` and the alert rules' pure checks judge the same stream. A judge "raises" when
its verdict turns bad and "clears" after the alert engine's 30 s hold, as in the collector.

    .venv/bin/python bench/anomaly.py [--faulted 30] [--hours 6] [--normal 6] [--days 1]

Prints a table and writes bench/results/anomaly.json: precision, recall (all faults, and the
faults the thresholds miss), detection delay p50/p95 (from when a fault is observable: its
start, or for a drift when it is 5 % off), false alerts per device per simulated day of
normal traffic, and the detector's CPU per message.

With `--live-seconds N` (default 90; 0 skips it) it then shows the wiring: a private
mosquitto, `iotmeter --collector-only` on embedded stores, and `iotmeter simulate` with
stuck-sensor and counter faults at 20 readings a second; it reports which labelled devices got
an `anomaly` alert in `device_alerts`, and the stored data-quality scores.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testsupport/ beside the package

from iotmeter_tui.backend.broker import free_port
from iotmeter_tui.backend.collector import alerts
from iotmeter_tui.backend.collector.anomaly import AnomalyDetector
from iotmeter_tui.backend.simulator.faults import DataFaults, FaultLabel, FaultSpec
from iotmeter_tui.backend.simulator.physics import FEEDERS, FeederMeter
from iotmeter_tui.backend.stores.factory import open_metadata
from testsupport import MosquittoServer
from testsupport.harness import env_for, settings_for

HOLD_MS = 30_000  # the alert engine's hold before a clear
GRACE_MS = 60_000  # a raise this long after a fault's end still counts for it
QUIET_S = 1800  # no fault in the first half hour: the baselines warm up
RESULTS = Path(__file__).parent / "results" / "anomaly.json"

Reading = tuple[int, dict[str, Any]]
Judge = Callable[[str, str, dict[str, Any], int], bool]


def generate(device_id: str, key: str, seed: int, seconds: int, spec: FaultSpec
             ) -> tuple[list[Reading], list[FaultLabel]]:
    """One device's readings (ts ms, data) over `seconds` of simulated time at 1 Hz."""
    system = FEEDERS[key]
    rng = random.Random(f"{seed}:{device_id}")
    meter = FeederMeter(system, rng, energy_import_kwh=rng.uniform(1e4, 1e6),
                        energy_export_kwh=rng.uniform(1e3, 1e5))
    faults = DataFaults(random.Random(f"{seed}:{device_id}:episodes"))
    out: list[Reading] = []
    ts, end, interval = 1_795_000_000_000, 1_795_000_000_000 + seconds * 1000, 1.0
    start = ts
    while ts < end:
        if ts - start >= QUIET_S * 1000:
            faults.spec = spec
        data = faults.alter(meter.sample(interval), ts)
        out.append((ts, data))
        interval = 1.0 * faults.interval_scale
        ts += round(interval * 1000)
    return out, faults.labels


def _no_judge(device_id: str, device_type: str, data: dict[str, Any], ts: int) -> bool:
    return False


def thresholds_judge() -> Judge:
    """The fixed-threshold rules of alerts.py (voltage range, over-current, frequency band)."""
    def judge(device_id: str, device_type: str, data: dict[str, Any], ts: int) -> bool:
        voltage, current = data.get("voltage_v"), data.get("current_a")
        frequency = data.get("frequency_hz")
        system = alerts.infer_supply_system(device_type, voltage, frequency)
        if system is None:
            return False
        if voltage is not None and alerts.check_voltage(system, voltage):
            return True
        limit = alerts.DEFAULT_MAX_CURRENT_A[system.key]
        if current is not None and alerts.check_current(current, limit):
            return True
        return bool(system.frequency_hz and frequency is not None and alerts.check_frequency(
            frequency, system.frequency_hz, alerts.DEFAULT_FREQUENCY_BAND_PCT))
    return judge


def raises(readings: list[Reading], verdicts: list[bool]) -> list[int]:
    """When alerts would be raised, with the engine's hold before a clear."""
    out: list[int] = []
    open_, ok_since = False, 0
    for (ts, _), bad in zip(readings, verdicts, strict=True):
        if bad:
            if not open_:
                out.append(ts)
            open_, ok_since = True, 0
        elif open_:
            ok_since = ok_since or ts
            if ts - ok_since >= HOLD_MS:
                open_ = False
    return out


def score(events: list[tuple[list[int], list[FaultLabel]]], normal_raises: int,
          normal_device_days: float) -> dict[str, Any]:
    tp = fp = 0
    delays: list[float] = []
    by_kind: dict[str, list[float]] = {}
    found: dict[str, list[int]] = {}
    for raised, labels in events:
        windows = [(lb.start_ms, lb.end_ms + GRACE_MS) for lb in labels]
        for at in raised:
            if any(lo <= at <= hi for lo, hi in windows):
                tp += 1
            else:
                fp += 1
        for lb in labels:
            hit = [at for at in raised if lb.start_ms <= at <= lb.end_ms + GRACE_MS]
            found.setdefault(lb.kind, [0, 0])[1] += 1
            if hit:
                found[lb.kind][0] += 1
                delays.append(max(0, hit[0] - lb.observable_ms) / 1000)
                by_kind.setdefault(lb.kind, []).append(delays[-1])
    total = sum(n for _, n in found.values())
    detected = sum(d for d, _ in found.values())
    delays.sort()
    return {
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": detected / total if total else None,
        "recall_by_kind": {k: d / n for k, (d, n) in sorted(found.items())},
        "delay_p50_s": statistics.median(delays) if delays else None,
        "delay_p95_s": _p95(delays),
        "delay_p95_s_by_kind": {k: _p95(sorted(v)) for k, v in sorted(by_kind.items())},
        "false_alerts_per_device_day": normal_raises / normal_device_days,
        "raises_on_faulted_devices": tp + fp,
    }


def _p95(ordered: list[float]) -> float | None:
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    rate = 1 / args.episode_every_s / 5  # five kinds share the rate
    spec = FaultSpec.parse(",".join(
        f"{k}={rate:.8f}"
        for k in ("drift", "stuck", "counter_regression", "counter_jump", "interval_change")))
    keys = sorted(FEEDERS)
    judges: dict[str, Callable[[], Judge]] = {
        "anomaly": lambda: AnomalyDetector().observe,  # type: ignore[dict-item]
        "thresholds": thresholds_judge,
    }
    faulted: dict[str, list[tuple[list[int], list[FaultLabel]]]] = {j: [] for j in judges}
    normal: dict[str, int] = dict.fromkeys(judges, 0)
    cpu_ns = messages = 0
    idle_ns = 0  # the same loop with a judge that does nothing: what the detector adds is
    # the difference (the pipeline without it)
    plan = [(f"f{i:03d}", keys[i % len(keys)], int(args.hours * 3600), spec)
            for i in range(args.faulted)]
    plan += [(f"n{i:03d}", keys[i % len(keys)], int(args.days * 86400), FaultSpec())
             for i in range(args.normal)]
    for device_id, key, seconds, device_spec in plan:
        readings, labels = generate(device_id, key, args.seed, seconds, device_spec)
        device_type = FEEDERS[key].device_type
        started = time.process_time_ns()
        _ = [bool(_no_judge(device_id, device_type, data, ts)) for ts, data in readings]
        idle_ns += time.process_time_ns() - started
        for name, make in judges.items():
            judge = make()
            started = time.process_time_ns()
            verdicts = [bool(judge(device_id, device_type, data, ts)) for ts, data in readings]
            if name == "anomaly":
                cpu_ns += time.process_time_ns() - started
                messages += len(readings)
            raised = raises(readings, verdicts)
            if device_spec.any_episode:
                faulted[name].append((raised, labels))
            else:
                normal[name] += len(raised)
    device_days = args.normal * args.days
    results: dict[str, Any] = {
        "config": {"faulted_devices": args.faulted, "hours_each": args.hours,
                   "normal_devices": args.normal, "days_each": args.days, "seed": args.seed,
                   "episode_every_s": args.episode_every_s},
        # CPU (process time) over the recorded stream, less the same loop without a detector.
        "detector_us_per_message": (cpu_ns - idle_ns) / messages / 1000,
        "messages_judged": messages,
    }
    for name in judges:
        results[name] = score(faulted[name], normal[name], device_days)
    missed_by_thresholds = [k for k, r in results["thresholds"]["recall_by_kind"].items()
                            if r < 0.5]
    by_kind = results["anomaly"]["recall_by_kind"]
    results["anomaly"]["recall_on_threshold_misses"] = (
        statistics.mean(by_kind[k] for k in missed_by_thresholds) if missed_by_thresholds
        else None)
    return results


def live_run(seconds: float, seed: int) -> dict[str, Any]:
    """The same detector inside a real collector, fed by the real simulator over MQTT."""
    with MosquittoServer() as broker, tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = settings_for(home, {})
        env = {**os.environ, **env_for(settings, broker.url)}
        with open(home / "collector.log", "wb") as log:
            collector = subprocess.Popen(
                [sys.executable, "-m", "iotmeter_tui", "--collector-only", "--metrics-port",
                 str(free_port())], env=env, stdout=log, stderr=subprocess.STDOUT)
            atexit.register(lambda: collector.poll() is None and collector.kill())
            time.sleep(3)  # connect, migrate, subscribe
            summary = home / "summary.json"
            # Episodes last 300 s, so one that starts before the baselines are warm (600
            # readings = 30 s at 20 Hz) is still on when they are; about a third of the
            # devices get none, to show the false alerts.
            simulate = subprocess.run(
                [sys.executable, "-m", "iotmeter_tui", "simulate", "--devices", "6",
                 "--rate", "20", "--kind", "mixed", "--seed", str(seed), "--duration",
                 str(seconds), "--summary", str(summary), "--faults",
                 "stuck=0.0003,counter_regression=0.0003"],
                env=env, capture_output=True, timeout=seconds + 120)
            if simulate.returncode != 0:
                raise SystemExit(f"simulator failed: {simulate.stderr.decode()[-500:]}")
            time.sleep(5)  # the registry writes telemetry batches every 2 s
            collector.send_signal(15)
            collector.wait(timeout=60)
        store = open_metadata(settings.db_url)
        try:
            found = {a.device_id: a for a in store.list_alerts() if a.rule == "anomaly"}
            quality = store.device_quality()
        finally:
            store.close()
        labels = {d: s["fault_labels"] for d, s in json.loads(summary.read_text()).items()}
    labelled = sorted(d for d, lb in labels.items() if lb)
    return {
        "devices": len(labels),
        "labelled_devices": labelled,
        "labels": labels,
        "alerted_devices": sorted(found),
        "detected": sum(1 for d in labelled if d in found),
        "false_alert_devices": sorted(d for d in found if d not in labelled),
        "alerts": {d: a.message for d, a in sorted(found.items())},
        "quality": {d: q.score for d, q in sorted(quality.items())},
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def print_table(results: Mapping[str, Any]) -> None:
    rows = ("precision", "recall", "delay_p50_s", "delay_p95_s", "false_alerts_per_device_day")
    print(f"{'figure':32} {'anomaly':>10} {'thresholds':>11}")
    for row in rows:
        print(f"{row:32} {_fmt(results['anomaly'][row]):>10} "
              f"{_fmt(results['thresholds'][row]):>11}")
    kinds = sorted(results["anomaly"]["recall_by_kind"])
    for kind in kinds:
        print(f"{'recall ' + kind:32} {_fmt(results['anomaly']['recall_by_kind'][kind]):>10} "
              f"{_fmt(results['thresholds']['recall_by_kind'].get(kind)):>11}")
    for kind in kinds:
        print(f"{'delay p95 s ' + kind:32} "
              f"{_fmt(results['anomaly']['delay_p95_s_by_kind'].get(kind)):>10} "
              f"{_fmt(results['thresholds']['delay_p95_s_by_kind'].get(kind)):>11}")
    print(f"{'detector CPU per message (us)':32} {results['detector_us_per_message']:>10.2f}")
    print(f"messages judged: {results['messages_judged']:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faulted", type=int, default=30, help="devices with faults")
    parser.add_argument("--hours", type=float, default=6.0, help="simulated hours each")
    parser.add_argument("--normal", type=int, default=5, help="fault-free devices")
    parser.add_argument("--days", type=float, default=1.0, help="simulated days each")
    parser.add_argument("--episode-every-s", type=float, default=1800.0,
                        help="mean simulated seconds between fault episodes on a device")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--live-seconds", type=float, default=90.0,
                        help="simulated-and-wall seconds of the live run (0: skip it)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = run(args)
    print_table(results)
    if args.live_seconds > 0:
        live = results["live"] = live_run(args.live_seconds, args.seed)
        print(f"live run: {live['detected']} of {len(live['labelled_devices'])} labelled "
              f"devices got an anomaly alert; false alerts on "
              f"{len(live['false_alert_devices'])} of "
              f"{live['devices'] - len(live['labelled_devices'])} unlabelled devices")
        for device_id, message in live["alerts"].items():
            print(f"  {device_id}: {message}")
        print(f"  data-quality scores: {live['quality']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
