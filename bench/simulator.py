"""Benchmark: how many simulated meters one simulator process holds, and at what cost.

Starts a private mosquitto (unlimited connections, raised file limit), runs the simulator's
fleet in this process with N devices at R readings/s each, and measures over a steady window:
connections held, messages per second delivered to a subscriber, and CPU seconds the simulator
process used per second of wall time. Prints the figures and writes bench/results/simulator.json.

    .venv/bin/python bench/simulator.py                 # 5,000 devices at 1/s for 30 s
    .venv/bin/python bench/simulator.py --devices 200 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import broker_clients, cpu_seconds, raise_file_limit  # noqa: E402

from iotmeter_tui.backend.broker import (  # noqa: E402
    LOOPBACK,
    find_mosquitto,
    free_port,
    tcp_accepts,
    wait_until_ready,
)
from iotmeter_tui.backend.mqtt.address import BrokerAddress  # noqa: E402
from iotmeter_tui.backend.simulator.fleet import Fleet  # noqa: E402

RESULTS = REPO / "bench" / "results" / "simulator.json"


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = work / "mosquitto.conf"
    log = work / "mosquitto.log"
    config.write_text("\n".join([
        f"listener {port} {LOOPBACK}",
        "allow_anonymous true",
        "max_connections -1",
        "persistence false",
        "sys_interval 1",
        "max_queued_messages 100000",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "",
    ]))
    with log.open("ab") as out:
        # The child inherits the raised RLIMIT_NOFILE: one descriptor per connection.
        broker = subprocess.Popen([find_mosquitto(), "-c", str(config)],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    wait_until_ready(broker, lambda: tcp_accepts(LOOPBACK, port), name="mosquitto",
                     log_path=log)
    return broker, port


class TopicCounter:
    """mosquitto_sub printing one line per telemetry/hello message; we count the lines."""

    def __init__(self, port: int) -> None:
        binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
        self.process = subprocess.Popen(
            [binary, "-h", LOOPBACK, "-p", str(port), "-q", "0", "-F", "%t",
             "-t", "iot/+/telemetry", "-t", "iot/+/hello"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self.count = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        stream = self.process.stdout
        while chunk := os.read(stream.fileno(), 1 << 16):
            self.count += chunk.count(b"\n")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()


async def measure(args: argparse.Namespace, port: int, broker_pid: int, home: Path) -> dict:
    fleet = Fleet(BrokerAddress(LOOPBACK, port), home, seed=args.seed, prefix="bench-")
    await fleet.start()
    counter = TopicCounter(port)
    await asyncio.sleep(0.5)  # let the subscriber connect before the fleet does
    try:
        t0 = time.monotonic()
        await fleet.add(args.devices, args.kind, args.rate)
        while fleet.stats().online < args.devices:
            if time.monotonic() - t0 > args.connect_timeout:
                raise SystemExit(f"only {fleet.stats().online} of {args.devices} connected "
                                 f"after {args.connect_timeout} s")
            await asyncio.sleep(1.0)  # stats() walks every device: not too often
        connect_s = time.monotonic() - t0
        print(f"{args.devices} devices connected in {connect_s:.1f} s "
              f"({fleet.stats().connect_failures} failed attempts retried); warming up "
              f"{args.warmup:g} s", flush=True)
        await asyncio.sleep(args.warmup)

        start = fleet.stats()
        wall0, cpu0, count0 = time.monotonic(), time.process_time(), counter.count
        broker_cpu0 = cpu_seconds(broker_pid)
        min_online = args.devices
        end = wall0 + args.duration
        while time.monotonic() < end:
            await asyncio.sleep(min(1.0, end - time.monotonic()))
            min_online = min(min_online, fleet.stats().online)
        wall1, cpu1, count1 = time.monotonic(), time.process_time(), counter.count
        broker_cpu1 = cpu_seconds(broker_pid)
        finish = fleet.stats()
        clients = await asyncio.get_running_loop().run_in_executor(None, broker_clients, port)
        wall = wall1 - wall0
        return {
            "devices": args.devices,
            "rate_per_device_hz": args.rate,
            "kind": args.kind,
            "window_s": round(wall, 2),
            "connect_all_s": round(connect_s, 2),
            "connect_attempts_failed": start.connect_failures,
            "connections_held_min": min_online,
            # The broker's own count (published each second, before the $SYS reader joined), less
            # our counting subscriber.
            "broker_clients_connected": None if clients is None else clients - 1,
            "messages_per_s_delivered": round((count1 - count0) / wall, 1),
            "messages_per_s_acked": round((finish.acked - start.acked) / wall, 1),
            "messages_per_s_target": round(args.devices * args.rate
                                           + args.devices / fleet.heartbeat_s, 1),
            "simulator_cpu_s_per_s": round((cpu1 - cpu0) / wall, 3),
            "broker_cpu_s_per_s": round((broker_cpu1 - broker_cpu0) / wall, 3),
            "late_ticks": finish.late_ticks - start.late_ticks,
            "connection_losses": finish.connection_losses - start.connection_losses,
            "buffer_dropped": finish.buffer_dropped,
        }
    finally:
        counter.close()
        await fleet.close(graceful=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--kind", default="mixed", choices=("dc", "ac", "mixed"))
    parser.add_argument("--duration", type=float, default=30.0, help="measured window, s")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    limit = raise_file_limit()
    if limit < args.devices + 512:
        print(f"the open-file hard limit {limit} is too low for {args.devices} devices",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="iotmeter-bench-sim-") as tmp:
        work = Path(tmp)
        broker, port = start_broker(work)
        try:
            result = asyncio.run(measure(args, port, broker.pid, work / "home"))
        finally:
            broker.terminate()
            broker.wait(30)
    result.update({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    })
    print(f"connections held: {result['connections_held_min']} of {args.devices} "
          f"(broker counts {result['broker_clients_connected']})")
    print(f"messages/s: {result['messages_per_s_delivered']} delivered, "
          f"{result['messages_per_s_acked']} acked, target {result['messages_per_s_target']}")
    print(f"simulator CPU: {result['simulator_cpu_s_per_s']} s/s "
          f"(broker {result['broker_cpu_s_per_s']} s/s); late ticks {result['late_ticks']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
