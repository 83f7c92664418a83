"""CPU per message of the collector's MQTT intake (`collector/intake.py`): socket reads, packet
parsing, the session's bookkeeping, the hand-over and the batched PUBACKs, without the pipeline.

A scripted broker in a child process (so its CPU is not counted) accepts the intake's CONNECT
and SUBSCRIBE, streams `--messages` QoS 1 telemetry PUBLISHes as fast as the intake takes them,
and counts the PUBACKs that come back. This process runs the real `MqttIntake` with a bounded
queue (as the collector does) and a consumer that acknowledges each turn of deliveries in one
call, as the pipeline does. CPU is `time.process_time()` of this process from the first message
until the broker has every PUBACK: the intake thread plus the consumer.

The same run times `codec.Decoder.feed` over the same bytes (the floor: parsing only) and
`json.loads` over the same payloads (a yardstick that does not depend on iotmeter's code), so
the figures read as ratios on any machine. `--code DIR` imports iotmeter from another checkout
(e.g. a `git worktree` of an older commit), to compare two versions on the same machine.
Writes bench/results/mqtt_intake.json.

    .venv/bin/python bench/mqtt_intake.py [--messages 200000] [--runs 5] [--code DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import queue
import socket
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "mqtt_intake.json"
CHUNK = 64 << 10  # what the broker writes at a time
INBOX_READS = 64  # the collector's bound (collector/intake.py INBOX_MAX_READS)


def _prepare_path(code: str | None) -> Path:
    source = Path(code).resolve() if code else ROOT
    sys.path.insert(0, str(source))
    return source


def payloads(count: int) -> list[tuple[str, bytes]]:
    """Protocol-v2 DC telemetry from 100 meters, each message distinct."""
    from iotmeter_tui.backend import protocol

    out = []
    for i in range(count):
        device = f"dc-{i % 100:04d}"
        data = {"voltage_v": 1500.0 + i % 300 / 10, "current_a": -800.0 + i % 3000,
                "power_kw": 905.7 + i % 97, "energy_import_kwh": 182733.41 + i / 100,
                "energy_export_kwh": 20311.02 + i / 1000}
        out.append((protocol.device_topic(device, protocol.TELEMETRY),
                    protocol.encode_device_message(device, protocol.TELEMETRY, data,
                                                   ts=1795740001250 + i, boot=7, seq=i)))
    return out


def wire(messages: list[tuple[str, bytes]]) -> bytes:
    from iotmeter_tui.backend.mqtt import codec

    return b"".join(codec.encode_publish(topic, payload, 1, packet_id=i % 0xFFFF + 1)
                    for i, (topic, payload) in enumerate(messages))


# --- the scripted broker (child process) ---------------------------------------------------


def broker(listener: socket.socket, stream: bytes, count: int, report: Connection) -> None:
    from iotmeter_tui.backend.mqtt import codec

    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    decoder = codec.Decoder()
    subscribed = threading.Event()
    acked = 0

    def read() -> None:
        nonlocal acked
        while data := conn.recv(1 << 16):
            for packet in decoder.feed(data):
                if isinstance(packet, codec.Connect):
                    conn.sendall(codec.encode_connack(0))
                elif isinstance(packet, codec.Subscribe):
                    conn.sendall(codec.encode_suback(packet.packet_id, [1] * len(packet.filters)))
                    subscribed.set()
                elif isinstance(packet, codec.PubAck):
                    acked += 1
                    if acked == count:
                        report.send(acked)
                elif isinstance(packet, codec.PingReq):
                    conn.sendall(codec.encode_pingresp())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    subscribed.wait()
    report.send("subscribed")
    report.recv()  # the intake's side has started its clock
    view = memoryview(stream)
    for start in range(0, len(stream), CHUNK):
        conn.sendall(view[start:start + CHUNK])
    reader.join()


# --- the measured side ---------------------------------------------------------------------


def run_intake(stream: bytes, count: int) -> dict[str, float]:
    from iotmeter_tui.backend.collector.intake import Delivery, MqttIntake

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ours, theirs = mp.Pipe()
    child = mp.get_context("fork").Process(target=broker, args=(listener, stream, count, theirs),
                                           daemon=True)
    child.start()
    inbox: queue.Queue[Delivery] = queue.Queue(maxsize=INBOX_READS)
    intake = MqttIntake(f"mqtt://127.0.0.1:{port}", "bench-intake", inbox)
    intake.start()
    try:
        if not ours.poll(15) or ours.recv() != "subscribed":
            raise RuntimeError(f"the intake did not subscribe: {intake.last_error}")
        if not intake.connected.wait(15):
            raise RuntimeError("the intake did not report itself connected")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        ours.send("go")
        taken = 0
        turns = 0
        while taken < count:
            turn = [inbox.get(timeout=30)]
            while True:  # the pipeline's turn: whatever has arrived meanwhile
                try:
                    turn.append(inbox.get_nowait())
                except queue.Empty:
                    break
            taken += sum(d.count for d in turn)
            turns += 1
            intake.ack(turn)
        if not ours.poll(30) or ours.recv() != count:
            raise RuntimeError("the broker did not get every PUBACK")
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        intake.stop()
        child.join(5)
        if child.is_alive():
            child.kill()
        listener.close()
    return {"cpu_us_per_msg": cpu / count * 1e6, "wall_s": wall,
            "messages_per_turn": count / turns}


def decode_floor(stream: bytes, count: int) -> float:
    """µs of CPU per message to parse the same bytes in 256 KiB pieces, nothing else."""
    from iotmeter_tui.backend.mqtt import codec

    decoder = codec.Decoder()
    size = 256 << 10
    view = memoryview(stream)
    start = time.process_time()
    got = 0
    for at in range(0, len(stream), size):
        got += len(decoder.feed(bytes(view[at:at + size])))
    assert got == count
    return (time.process_time() - start) / count * 1e6


def json_yardstick(messages: list[tuple[str, bytes]]) -> float:
    loads = json.loads
    start = time.process_time()
    for _topic, payload in messages:
        loads(payload)
    return (time.process_time() - start) / len(messages) * 1e6


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(samples), 3), "min": round(min(samples), 3),
            "max": round(max(samples), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--code", help="import iotmeter from this checkout instead")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    source = _prepare_path(args.code)
    from iotmeter_tui.backend.collector import intake as intake_module

    messages = payloads(args.messages)
    stream = wire(messages)
    intake_us: list[float] = []
    floor_us: list[float] = []
    json_us: list[float] = []
    per_turn: list[float] = []
    for _ in range(args.runs):  # interleaved, so drifting load hits all three alike
        result = run_intake(stream, args.messages)
        intake_us.append(result["cpu_us_per_msg"])
        per_turn.append(result["messages_per_turn"])
        floor_us.append(decode_floor(stream, args.messages))
        json_us.append(json_yardstick(messages))
    intake, floor, yardstick = summary(intake_us), summary(floor_us), summary(json_us)
    report: dict[str, Any] = {
        "benchmark": "CPU per message of the collector's MQTT intake",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": str(source),
        "intake_module": intake_module.__file__,
        "python": platform.python_version(),
        "messages": args.messages,
        "runs": args.runs,
        "payload_bytes": round(statistics.mean(len(p) for _t, p in messages), 1),
        "intake_cpu_us": intake,
        "decode_floor_cpu_us": floor,
        "json_loads_cpu_us": yardstick,
        "messages_per_turn": round(statistics.median(per_turn), 1),
        "intake_over_json_loads": round(intake["median"] / yardstick["median"], 3),
        "intake_over_decode": round(intake["median"] / floor["median"], 3),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"MQTT intake, {args.messages} QoS 1 messages x {args.runs} runs, code {source}")
    print(f"{'':<28}{'median':>9}{'min':>9}{'max':>9}  µs CPU per message")
    for name, figures in (("intake (read..PUBACK)", intake), ("codec decode only", floor),
                          ("json.loads (yardstick)", yardstick)):
        print(f"{name:<28}{figures['median']:>9.2f}{figures['min']:>9.2f}{figures['max']:>9.2f}")
    print(f"intake / json.loads: {report['intake_over_json_loads']:.2f}x   "
          f"intake / decode: {report['intake_over_decode']:.2f}x   "
          f"messages per turn: {report['messages_per_turn']}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
