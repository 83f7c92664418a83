"""Collector CPU per message, stage by stage, over a fixed load.

The same classes the collector runs (Decider, Spool, TimeSeriesSink into a private influxd,
ArchiveSink into a directory archive, RegistrySink into SQLite), driven in order on this one
thread, with no broker: each stage's cost is the CPU time (`time.process_time`) this process
spends in it, divided by the messages. CPU time, unlike a wall-clock rate, hardly moves when
other processes load the machine, so before/after figures from a busy host still compare.

The load is fixed: a hello from every meter, then telemetry from each in turn (half 1500 V DC
feeder meters, half 25 kV AC substation meters, as bench/protocol.py makes them), seeded, so
every run decodes the same bytes. Turns of 5,000 messages, as the pipeline's group commit.

    .venv/bin/python bench/pipeline.py [--devices 1000] [--messages 30] [--rounds 3]
        [--profile out.pstats] [--label before]

Prints a table of µs of CPU per message per stage (the best of `--rounds` runs: noise only
adds) and writes bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from protocol import START_TS, ac_reading, dc_reading  # noqa: E402  (bench/protocol.py)

from iotmeter_tui.backend import protocol  # noqa: E402
from iotmeter_tui.backend.collector.alerts import AlertEngine  # noqa: E402
from iotmeter_tui.backend.collector.anomaly import AnomalyDetector, parse_sensitivity  # noqa: E402
from iotmeter_tui.backend.collector.metrics import CollectorMetrics  # noqa: E402
from iotmeter_tui.backend.collector.pipeline import MAX_TURN, Decider, DeviceDirectory  # noqa: E402
from iotmeter_tui.backend.collector.seqtrack import SeqTracker  # noqa: E402
from iotmeter_tui.backend.collector.sinks import (  # noqa: E402
    ArchiveSink,
    CursorFile,
    TimeSeriesSink,
)
from iotmeter_tui.backend.collector.spool import Position, Spool, SpoolRecord  # noqa: E402
from iotmeter_tui.backend.stores import open_stores  # noqa: E402
from iotmeter_tui.backend.stores.archive_writer import ArchiveWriter  # noqa: E402
from testsupport import InfluxServer  # noqa: E402

try:  # the registry sink has a package of its own since the split; older code for --code runs
    from iotmeter_tui.backend.collector.registry import RegistrySink
except ImportError:
    from iotmeter_tui.backend.collector.sinks import (  # type: ignore[attr-defined,no-redef,unused-ignore]
        RegistrySink,
    )
from testsupport.harness import settings_for  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "pipeline.json"
TARGET_US = 25.0
STAGES = ("decode", "spool", "timeseries", "archive", "registry")


def fleet_load(devices: int, messages: int) -> list[tuple[str, bytes]]:
    """(topic, payload) of the fixed load: hellos, then `messages` telemetry per meter,
    round-robin."""
    load: list[tuple[str, bytes]] = []
    ids = [f"{'dc' if i % 2 == 0 else 'ac'}-{i:05d}" for i in range(devices)]
    for device_id in ids:
        kind = "power_meter_dc" if device_id.startswith("dc") else "power_meter_ac"
        load.append((protocol.device_topic(device_id, protocol.HELLO),
                     protocol.encode_device_message(
                         device_id, protocol.HELLO,
                         {"device_type": kind, "fw_version": "2.4.1", "heartbeat_s": 30,
                          "uptime_s": 12}, ts=START_TS, boot=7, seq=0)))
    rngs = {d: random.Random(d) for d in ids}
    for i in range(messages):
        for device_id in ids:
            reading = dc_reading if device_id.startswith("dc") else ac_reading
            load.append((protocol.device_topic(device_id, protocol.TELEMETRY),
                         protocol.encode_device_message(
                             device_id, protocol.TELEMETRY, reading(rngs[device_id], i),
                             ts=START_TS + (i + 1) * 1000, boot=7, seq=i + 1)))
    return load


class Rig:
    """One collector's pipeline and sinks over fresh stores in `home`."""

    def __init__(self, home: Path, influx: InfluxServer) -> None:
        self.home = home
        settings = settings_for(home, {"IOTMETER_TSDB_URL": influx.url.rsplit("/", 1)[0]
                                       + f"/bench_{home.name.replace('-', '_')}"})
        self.stores = open_stores(settings)
        self.metrics = CollectorMetrics()
        spool_dir = home / "spool"
        # Sealed by hand after the load, so the archive sink sees whole segments.
        self.spool = Spool(spool_dir, max_bytes=8 << 30, segment_max_bytes=1 << 40,
                           segment_max_age_s=1e9)
        self.decider = Decider(SeqTracker(5000), DeviceDirectory({}), self.metrics,
                               auto_register=True)
        metadata = self.stores.metadata
        anomaly = AnomalyDetector(parse_sensitivity(settings.anomaly_sensitivity),
                                  spool_dir / "anomaly.json")
        alerts = AlertEngine(metadata, planned_reboot_ms=int(settings.planned_reboot_s * 1000),
                             group_min=settings.offline_group_min, group_window_ms=10_000,
                             locate=lambda ids: {}, anomaly=anomaly)
        self.timeseries = TimeSeriesSink(self.stores.timeseries,
                                         CursorFile(spool_dir / "ts.cursor"), self.metrics)
        self.archive = ArchiveSink(ArchiveWriter(self.stores.archive, gzip=True),
                                   CursorFile(spool_dir / "archive.cursor"), source="bench")
        self.registry = RegistrySink(metadata, "bench/registry", SeqTracker(5000), alerts,
                                     self.metrics, collector="bench")
        self.registry.draining = True  # take every batch at once, not every 2 s

    def close(self) -> None:
        self.archive.close()
        self.spool.close()
        self.stores.close()


def timed(cpu: dict[str, float], stage: str, work: Callable[[], Any]) -> Any:
    start = time.process_time()
    result = work()
    cpu[stage] += time.process_time() - start
    return result


def run_phase(rig: Rig, load: list[tuple[str, bytes]], cpu: dict[str, float]) -> None:
    """The load through every stage, turn by turn, then its segment sealed and archived (a
    segment is one archive window: one object per device)."""
    decide = rig.decider.decide
    for start in range(0, len(load), MAX_TURN):
        turn = load[start : start + MAX_TURN]

        def decide_turn(turn: list[tuple[str, bytes]] = turn) -> list[SpoolRecord]:
            records = []
            for topic, payload in turn:
                record = decide(topic, payload, START_TS)
                if record is not None:
                    records.append(record)
            rig.decider.publish_counts()
            return records

        records = timed(cpu, "decode", decide_turn)

        def spool_turn(records: list[SpoolRecord] = records) -> Position:
            rig.spool.append(records)
            return rig.spool.commit()

        end = timed(cpu, "spool", spool_turn)
        # The sinks take the pipeline's own records, as they do when they keep up.
        timed(cpu, "timeseries", partial(rig.timeseries.write, records, end))
        timed(cpu, "registry", partial(rig.registry.write, records, end))
    segment = rig.spool.active_segment
    rig.spool.roll()

    def archive_segment() -> None:
        cursor = Position(segment, 0)
        while True:
            batch, nxt = rig.archive.next_batch(rig.spool, cursor)
            if not batch:
                return
            rig.archive.write(batch, nxt)
            cursor = nxt

    timed(cpu, "archive", archive_segment)


def run_once(warm: list[tuple[str, bytes]], load: list[tuple[str, bytes]],
             influx: InfluxServer, workdir: Path,
             profile: cProfile.Profile | None) -> dict[str, float]:
    """CPU µs per message of `load`, after `warm` went through (registry rows, archive
    directories, caches: what a collector running for a while already has)."""
    home = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    rig = Rig(home, influx)
    try:
        run_phase(rig, warm, dict.fromkeys(STAGES, 0.0))
        cpu = dict.fromkeys(STAGES, 0.0)
        if profile is not None:
            profile.enable()
        run_phase(rig, load, cpu)
        if profile is not None:
            profile.disable()
    finally:
        rig.close()
        shutil.rmtree(home, ignore_errors=True)
    return {stage: cpu[stage] / len(load) * 1e6 for stage in STAGES}


def interleaved_us(variants: dict[str, Callable[[], object]], per_block: int,
                   blocks: int = 15) -> dict[str, float]:
    """Median CPU µs (this thread's) per item of each variant, blocks interleaved so drifting
    machine load hits every variant alike."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():
        run()  # warm caches
    for _ in range(blocks):
        for name, run in variants.items():
            start = time.thread_time_ns()
            run()
            samples[name].append((time.thread_time_ns() - start) / per_block / 1000)
    return {name: round(statistics.median(values), 3) for name, values in samples.items()}


def hot_paths(load: list[tuple[str, bytes]]) -> dict[str, dict[str, float]]:
    """The two per-message paths this bench's stages are dominated by, each against the way
    it was done before, in the same process: decoding (typed vs decode_reference) and line
    protocol (fields copied from their JSON vs formatted one by one)."""
    from iotmeter_tui.backend.stores.timeseries import Point
    from iotmeter_tui.backend.stores.timeseries_influx import InfluxTimeSeries

    telemetry = [(t, p) for t, p in load if t.endswith("/telemetry")][:10_000]
    results: dict[str, dict[str, float]] = {}
    if hasattr(protocol, "decode_reference"):
        decode, reference = protocol.decode, protocol.decode_reference
        results["decode"] = interleaved_us({
            "now": lambda: [decode(t, p) for t, p in telemetry],
            "before": lambda: [reference(t, p) for t, p in telemetry],
        }, len(telemetry))
    points = []
    for topic, payload in telemetry:
        message = protocol.decode(topic, payload)
        assert isinstance(message, protocol.Message)
        points.append(Point(message.device_id, "power_meter_dc", message.ts, message.boot or 0,
                            message.seq or 0, message.data))
    fast, slow = InfluxTimeSeries("influxdb://127.0.0.1:1/x"), InfluxTimeSeries(
        "influxdb://127.0.0.1:1/x")
    if hasattr(slow, "_template"):
        try:
            for point in points:  # the per-field templates, cached as the old code did
                names = tuple(point.fields)
                slow._templates[names] = slow._template(names, plain=False)
        except TypeError:  # code before the JSON path: every template is per field
            pass
    results["line_protocol"] = interleaved_us({
        "now": lambda: [fast._line(x) for x in points],
        "before": lambda: [slow._line(x) for x in points],
    }, len(points))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=30,
                        help="telemetry per meter in the measured segment (and the warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="runs; the best of each stage")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of one extra run")
    parser.add_argument("--label", default="", help="a name for this run in the JSON")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON file to write")
    args = parser.parse_args()

    full = fleet_load(args.devices, 2 * args.messages)
    split = args.devices * (1 + args.messages)  # the hellos and the first half: warm-up
    warm, load = full[:split], full[split:]
    workdir = Path(tempfile.mkdtemp(prefix="iotmeter-bench-pipeline-"))
    influx = InfluxServer()
    influx.start()
    decoders = {"typed": protocol.decode, "reference": protocol.decode_reference} if hasattr(
        protocol, "decode_reference") else {"typed": protocol.decode}  # older code: one
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in decoders}
    try:
        # Rounds alternate the decoders, so drifting machine load hits both alike. The
        # reference decoder is the one this collector had before the typed one.
        for _ in range(args.rounds):
            for name, decoder in decoders.items():
                protocol.decode = decoder
                try:
                    runs[name].append(run_once(warm, load, influx, workdir, None))
                finally:
                    protocol.decode = decoders["typed"]
        if args.profile:
            profile = cProfile.Profile()
            run_once(warm, load, influx, workdir, profile)
            profile.dump_stats(args.profile)
            stats = pstats.Stats(profile).sort_stats("tottime")
            print(f"cProfile of one run's measured phase (main thread, tottime, top 25) "
                  f"-> {args.profile}")
            stats.print_stats(25)
    finally:
        influx.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    hot = hot_paths(load)
    best = {name: {stage: min(run[stage] for run in runs[name]) for stage in STAGES}
            for name in decoders}
    total = {name: sum(best[name].values()) for name in decoders}
    report = {
        "benchmark": "collector CPU per message by stage (process_time)",
        "label": args.label,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "devices": args.devices,
        "messages": len(load),
        "warm_up_messages": len(warm),
        "rounds": args.rounds,
        "best_us": {name: {k: round(v, 2) for k, v in b.items()} for name, b in best.items()},
        "runs_us": {name: [{k: round(v, 2) for k, v in run.items()} for run in r]
                    for name, r in runs.items()},
        "total_us": {name: round(t, 2) for name, t in total.items()},
        "target_us": TARGET_US,
        "passed": total["typed"] <= TARGET_US,
        "hot_paths_median_us": hot,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"collector CPU per message, {len(load)} messages ({args.devices} meters) after "
          f"{len(warm)} of warm-up, best of {args.rounds}, Python {report['python']}")
    print(f"{'stage':<12}{'µs/msg':>9}{'share':>8}   {'reference decoder':>18}")
    for stage in STAGES:
        typed, ref = best["typed"][stage], best.get("reference", {}).get(stage, 0.0)
        print(f"{stage:<12}{typed:>9.2f}{typed / total['typed']:>8.0%}   {ref:>18.2f}")
    print(f"{'total':<12}{total['typed']:>9.2f}{'':>8}   {total.get('reference', 0.0):>18.2f}")
    print(f"target: total <= {TARGET_US:g} µs: {'PASS' if report['passed'] else 'FAIL'}")
    for path, figures in hot.items():
        print(f"{path}: {figures['now']:.2f} µs per message, before {figures['before']:.2f} "
              f"({figures['now'] / figures['before']:.2f}x; thread CPU, interleaved blocks)")
    print("(CPU of this process, every thread; without the MQTT intake's socket reads and "
          "acks: bench/ingest.py has the whole collector)")
    print(f"wrote {args.output}")
    return 0 if report["passed"] else 1  # a missed target fails, as in the other benches


if __name__ == "__main__":
    sys.exit(main())
