"""Cost of `protocol.decode` per telemetry message, the collector's per-message hot path.

Times blocks of decodes over realistic DC and AC payloads, each message
distinct (seq, ts and readings move), and reports the per-message median and p95 across blocks.
Each block is timed in the CPU time of this thread (`time.thread_time_ns`), so time the
machine gives to other processes is not counted. In the same run, interleaved block by block:
`decode_reference` (the parse-then-check decoder, which `decode` used alone before its typed
telemetry path) and bare `json.loads` of the same payloads, so the figures also read as
ratios that hold on any machine. Before timing, `decode` and `decode_reference` must give the
same verdict on every payload and on damaged copies of them. Writes
bench/results/protocol.json.

    .venv/bin/python bench/protocol.py [--blocks 40] [--block-size 10000]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from iotmeter_tui.backend import protocol  # noqa: E402

TARGET_MEDIAN_US = 15.0
RESULTS = ROOT / "bench" / "results" / "protocol.json"
START_TS = 1795740001250


def dc_reading(rng: random.Random, i: int) -> dict[str, float]:
    """A 1500 V DC feeder meter: current swings negative while trains regenerate."""
    current = rng.uniform(-900.0, 2400.0)
    voltage = rng.uniform(1380.0, 1820.0)
    data = {
        "voltage_v": round(voltage, 1),
        "current_a": round(current, 1),
        "power_kw": round(voltage * current / 1000, 1),
        "energy_import_kwh": round(182733.41 + i * 0.41, 2),
        "energy_export_kwh": round(20311.02 + i * 0.07, 2),
    }
    if i % 10 == 0:  # optional field, as real meters send it now and then
        data["temperature_c"] = round(rng.uniform(20.0, 55.0), 1)
    return data


def ac_reading(rng: random.Random, i: int) -> dict[str, float]:
    """A 25 kV 50 Hz substation meter with every optional field."""
    return {
        "voltage_v": round(rng.uniform(24000.0, 27500.0), 1),
        "current_a": round(rng.uniform(0.0, 600.0), 1),
        "active_power_kw": round(rng.uniform(-3000.0, 14000.0), 1),
        "reactive_power_kvar": round(rng.uniform(-500.0, 2500.0), 1),
        "power_factor": round(rng.uniform(0.85, 0.999), 3),
        "frequency_hz": round(rng.uniform(49.95, 50.05), 3),
        "energy_import_kwh": round(918273.5 + i * 2.1, 2),
        "energy_export_kwh": round(10422.75 + i * 0.3, 2),
        "thd_pct": round(rng.uniform(1.0, 4.5), 2),
        "temperature_c": round(rng.uniform(20.0, 55.0), 1),
    }


def payloads(device_id: str, reading: Callable[[random.Random, int], dict[str, float]],
             count: int) -> list[bytes]:
    rng = random.Random(device_id)
    return [
        protocol.encode_device_message(
            device_id, protocol.TELEMETRY, reading(rng, i),
            ts=START_TS + i * 1000, boot=7, seq=1042 + i,
        )
        for i in range(count)
    ]


def block_us(run: Callable[[], None], block_size: int) -> float:
    """Run one block; µs per message in it."""
    start = time.thread_time_ns()
    run()
    return (time.thread_time_ns() - start) / block_size / 1000


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median": round(statistics.median(ordered), 3),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
    }


def bench_kind(device_id: str, reading: Callable[[random.Random, int], dict[str, float]],
               block_size: int, blocks: int) -> dict[str, Any]:
    topic = protocol.device_topic(device_id, protocol.TELEMETRY)
    batch = payloads(device_id, reading, block_size)
    for raw in batch:  # what is timed must be the accepting path
        result = protocol.decode(topic, raw)
        assert isinstance(result, protocol.Message), result
    check_equivalence(topic, batch)

    decode = protocol.decode
    reference = protocol.decode_reference
    loads = json.loads

    def decode_block() -> None:
        for raw in batch:
            decode(topic, raw)

    def reference_block() -> None:
        for raw in batch:
            reference(topic, raw)

    def loads_block() -> None:
        for raw in batch:
            loads(raw)

    decode_block()  # warm up caches and the allocator
    reference_block()
    loads_block()
    # Interleave so drifting machine load hits all alike.
    decode_us: list[float] = []
    reference_us: list[float] = []
    loads_us: list[float] = []
    for _ in range(blocks):
        decode_us.append(block_us(decode_block, block_size))
        reference_us.append(block_us(reference_block, block_size))
        loads_us.append(block_us(loads_block, block_size))
    decoded, before, baseline = summary(decode_us), summary(reference_us), summary(loads_us)
    return {
        "payload_bytes": round(statistics.mean(len(raw) for raw in batch), 1),
        "fields": round(statistics.mean(len(json.loads(raw)["data"]) for raw in batch), 1),
        "decode_us": decoded,
        "reference_us": before,
        "json_loads_us": baseline,
        "ratio_median": round(decoded["median"] / baseline["median"], 2),
        "vs_reference_median": round(decoded["median"] / before["median"], 2),
    }


def same_verdict(a: object, b: object) -> bool:
    if isinstance(a, protocol.Message) and isinstance(b, protocol.Message):
        return a == b and [type(v) for v in a.data.values()] == [
            type(v) for v in b.data.values()]
    if isinstance(a, protocol.Rejection) and isinstance(b, protocol.Rejection):
        return (a.reason, a.detail, a.raw) == (b.reason, b.detail, b.raw)
    return False


def check_equivalence(topic: str, batch: list[bytes]) -> None:
    """decode and decode_reference agree on the payloads and on damaged copies of them (the
    test suite checks the same over generated input: tests/test_protocol.py)."""
    rng = random.Random(topic)
    for raw in batch[:2000]:
        at = rng.randrange(len(raw))
        for variant in (raw, raw[:at] + raw[at + 1:], raw[:at] + b"\"" + raw[at:],
                        raw.replace(b"}", b',"x":1}', 1), raw.replace(b'"v":2', b'"v":2.0')):
            new, old = protocol.decode(topic, variant), protocol.decode_reference(topic, variant)
            assert same_verdict(new, old), (variant, new, old)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=40, help="blocks per payload kind")
    parser.add_argument("--block-size", type=int, default=10_000, help="decodes per block")
    args = parser.parse_args()

    results = {
        "dc": bench_kind("dc-0001", dc_reading, args.block_size, args.blocks),
        "ac": bench_kind("ac-0001", ac_reading, args.block_size, args.blocks),
    }
    passed = all(r["decode_us"]["median"] < TARGET_MEDIAN_US for r in results.values())
    report = {
        "benchmark": "protocol.decode per telemetry message",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "blocks": args.blocks,
        "block_size": args.block_size,
        "target_median_us": TARGET_MEDIAN_US,
        "passed": passed,
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    print(f"protocol.decode, {args.blocks} blocks x {args.block_size} messages, "
          f"Python {report['python']}")
    print(f"{'kind':<5}{'bytes':>7}{'fields':>7}   {'decode µs/msg':>22}   "
          f"{'reference µs/msg':>22}   {'json.loads µs/msg':>22}   new/ref  new/json")
    print(f"{'':<5}{'':>7}{'':>7}" + f"   {'median':>10}{'p95':>12}" * 3)
    for kind, r in results.items():
        d, o, j = r["decode_us"], r["reference_us"], r["json_loads_us"]
        print(f"{kind:<5}{r['payload_bytes']:>7}{r['fields']:>7}   {d['median']:>10.2f}"
              f"{d['p95']:>12.2f}   {o['median']:>10.2f}{o['p95']:>12.2f}   "
              f"{j['median']:>10.2f}{j['p95']:>12.2f}   {r['vs_reference_median']:>7.2f}"
              f"{r['ratio_median']:>9.2f}")
    print("(CPU time of this thread per message; reference = decode_reference, the decoder "
          "before the typed telemetry path)")
    verdict = "PASS" if passed else "FAIL"
    print(f"target: median < {TARGET_MEDIAN_US:g} µs per message: {verdict}")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
