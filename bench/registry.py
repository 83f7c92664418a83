"""Registry sink: how fast it drains a recorded spool into PostgreSQL and into SQLite, this
code against a baseline commit's, on the very same spool in the same run.

The soak bench (bench/soak.py) measures the registry's catch-up end to end: seconds from the
simulator's stop until the registry's sequence tracking counts every message. On a machine
shared with the broker, InfluxDB and the load, that figure mostly says how busy the machine
was. This bench isolates the sink:

1. It records a spool once: `--devices` meters (simulated physics, mixed DC and AC), each
   sending one reading a second for `--seconds` s of device time and a hello every 30 s, a
   few going offline and coming back, decided by the collector's own `Decider` (the spool
   holds exactly what the pipeline writes).
2. For each code (the baseline, checked out of git with `git archive`, and this tree), each
   store (a fresh SQLite file, a fresh database on the local PostgreSQL) and each mode, a
   child process opens a copy of the spool and drives the registry sink the way `SinkRunner`
   does, with the alert engine and anomaly detector the collector gives it:
   - `catchup`: a backlog, as after the load stopped: batches read from the spool files
     (parsing included), as large as the sink takes them;
   - `steady`: under load, one write per 2 s of the fleet's traffic, records parsed already
     (the in-memory tail the pipeline leaves): what decides whether it keeps up at all.
   It reports CPU (`time.process_time`: this process only, the client side; PostgreSQL's own
   CPU is not in it) and wall time, and a digest of the registry it left (devices, sequence
   states, open alerts), which must be the same for both codes.

Prints a table and writes bench/results/registry.json; `catchup_5000_s` is the CPU time
(and wall) this code takes to drain the records of one second of a 5,000-meter fleet, the
figure that bounds the soak's catch-up.

    .venv/bin/python bench/registry.py [--devices 5000] [--seconds 30] [--baseline REV]
    .venv/bin/python bench/registry.py --devices 500 --seconds 20   # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "registry.json"
HELLO_EVERY_S = 30
STEADY_WRITE_S = 2.0  # RegistrySink.MIN_WRITE_INTERVAL_S: one write per 2 s under load
TURN = 5_000  # records per group commit, as the pipeline's MAX_TURN


# --- recording (this tree's code) -------------------------------------------------------------

def record_spool(directory: Path, devices: int, seconds: int, seed: int) -> dict[str, int]:
    """Write the fleet's traffic into a spool at `directory`; counts by message type."""
    from iotmeter_tui.backend import protocol
    from iotmeter_tui.backend.collector.metrics import CollectorMetrics
    from iotmeter_tui.backend.collector.pipeline import Decider, DeviceDirectory
    from iotmeter_tui.backend.collector.seqtrack import SeqTracker
    from iotmeter_tui.backend.collector.spool import Spool
    from iotmeter_tui.backend.simulator.physics import FeederMeter, choose_system

    rng = random.Random(seed)
    decider = Decider(SeqTracker(5_000), DeviceDirectory(), CollectorMetrics(),
                      auto_register=True)
    spool = Spool(directory, max_bytes=1 << 40)
    start_ms = int(time.time() * 1000) - seconds * 1000
    fleet = []
    for n in range(devices):
        system = choose_system("dc" if n % 4 else "ac", rng)
        meter = FeederMeter(system, random.Random(f"{seed}:{n}"),
                            energy_import_kwh=rng.uniform(1e4, 1e6),
                            energy_export_kwh=rng.uniform(1e3, 1e5))
        fleet.append((f"{system.kind}-{n:05d}", system.device_type, meter))
    seqs = [0] * devices
    # A few meters drop off and come back during the recording (Last Will, then a hello).
    flapping = set(rng.sample(range(devices), max(1, devices // 100)))
    counts: dict[str, int] = {}
    turn: list[Any] = []

    def publish(n: int, msg_type: str, data: dict[str, Any], at: int, *,
                sequenced: bool = True) -> None:
        device_id = fleet[n][0]
        payload = protocol.encode_device_message(
            device_id, msg_type, data, ts=at - 40, boot=1,
            seq=seqs[n] if sequenced else None)
        if sequenced:
            seqs[n] += 1
        record = decider.decide(protocol.device_topic(device_id, msg_type), payload, at)
        if record is not None:
            turn.append(record)
            counts[msg_type] = counts.get(msg_type, 0) + 1
        if len(turn) >= TURN:
            spool.append(turn)
            spool.commit()
            turn.clear()

    for second in range(seconds):
        for n, (_device_id, device_type, meter) in enumerate(fleet):
            at = start_ms + second * 1000 + (n * 997) % 1000
            if second % HELLO_EVERY_S == n % HELLO_EVERY_S:
                publish(n, protocol.HELLO, {"device_type": device_type, "fw_version": "2.4.1",
                                            "heartbeat_s": 30.0, "uptime_s": second}, at)
            if n in flapping and second == seconds // 3:
                publish(n, protocol.STATUS, {"state": "offline"}, at, sequenced=False)
            elif n in flapping and second == seconds // 3 + 2:
                publish(n, protocol.STATUS, {"state": "online"}, at, sequenced=False)
            publish(n, protocol.TELEMETRY, meter.sample(1.0), at + 1)
    if turn:
        spool.append(turn)
        spool.commit()
    spool.close()
    return counts


# --- draining (whichever code is first on sys.path) -------------------------------------------

def registry_sink_class() -> Any:
    try:  # this tree: the registry sink has a package of its own
        from iotmeter_tui.backend.collector.registry import RegistrySink
    except ImportError:  # the code before the split
        from iotmeter_tui.backend.collector.sinks import RegistrySink  # type: ignore[attr-defined,no-redef,unused-ignore]
    return RegistrySink


def drain(spool_dir: Path, store_url: str, mode: str, steady_batch: int,
          seconds: int) -> dict[str, Any]:
    """Drive the registry sink over the whole spool; figures and a digest of the result."""
    import iotmeter_tui
    from iotmeter_tui.backend import protocol
    from iotmeter_tui.backend.collector.alerts import AlertEngine
    from iotmeter_tui.backend.collector.anomaly import AnomalyDetector
    from iotmeter_tui.backend.collector.metrics import CollectorMetrics
    from iotmeter_tui.backend.collector.seqtrack import SeqTracker
    from iotmeter_tui.backend.collector.spool import Spool
    try:  # this tree: the factory picks the adapter, the port knows none
        from iotmeter_tui.backend.stores.factory import open_metadata
    except ImportError:  # the code before the factory moved out of the ports
        from iotmeter_tui.backend.stores.metadata import (  # type: ignore[attr-defined,no-redef,unused-ignore]
            open_metadata,
        )

    store = open_metadata(store_url)
    store.migrate()
    spool = Spool(spool_dir, max_bytes=1 << 40)
    engine = AlertEngine(store, anomaly=AnomalyDetector(state_path=spool_dir / "baselines.json"))
    sink = registry_sink_class()(store, "bench/registry", SeqTracker(5_000), engine,
                                 CollectorMetrics(), collector="bench")
    sink.draining = True  # no write interval: the bench decides the batches
    cursor = spool.start()
    batches: list[tuple[list[Any], Any]] = []
    if mode == "steady":
        # The tail the pipeline leaves in memory: records carrying their parsed data.
        while True:
            records, end = spool.read(cursor, max_records=steady_batch, max_bytes=1 << 30)
            if not records:
                break
            for r in records:
                if r.kind == 0 and r.data is None:
                    r.data = protocol.loads(r.payload)["data"]
            batches.append((records, end))
            cursor = end
    if mode == "live":
        figures = drive_live(sink, spool, spool_dir.parent / "live-spool", seconds)
        digest = registry_digest(store, figures.pop("cursor_name"), arrival_times=False)
        store.close()
        spool.close()
        return {**figures, "code": str(Path(iotmeter_tui.__file__).parent.parent),
                "digest": digest}
    rss0 = _rss_mib()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    taken = writes = 0
    if mode == "steady":
        for records, end in batches:
            sink.write(records, end)
            taken += len(records)
            writes += 1
    else:
        while True:
            records, end = sink.next_batch(spool, cursor)
            if not records:
                break
            sink.write(records, end)
            cursor = end
            taken += len(records)
            writes += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    peak = _peak_rss_mib()
    digest = registry_digest(store, "bench/registry")
    store.close()
    spool.close()
    return {"records": taken, "writes": writes, "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3), "cpu_us_per_record": round(cpu / taken * 1e6, 2),
            "records_per_cpu_s": round(taken / cpu), "records_per_wall_s": round(taken / wall),
            "code": str(Path(iotmeter_tui.__file__).parent.parent), "digest": digest,
            # What the batches held: the process's peak RSS over what it held before them
            # (a steady run's batches are all read before: its figure says nothing).
            "rss_start_mib": round(rss0, 1), "rss_peak_mib": round(peak, 1),
            "rss_step_mib": round(peak - rss0, 1)}


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def drive_live(sink: Any, recorded: Any, directory: Path, seconds: int) -> dict[str, Any]:
    """Replay the recording into a fresh spool in real time (a pipeline thread committing a
    turn every 50 ms, records carrying their parsed data) while this thread runs the sink as
    SinkRunner does (next batch, write, else wait 0.1 s) and its housekeeping. Returns the
    catch-up: seconds from the last commit until the sink has written everything."""
    import threading

    from iotmeter_tui.backend import protocol
    from iotmeter_tui.backend.collector.spool import Spool

    records: list[Any] = []
    position = recorded.start()
    while True:
        batch, position = recorded.read(position, max_records=100_000, max_bytes=1 << 30)
        if not batch:
            break
        records += batch
    for r in records:
        if r.kind == 0:
            r.data = protocol.loads(r.payload)["data"]
    live = Spool(directory, max_bytes=1 << 40)
    wake = threading.Event()
    done = threading.Event()
    last_commit: list[Any] = [None, 0.0]
    per_turn = max(1, round(len(records) / (seconds * 20)))

    def pipeline() -> None:
        started = time.monotonic()
        for turn, at in enumerate(range(0, len(records), per_turn)):
            delay = started + turn * 0.05 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            turn_records = records[at : at + per_turn]
            now_ms = int(time.time() * 1000)  # arrival, as the pipeline stamps it
            for r in turn_records:
                r.received_ms = now_ms
            live.append(turn_records)
            last_commit[0] = live.commit()
            last_commit[1] = time.monotonic()
            wake.set()
        done.set()

    sink.draining = False
    feeder = threading.Thread(target=pipeline, daemon=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    feeder.start()
    cursor = live.start()
    writes = steady_writes = 0
    while True:
        finished = done.is_set()
        batch, end = sink.next_batch(live, cursor)
        if batch:
            sink.write(batch, end)
            writes += 1
            # Once every meter's first hello (news: a device never stored) is in.
            if time.perf_counter() - wall0 >= HELLO_EVERY_S:
                steady_writes += 1
            cursor = end
        elif finished and cursor == last_commit[0]:
            break
        sink.housekeeping()
        if not batch:
            wake.wait(0.1)
            wake.clear()
    caught_up = time.monotonic()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    live.close()
    return {"records": len(records), "writes": writes,
            "writes_after_first_hellos": steady_writes, "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3), "cpu_us_per_record": round(cpu / len(records) * 1e6, 2),
            "records_per_cpu_s": round(len(records) / cpu),
            "records_per_wall_s": round(len(records) / wall),
            "catchup_s": round(caught_up - last_commit[1], 2), "cursor_name": sink.cursor_name}


def registry_digest(store: Any, cursor_name: str, *,
                    arrival_times: bool = True) -> dict[str, Any]:
    """What the registry holds that must not depend on the code that wrote it (arrival
    times too, unless the run stamped them with the wall clock)."""
    devices = sorted((d.device_id, d.device_type, d.connection_status, d.fw_version,
                      d.last_seen if arrival_times else None) for d in store.list_devices())
    states = sorted((s.device_id, s.boot, s.highest_seq, s.received, s.duplicates,
                     tuple(map(tuple, s.gaps))) for s in store.load_seq_states())
    alerts = sorted((a.device_id, a.rule) for a in store.open_alerts())
    # The offset only: a segment's id is the time it was opened.
    cursor = (store.get_cursor(cursor_name) or ":").split(":")[1]

    def sha(value: Any) -> str:
        return hashlib.sha256(repr(value).encode()).hexdigest()[:16]

    return {"devices": len(devices), "devices_sha": sha(devices), "seq_states": len(states),
            "seq_sha": sha(states), "open_alerts": len(alerts), "alerts_sha": sha(alerts),
            "cursor": cursor, "received": sum(s[3] for s in states)}


# --- the run --------------------------------------------------------------------------------

def checkout(rev: str, into: Path) -> Path:
    """The package as of `rev`, extracted (not a worktree: nothing in git changes)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "iotmeter_tui"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def child(code: Path | None, spool: Path, work: Path, store: str, mode: str,
          steady_batch: int, seconds: int) -> dict[str, Any]:
    from testsupport import PostgresDatabase

    copy = work / "spool"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(work / "live-spool", ignore_errors=True)
    shutil.copytree(spool, copy)
    env = dict(os.environ)
    # The code to drain with, first on the child's path: this tree's, or the baseline's.
    env["PYTHONPATH"] = str(code if code is not None else ROOT)
    database = PostgresDatabase(prefix="iotmeter_bench_") if store == "postgresql" else None
    try:
        if database is not None:
            database.create()
            url = database.url
        else:
            (work / "meta.db").unlink(missing_ok=True)
            url = f"sqlite:///{work / 'meta.db'}"
        out = subprocess.run(
            [sys.executable, __file__, "--drain", str(copy), "--store-url", url, "--mode", mode,
             "--steady-batch", str(steady_batch), "--seconds", str(seconds)],
            env=env, check=True, capture_output=True, text=True, cwd=work).stdout
    finally:
        if database is not None:
            database.close()
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=30,
                        help="device time recorded: one reading per meter per second")
    parser.add_argument("--baseline", default="43f818e",
                        help="git revision to compare with (the code before the split)")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--modes", default="catchup,steady")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per cell, alternating the codes; the median is reported")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    # The child's side.
    parser.add_argument("--drain", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--store-url", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--steady-batch", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain is not None:
        print(json.dumps(drain(args.drain, args.store_url, args.mode, args.steady_batch,
                               args.seconds)))
        return 0

    steady_batch = int(args.devices * STEADY_WRITE_S)
    with tempfile.TemporaryDirectory(prefix="iotmeter-bench-registry-") as tmp:
        work = Path(tmp)
        print(f"recording {args.devices:,} meters x {args.seconds} s ...", flush=True)
        counts = record_spool(work / "recorded", args.devices, args.seconds, args.seed)
        total = sum(counts.values())
        print(f"  {total:,} records: {counts}", flush=True)
        codes: dict[str, Path | None] = {
            "baseline": checkout(args.baseline, work / "baseline"), "current": None}
        cells: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for store in args.stores.split(","):
            for mode in args.modes.split(","):
                key = f"{store}/{mode}"
                cells[key] = {"baseline": [], "current": []}
                for _ in range(args.repeat):
                    for name, code in codes.items():
                        r = child(code, work / "recorded", work, store, mode, steady_batch,
                                  args.seconds)
                        cells[key][name].append(r)
                        print(f"  {key:22} {name:8} {r['records']:>9,} records "
                              f"{r['writes']:>4} writes  CPU {r['cpu_s']:7.2f} s "
                              f"({r['cpu_us_per_record']:6.1f} us/record)  wall "
                              f"{r['wall_s']:7.2f} s"
                              + (f"  RSS step {r['rss_step_mib']:.0f} MiB"
                                 if "rss_step_mib" in r else "")
                              + (f"  catch-up {r['catchup_s']:.2f} s, writes after "
                                 f"{HELLO_EVERY_S} s {r['writes_after_first_hellos']}"
                                 if "catchup_s" in r else ""), flush=True)
    table = summarise(cells, args.devices)
    print()
    print(f"{'store/mode':24} {'baseline us/rec':>16} {'current us/rec':>15} {'CPU ratio':>10} "
          f"{'wall ratio':>11} {'same result':>12}")
    for key, row in table.items():
        print(f"{key:24} {row['baseline']['cpu_us_per_record']:16.1f} "
              f"{row['current']['cpu_us_per_record']:15.1f} {row['cpu_ratio']:10.2f} "
              f"{row['wall_ratio']:11.2f} {row['same_registry']!s:>12}")
    result = {
        "bench": "registry", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "devices": args.devices, "seconds": args.seconds, "records": total,
        "records_by_type": counts, "baseline": args.baseline,
        "steady_batch_records": steady_batch, "cells": cells, "summary": table,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    same = all(row["same_registry"] for row in table.values())
    return 0 if same else 1


def summarise(cells: dict[str, dict[str, list[dict[str, Any]]]],
              devices: int) -> dict[str, dict[str, Any]]:
    """Per cell: the median run of each code, their ratios (current / baseline), whether they
    left the same registry, and the CPU and wall time to drain one second of `devices` meters
    (a second of the recorded fleet's traffic)."""
    table = {}
    for key, runs in cells.items():
        row: dict[str, Any] = {}
        for name in ("baseline", "current"):
            ordered = sorted(runs[name], key=lambda r: r["cpu_s"])
            median = ordered[len(ordered) // 2]
            per_second = median["records"] / max(1, median["records"] / devices)
            row[name] = {
                "cpu_us_per_record": median["cpu_us_per_record"],
                "wall_us_per_record": round(median["wall_s"] / median["records"] * 1e6, 2),
                "records_per_wall_s": median["records_per_wall_s"],
                "cpu_s_per_fleet_second": round(median["cpu_us_per_record"] * per_second / 1e6,
                                                3),
                "writes": median["writes"],
            }
            if "catchup_s" in median:
                row[name]["writes_after_first_hellos"] = median["writes_after_first_hellos"]
                row[name]["catchup_s"] = sorted(r["catchup_s"] for r in runs[name])[
                    len(runs[name]) // 2]
        row["cpu_ratio"] = round(row["current"]["cpu_us_per_record"]
                                 / row["baseline"]["cpu_us_per_record"], 3)
        row["wall_ratio"] = round(row["current"]["wall_us_per_record"]
                                  / row["baseline"]["wall_us_per_record"], 3)
        digests = [r["digest"] for name in ("baseline", "current") for r in runs[name]]
        row["same_registry"] = all(d == digests[0] for d in digests)
        table[key] = row
    return table


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    # testsupport: the suite's servers, not in the package. Last, after PYTHONPATH: put
    # before it, this tree's package shadowed the baseline's, and every child ran this code.
    sys.path.append(str(ROOT))
    raise SystemExit(main())
