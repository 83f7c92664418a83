"""The archive sink on one sealed spool segment of a fleet: streamed (index, then one object at
a time) against the segment held whole (every record read, then one write_batch), which is
what the sink did before it streamed.

For each of a small and a large segment (--devices meters, --small and --large messages per
meter): the process CPU time (all threads: the put workers too) and tracemalloc's peak of
each way, into a directory archive on local disk. CPU is the median of --rounds interleaved
rounds (the machine is shared, so the two ways are timed side by side and compared as a
ratio); the peak comes from one separate traced round of each (tracing slows the code).
The objects of both ways are compared key by key and byte by byte.

    .venv/bin/python bench/archive_stream.py [--devices 5000] [--small 6] [--large 60]

Prints a table and writes bench/results/archive_stream.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.collector.sinks import ArchiveSink, CursorFile
from iotmeter_tui.backend.collector.spool import ACCEPTED, Position, Spool, SpoolRecord
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.archive_writer import ArchiveRecord, ArchiveWriter
from testsupport.fleet import telemetry

RESULTS = Path(__file__).parent / "results" / "archive_stream.json"
T0_MS = 1_795_740_000_000


def sealed_segment(directory: Path, devices: int, per_device: int) -> tuple[Spool, int]:
    """A spool whose first segment is sealed: `per_device` readings of each meter, the meters
    interleaved second by second as a fleet's traffic is."""
    spool = Spool(directory, max_bytes=1 << 34, segment_max_bytes=1 << 34)
    ids = [f"dc-{n:05d}" for n in range(devices)]
    for seq in range(per_device):
        batch = [SpoolRecord(ACCEPTED, T0_MS + seq * 1000 + n % 1000, d, protocol.TELEMETRY,
                             "power_meter_dc", 1, seq, T0_MS + seq * 1000, "", "", "",
                             telemetry(d, 1, seq)[1]) for n, d in enumerate(ids)]
        spool.append(batch)
        spool.commit()
    spool.roll()
    return spool, spool.segments()[0]


def streamed(spool: Spool, segment: int, out: Path) -> None:
    writer = ArchiveWriter(DirectoryArchive(out))
    sink = ArchiveSink(writer, CursorFile(out.with_suffix(".cursor")), source="bench")
    objects, end = sink.next_batch(spool, Position(segment, 0))
    sink.write(objects, end)
    writer.close()


def held_whole(spool: Spool, segment: int, out: Path) -> None:
    writer = ArchiveWriter(DirectoryArchive(out))
    records: list[ArchiveRecord] = []
    position = Position(segment, 0)
    while True:
        batch, position = spool.read(position)
        if not batch:
            break
        records += [ArchiveRecord(r.device_id, r.msg_type, r.received_ms, r.payload)
                    for r in batch if r.kind == ACCEPTED]
    writer.write_batch(records, [], batch_id=f"{segment}-bench")
    writer.close()


WAYS = {"streamed": streamed, "held whole": held_whole}


def measure(spool: Spool, segment: int, work: Path, rounds: int) -> dict[str, Any]:
    cpu: dict[str, list[float]] = {name: [] for name in WAYS}
    for n in range(rounds):
        for name, way in WAYS.items():
            out = work / f"{name.replace(' ', '-')}-{n}"
            started = time.process_time()
            way(spool, segment, out)
            cpu[name].append(time.process_time() - started)
            if n < rounds - 1:
                shutil.rmtree(out)
                out.with_suffix(".cursor").unlink(missing_ok=True)
    last = {name: work / f"{name.replace(' ', '-')}-{rounds - 1}" for name in WAYS}
    a, b = (DirectoryArchive(p) for p in last.values())
    keys = list(a.list())
    same = keys == list(b.list()) and all(a.get(k) == b.get(k) for k in keys)
    peaks = {}
    for name, way in WAYS.items():
        out = work / f"traced-{name.replace(' ', '-')}"
        tracemalloc.start()
        way(spool, segment, out)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {
        "segment_mib": round(spool.committed_size(segment) / 2**20, 1),
        "objects": len(keys),
        "objects_identical": same,
        "cpu_s_median": {k: round(statistics.median(v), 3) for k, v in cpu.items()},
        "cpu_s_rounds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
        "cpu_ratio_streamed_to_whole": round(statistics.median(cpu["streamed"])
                                             / statistics.median(cpu["held whole"]), 3),
        "peak_mib": {k: round(v / 2**20, 1) for k, v in peaks.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--small", type=int, default=6, help="messages per meter, small")
    parser.add_argument("--large", type=int, default=60, help="messages per meter, large")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    results: dict[str, Any] = {"command": " ".join([".venv/bin/python", *sys.argv]),
                               "devices": args.devices, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="iotmeter-archive-stream-") as tmp:
        for label, per_device in (("small", args.small), ("large", args.large)):
            work = Path(tmp) / label
            spool, segment = sealed_segment(work / "spool", args.devices, per_device)
            results["sizes"][label] = dict(measure(spool, segment, work, args.rounds),
                                           messages_per_meter=per_device)
            spool.close()
            shutil.rmtree(work)
    print(f"archive sink, one sealed segment of {args.devices} meters, directory archive; "
          f"CPU = process time, median of {args.rounds} interleaved rounds")
    print(f"{'segment':<22} {'objects':>8} {'CPU streamed':>13} {'CPU whole':>10} "
          f"{'ratio':>6} {'peak streamed':>14} {'peak whole':>11} identical")
    for label, r in results["sizes"].items():
        print(f"{label + ' ' + str(r['segment_mib']) + ' MiB':<22} {r['objects']:>8} "
              f"{r['cpu_s_median']['streamed']:>11.2f} s {r['cpu_s_median']['held whole']:>8.2f} s "
              f"{r['cpu_ratio_streamed_to_whole']:>6.2f} "
              f"{r['peak_mib']['streamed']:>10.1f} MiB {r['peak_mib']['held whole']:>7.1f} MiB "
              f"{r['objects_identical']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0 if all(r["objects_identical"] for r in results["sizes"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
