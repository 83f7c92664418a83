"""Archive read throughput: lines/s of `iter_raw` (what `iotmeter archive get` and the API's
archive endpoint stream) over a directory archive, against a bare baseline, and its memory.

The archive holds OBJECTS gzip objects of 100 telemetry messages each (one device), written by
ArchiveWriter. Measured, in the same run so the figures read as ratios: the baseline (list the
files, read each, gzip.decompress, split lines: no iotmeter code), `iter_raw` with no range,
and `iter_raw` with a range covering the middle half (each line parsed for its `ts`). Peak
traced memory of a full read shows that one object at a time is held, whatever the archive's
size.

    .venv/bin/python bench/archive_read.py [--objects 2000] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from iotmeter_tui.backend.archive_reader import iter_raw
from iotmeter_tui.backend.protocol import encode_device_message
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.archive_writer import ArchiveRecord, ArchiveWriter

PER_OBJECT = 100
T0_MS = 1_795_740_000_000
STEP_MS = 5_000  # one object every 5 s of receive time
RESULTS = Path(__file__).parent / "results" / "archive_read.json"


def fill(archive: DirectoryArchive, objects: int) -> int:
    rng = random.Random(7)
    writer = ArchiveWriter(archive)
    seq = 0
    try:
        for n in range(objects):
            at = T0_MS + n * STEP_MS
            records = []
            for i in range(PER_OBJECT):
                data = {"voltage_v": round(rng.uniform(500, 900), 3),
                        "current_a": round(rng.uniform(-1500, 4000), 3),
                        "power_kw": round(rng.uniform(-1200, 3000), 3)}
                raw = encode_device_message("dc-0001", "telemetry", data, ts=at + i, boot=1,
                                            seq=seq)
                records.append(ArchiveRecord("dc-0001", "telemetry", at + i, raw))
                seq += 1
            writer.write_batch(records, [], f"b{n:06d}")
    finally:
        writer.close()
    return seq


def baseline(root: Path) -> Iterable[bytes]:
    for path in sorted((root / "dc-0001" / "telemetry").rglob("*.ndjson.gz")):
        yield from (line for line in gzip.decompress(path.read_bytes()).split(b"\n") if line)


def timed(read: Callable[[], Iterable[bytes]], rounds: int) -> tuple[float, int]:
    runs, count = [], 0
    for _ in range(rounds):
        start = time.perf_counter()
        count = sum(1 for _ in read())
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="iotmeter-archive-read-") as tmp:
        root = Path(tmp)
        archive = DirectoryArchive(root)
        total = fill(archive, args.objects)
        span = args.objects * STEP_MS
        start, end = T0_MS + span // 4, T0_MS + 3 * span // 4
        base_s, base_n = timed(lambda: baseline(root), args.rounds)
        all_s, all_n = timed(lambda: iter_raw(archive, "dc-0001", category="telemetry"),
                             args.rounds)
        ranged_s, ranged_n = timed(lambda: iter_raw(archive, "dc-0001", category="telemetry",
                                                    start_ms=start, end_ms=end, slack_ms=0),
                                   args.rounds)
        tracemalloc.start()
        sum(1 for _ in iter_raw(archive, "dc-0001", category="telemetry"))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        object_bytes = max(p.stat().st_size for p in root.rglob("*.gz"))
    assert base_n == all_n == total, (base_n, all_n, total)
    result: dict[str, Any] = {
        "objects": args.objects, "lines": total, "lines_in_range": ranged_n,
        "baseline_lines_per_s": round(base_n / base_s),
        "iter_raw_lines_per_s": round(all_n / all_s),
        "iter_raw_vs_baseline": round(base_s / all_s, 2),
        "iter_raw_ranged_lines_per_s": round(ranged_n / ranged_s),
        "peak_traced_kib_full_read": round(peak / 1024, 1),
        "largest_object_kib_gzip": round(object_bytes / 1024, 1),
        "python": platform.python_version(), "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
