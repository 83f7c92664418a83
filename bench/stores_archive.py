"""Archive write throughput: objects/s through ArchiveWriter for each adapter, with a raw baseline.

Each object holds 100 telemetry messages of about 250 bytes, gzip on; a batch makes 10 objects.
The writer runs twice: one put at a time, and with its default worker threads. The baselines
write the very same compressed bytes, one at a time, with no iotmeter code in between (a bare
minio put_object; a bare file write, with and without fsync), in the same run, so the figures
read as ratios. The S3 server is moto (Python): it, not the archive, sets the S3 ceiling here.

    .venv/bin/python bench/stores_archive.py [--seconds 1.5] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testsupport/ beside the package

from minio import Minio

from iotmeter_tui.backend.protocol import encode_device_message
from iotmeter_tui.backend.stores.archive import ArchiveStore
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.archive_s3 import S3Archive
from iotmeter_tui.backend.stores.archive_writer import ArchiveRecord, ArchiveWriter
from testsupport import S3Server

MESSAGES_PER_OBJECT = 100
DEVICES_PER_BATCH = 10  # so one write_batch makes 10 objects
DISTINCT_BATCHES = 8  # cycled, so gzip does not see one batch over and over
WORKERS = 8  # ArchiveWriter's default max_workers
_BATCH_NUMBERS = itertools.count()
T0_MS = 1_795_740_000_000
RESULTS = Path(__file__).parent / "results" / "stores_archive.json"


def telemetry_payload(rng: random.Random, device_id: str, seq: int, ts: int) -> bytes:
    data = {
        "voltage_v": round(rng.uniform(500, 900), 3),
        "current_a": round(rng.uniform(-1500, 4000), 3),
        "power_kw": round(rng.uniform(-1200, 3000), 3),
        "energy_import_kwh": round(182_733.41 + seq * rng.random(), 3),
        "energy_export_kwh": round(20_311.02 + seq * rng.random(), 3),
        "temperature_c": round(rng.uniform(20, 60), 2),
    }
    return encode_device_message(device_id, "telemetry", data, ts=ts, boot=7, seq=seq)


def make_batches() -> list[list[ArchiveRecord]]:
    rng = random.Random(42)
    batches = []
    for b in range(DISTINCT_BATCHES):
        records = []
        for d in range(DEVICES_PER_BATCH):
            device_id = f"dc-{d:04d}"
            for i in range(MESSAGES_PER_OBJECT):
                seq = b * MESSAGES_PER_OBJECT + i
                received = T0_MS + seq * 1000
                payload = telemetry_payload(rng, device_id, seq, received - 20)
                records.append(ArchiveRecord(device_id, "telemetry", received, payload))
        batches.append(records)
    return batches


class Capture:
    """An in-memory sink with the two methods the writer calls: put and sync."""

    def __init__(self) -> None:
        self.objects: list[tuple[str, bytes]] = []

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        self.objects.append((key, data))

    def sync(self) -> None:
        """Nothing to make durable: the objects are in memory."""


def rate(seconds: float, step: Callable[[], int]) -> float:
    """Objects per second of calling step() (which returns how many it wrote) for `seconds`."""
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        done += step()
    return done / (time.perf_counter() - started)


def medians(rounds: int, variants: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each variant's median over `rounds`, the variants interleaved within every round, so a
    neighbour's load on a shared machine hits all of them alike and the ratios hold."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, measure in variants.items():
            samples[name].append(measure())
    return {name: statistics.median(values) for name, values in samples.items()}


def writer_rate(
    store: ArchiveStore, batches: list[list[ArchiveRecord]], seconds: float, workers: int
) -> float:
    writer = ArchiveWriter(store, gzip=True, max_workers=workers)

    def step() -> int:
        n = next(_BATCH_NUMBERS)  # a new batch id each time: new objects, not overwrites
        return len(writer.write_batch(batches[n % len(batches)], [], f"bench-{n:08d}"))

    try:
        return rate(seconds, step)
    finally:
        writer.close()


def encode_figures(
    batches: list[list[ArchiveRecord]], seconds: float
) -> tuple[float, list[tuple[str, bytes]]]:
    """The writer alone (grouping, gzip) into memory, and the objects it made, which the raw
    baselines write again."""
    capture = Capture()
    encode = writer_rate(cast(ArchiveStore, capture), batches, seconds, workers=1)
    return encode, capture.objects[: len(batches) * DEVICES_PER_BATCH]


def with_ratios(figures: dict[str, float], baseline: str) -> dict[str, float]:
    ratios = {
        f"ratio_{name.removesuffix('_objects_per_s')}_to_{baseline.removesuffix('_per_s')}": (
            value / figures[baseline]
        )
        for name, value in figures.items()
        if name.startswith("archive_")
    }
    return {**figures, **ratios}


def cycle_bodies(bodies: list[tuple[str, bytes]]) -> Callable[[], tuple[str, bytes]]:
    numbers = itertools.count()

    def next_body() -> tuple[str, bytes]:
        n = next(numbers)
        key, data = bodies[n % len(bodies)]
        return f"raw/{n:08d}/{key}", data

    return next_body


def bench_s3(
    batches: list[list[ArchiveRecord]], bodies: list[tuple[str, bytes]], args: argparse.Namespace
) -> dict[str, float]:
    with S3Server() as server:
        client = Minio(
            server.endpoint.removeprefix("http://"),
            access_key=server.access_key,
            secret_key=server.secret_key,
            secure=False,
            region=server.region,
        )
        client.make_bucket("bench-raw")
        next_body = cycle_bodies(bodies)

        def raw_put() -> int:
            key, data = next_body()
            client.put_object(
                "bench-raw", key, io.BytesIO(data), len(data), content_type="application/gzip"
            )
            return 1

        store = S3Archive(
            "bench-archive", server.endpoint, server.access_key, server.secret_key, server.region
        )
        try:
            figures = medians(
                args.rounds,
                {
                    "raw_put_object_per_s": lambda: rate(args.seconds, raw_put),
                    **archive_variants(store, batches, args.seconds),
                },
            )
        finally:
            store.close()
    return with_ratios(figures, "raw_put_object_per_s")


def archive_variants(
    store: ArchiveStore, batches: list[list[ArchiveRecord]], seconds: float
) -> dict[str, Callable[[], float]]:
    return {
        "archive_sequential_objects_per_s": lambda: writer_rate(store, batches, seconds, 1),
        f"archive_{WORKERS}_workers_objects_per_s": lambda: writer_rate(
            store, batches, seconds, WORKERS
        ),
    }


def raw_file_writes(root: Path, bodies: list[tuple[str, bytes]], fsync: bool) -> Callable[[], int]:
    next_body = cycle_bodies(bodies)

    def step() -> int:
        key, data = next_body()
        with open(root / key.replace("/", "_"), "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        return 1

    return step


def bench_dir(
    batches: list[list[ArchiveRecord]], bodies: list[tuple[str, bytes]], args: argparse.Namespace
) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="iotmeter-bench-archive-", dir=args.dir))
    try:
        (root / "raw").mkdir()
        plain = raw_file_writes(root / "raw", bodies, fsync=False)
        synced = raw_file_writes(root / "raw", bodies, fsync=True)
        figures = medians(
            args.rounds,
            {
                "raw_write_per_s": lambda: rate(args.seconds, plain),
                "raw_write_fsync_per_s": lambda: rate(args.seconds, synced),
                **archive_variants(DirectoryArchive(root / "archive"), batches, args.seconds),
            },
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    # Durable writes are the fair baseline: DirectoryArchive fsyncs every object.
    return with_ratios(figures, "raw_write_fsync_per_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="medians of this many rounds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--dir", default=None, help="parent of the directory archive (a tmp dir)")
    args = parser.parse_args()

    batches = make_batches()
    encode, bodies = encode_figures(batches, args.seconds)
    payloads = [r.raw for r in batches[0]]
    result: dict[str, Any] = {
        "bench": "stores_archive",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "workload": {
            "messages_per_object": MESSAGES_PER_OBJECT,
            "objects_per_batch": DEVICES_PER_BATCH,
            "mean_message_bytes": round(sum(map(len, payloads)) / len(payloads), 1),
            "mean_object_bytes_gzip": round(sum(len(b) for _, b in bodies) / len(bodies), 1),
            "seconds_per_measurement": args.seconds,
            "rounds": args.rounds,
        },
        "encode_only_objects_per_s": encode,
        "s3_moto": bench_s3(batches, bodies, args),
        "directory": bench_dir(batches, bodies, args),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
