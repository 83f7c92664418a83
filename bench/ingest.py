"""End-to-end ingest benchmark: QoS 1 telemetry from separate C publishers (mosquitto_pub -l)
through a private mosquitto into the collector (a separate process, as in production) and on
into a private InfluxDB, the archive and the registry.

Prints and writes bench/results/ingest.json:
- the sustained rate at which points became queryable in InfluxDB;
- publish-to-queryable latency percentiles, from probe messages sent during the run;
- CPU seconds per component (collector, broker, InfluxDB, publishers) per 1,000 messages;
- that nothing was lost: what the broker took from the publishers ($SYS), points in InfluxDB,
  messages counted by the registry's sequence tracking and lines in the archive must all equal
  what was published (exit status 1 otherwise);
- as a same-run baseline, the rate at which the same publishers move the same messages
  through the broker to a subscriber that only counts (mosquitto_sub), so the collector's
  figure reads as a fraction of what the broker path alone carries here;
- as a same-run peer, the rate at which a Node-RED flow (MQTT in at QoS 1 -> point -> join
  1,000 or 0.5 s -> influxdb batch, bench/nodered.py) stores the same load into a database of
  its own on the same influxd, through a broker of its own; npm installs Node-RED into a
  cache directory on first use. A table at the end puts the three rates side by side.

The publishers hold the target rate; with --unpaced they send rate x seconds messages as fast
as they go, in each of the three runs.

    .venv/bin/python bench/ingest.py [--rate 20000] [--seconds 60] [--collectors 2]
        [--publishers 8] [--unpaced] [--no-baseline] [--no-peer] [--workdir DIR]
        [--profile PATH]
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import broker_sys, cpu_seconds
from nodered import NodeRed

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.broker import free_port
from iotmeter_tui.backend.config import Settings
from testsupport import InfluxServer, MosquittoServer, PostgresDatabase
from testsupport.fleet import Publisher
from testsupport.harness import StoreAudit, env_for, settings_for

RESULTS = Path(__file__).parent / "results"
DATA = {"voltage_v": 748.2, "current_a": 1210.5, "power_kw": 905.7,
        "energy_import_kwh": 182733.41, "energy_export_kwh": 20311.02}


def influx_count(http_url: str, db: str, device_prefix: str) -> int:
    q = (f"SELECT count(seq) FROM iot_telemetry WHERE device_id =~ /^{device_prefix}/")
    url = f"{http_url}/query?" + urllib.parse.urlencode({"db": db, "q": q})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    series = body["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def influx_has(http_url: str, db: str, device_id: str, seq: int) -> bool:
    q = (f"SELECT seq FROM iot_telemetry WHERE device_id = '{device_id}' AND seq = {seq}")
    url = f"{http_url}/query?" + urllib.parse.urlencode({"db": db, "q": q})
    with urllib.request.urlopen(url, timeout=10) as response:
        return bool(json.load(response)["results"][0].get("series"))


class Publishers:
    """N mosquitto_pub -l processes (one device each), fed lines at a total target rate, or
    unpaced: every line written at once, for the publishers to send as fast as they go.

    mosquitto_pub -l discards what it still holds when its input ends (seen here: 68,943 of
    200,000 lines written at once reached the broker), and counting its PUBACKs (-d) made the
    publishers the bottleneck. So unpaced, the input stays open until `delivered()` (what the
    run's consumer has counted) reaches the total, or stops growing for STALL_S."""

    STALL_S = 20.0

    def __init__(self, broker: MosquittoServer, count: int, rate: float, seconds: float,
                 prefix: str, *, paced: bool = True) -> None:
        self.devices = [f"{prefix}{i:04d}" for i in range(count)]
        self.per_device = int(rate * seconds / count)
        self.rate = rate
        self.paced = paced
        self.cpu_used = 0.0
        self.procs = [
            subprocess.Popen(
                ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
                 "-l", "-t", protocol.device_topic(d, protocol.TELEMETRY),
                 "-i", f"bench-pub-{d}"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            for d in self.devices
        ]
        self.threads = [threading.Thread(target=self._feed, args=(p, d), daemon=True)
                        for p, d in zip(self.procs, self.devices, strict=True)]
        self._released = threading.Event()
        self._progress = (-1, time.monotonic())  # unpaced: delivered, when it last grew

    def _lines(self, device_id: str, first: int, count: int) -> bytes:
        return b"".join(
            protocol.encode_device_message(
                device_id, protocol.TELEMETRY, DATA, ts=1_795_000_000_000 + seq, boot=1,
                seq=seq) + b"\n"
            for seq in range(first, first + count))

    def _feed(self, proc: subprocess.Popen[bytes], device_id: str) -> None:
        assert proc.stdin is not None
        if not self.paced:
            proc.stdin.write(self._lines(device_id, 0, self.per_device))
            proc.stdin.flush()
            self._released.wait()
            proc.stdin.close()
            return
        per_second = self.rate / len(self.devices)
        chunk = max(1, int(per_second / 20))  # 20 writes a second per publisher
        started = time.monotonic()
        seq = 0
        while seq < self.per_device:
            count = min(chunk, self.per_device - seq)
            proc.stdin.write(self._lines(device_id, seq, count))
            proc.stdin.flush()
            seq += count
            delay = started + seq / per_second - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        proc.stdin.close()

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def sending(self, delivered: Callable[[], int]) -> bool:
        """Whether the load is still going: paced, while lines are being fed; unpaced, until
        the consumer has counted them all (or stalled)."""
        if self.paced:
            return any(t.is_alive() for t in self.threads)
        if self._released.is_set():
            return False
        got, since = self._progress
        now = time.monotonic()
        if (count := delivered()) != got:
            self._progress = (count, now)
        elif now - since > self.STALL_S:
            count = self.total
        if count >= self.total:
            self._released.set()
        return not self._released.is_set()

    def wait(self, delivered: Callable[[], int]) -> None:
        while self.sending(delivered):
            time.sleep(0.2)
        for t in self.threads:
            t.join()
        for p in self.procs:
            # wait4 rather than wait(): it also returns the child's CPU use, which /proc no
            # longer shows once the child is reaped.
            _pid, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            self.cpu_used += usage.ru_utime + usage.ru_stime

    @property
    def total(self) -> int:
        return self.per_device * len(self.devices)

    def cpu(self) -> float:
        return self.cpu_used


def baseline(broker: MosquittoServer, args: argparse.Namespace) -> dict[str, Any]:
    """The same publishers into a counting mosquitto_sub at QoS 1. On a machine too busy for
    the subscriber to keep up (the broker then drops what overflows its queue for it), the
    rate is what it received, marked incomplete, rather than no figure at all."""
    total = int(args.rate * args.seconds / args.publishers) * args.publishers
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
         "-t", "iot/+/telemetry", "-i", "bench-baseline", "-C", str(total), "-F", "%m"],
        stdout=subprocess.PIPE)
    assert sub.stdout is not None
    received = [0, time.monotonic()]  # messages, when the last arrived

    def count(stream: Any = sub.stdout) -> None:
        while chunk := stream.read1(1 << 16):
            received[0] += chunk.count(b"\n")
            received[1] = time.monotonic()

    counter = threading.Thread(target=count, daemon=True)
    time.sleep(0.5)
    pubs = Publishers(broker, args.publishers, args.rate, args.seconds, "base-",
                      paced=not args.unpaced)
    started = time.monotonic()
    counter.start()
    pubs.start()
    pubs.wait(lambda: int(received[0]))
    while sub.poll() is None and time.monotonic() - received[1] < 20:
        time.sleep(0.2)
    if sub.poll() is None:
        sub.terminate()
        sub.wait(10)
    counter.join(10)
    elapsed = received[1] - started
    return {"messages": pubs.total, "received": received[0], "seconds": round(elapsed, 2),
            "rate": round(received[0] / elapsed, 1) if elapsed > 0 else 0.0,
            "complete": received[0] >= pubs.total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Defaults: the target of the reliability and performance campaign (docs/performance.md).
    parser.add_argument("--rate", type=float, default=20_000, help="target msg/s in total")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--unpaced", action="store_true",
                        help="publishers send their rate x seconds messages as fast as they "
                             "go (each run: broker only, iotmeter, Node-RED)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-peer", action="store_true", help="skip the Node-RED run")
    parser.add_argument("--collectors", type=int, default=2,
                        help="collector processes sharing the load ($share subscription)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="one `iotmeter --collector-only --workers N` command instead of "
                             "--collectors separate ones (0: its default, sized to the machine)")
    parser.add_argument("--workdir", type=Path,
                        help="keep the collectors' home (spools, collector-N.log) here")
    parser.add_argument("--profile", metavar="PATH",
                        help="sample the collector (the thread holding the GIL) with py-spy "
                             "into PATH as collapsed "
                             "stacks (speedscope and flamegraph.pl read them)")
    args = parser.parse_args()

    with (MosquittoServer() as broker, InfluxServer() as influx,
          PostgresDatabase() as database, tempfile.TemporaryDirectory() as scratch):
        tmp = args.workdir or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        base = None if args.no_baseline else baseline(broker, args)
        db = "bench"
        settings = settings_for(Path(tmp), {
            "IOTMETER_DB_URL": database.url,
            "IOTMETER_TSDB_URL": f"influxdb://{influx.host}:{influx.port}/{db}",
        }, archive_window_s=10, rollups=True)  # rollups on, as by default
        collectors = ([start_collector(settings, broker, Path(tmp), 0, 1, args.workers)]
                      if args.workers is not None else
                      [start_collector(settings, broker, Path(tmp), n, args.collectors)
                       for n in range(args.collectors)])
        time.sleep(3)  # connect, migrate, subscribe

        cpu0 = {"collector": sum(tree_cpu_seconds(c.pid) for c in collectors),
                "broker": cpu_seconds(broker.broker._process.pid),  # type: ignore[union-attr]
                "influxdb": cpu_seconds(influx._process.pid)}  # type: ignore[attr-defined]
        pubs = Publishers(broker, args.publishers, args.rate, args.seconds, "dc-",
                          paced=not args.unpaced)
        if base is not None:
            time.sleep(11)  # the broker's $SYS counters lag by up to 10 s
        received_before = broker_received(broker)
        profiler = None if not args.profile else subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "--threads", "--gil",
             "--format", "raw", "--rate", "200", "--pid", str(collectors[0].pid),
             "--output", args.profile, "--duration", str(int(args.seconds))],
            stdout=subprocess.DEVNULL)
        probe = Publisher(broker.url, "bench-probe")
        latencies: list[float] = []
        started = time.monotonic()
        pubs.start()
        seq = 0
        stored = functools.partial(influx_count, influx.http_url, db, "dc-")
        while pubs.sending(stored):
            topic, payload = (protocol.device_topic("probe-0001", protocol.TELEMETRY),
                              protocol.encode_device_message(
                                  "probe-0001", protocol.TELEMETRY, DATA,
                                  ts=1_795_000_000_000 + seq, boot=1, seq=seq))
            sent = time.monotonic()
            probe.publish([(topic, payload)])
            while not influx_has(influx.http_url, db, "probe-0001", seq):
                if time.monotonic() - sent > 60:
                    break
                time.sleep(0.02)
            latencies.append(time.monotonic() - sent)
            seq += 1
            time.sleep(0.25)
        pubs.wait(stored)
        published_at = time.monotonic()
        # Sustained means keeping up while the load lasts, not draining a backlog afterwards.
        while_publishing = influx_count(influx.http_url, db, "dc-")
        count = 0
        while count < pubs.total and time.monotonic() - published_at < 300:
            count = influx_count(influx.http_url, db, "dc-")
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        # What the broker took from the publishers (its $SYS counter, refreshed every 10 s),
        # so a shortfall can be told apart: publishers' or collector's.
        time.sleep(11)
        received_after = broker_received(broker)
        # -1: the $SYS counter did not come in time (a busy machine): unknown, not missing.
        into_broker = (None if min(received_before, received_after) < 0
                       else received_after - received_before - seq)
        registry, archived = audit_stores(settings, pubs)
        cpu = {"collector": sum(tree_cpu_seconds(c.pid) for c in collectors)
               - cpu0["collector"],
               "broker": cpu_seconds(broker.broker._process.pid)  # type: ignore[union-attr]
               - cpu0["broker"],
               "influxdb": cpu_seconds(influx._process.pid)  # type: ignore[attr-defined]
               - cpu0["influxdb"],
               "publishers": pubs.cpu()}
        probe.close()
        if profiler is not None:
            profiler.wait(60)
        for collector in collectors:
            collector.send_signal(signal.SIGTERM)
        for collector in collectors:
            collector.wait(15)
        # After the collectors, on a broker of its own: nothing else subscribed meanwhile.
        peer = None if args.no_peer else node_red_run(influx, Path(tmp), args)

    latencies.sort()
    quantile = (lambda q: round(latencies[min(len(latencies) - 1,  # noqa: E731
                                              int(q * len(latencies)))] * 1000, 1))
    result = {
        "target_rate": None if args.unpaced else args.rate, "seconds": args.seconds,
        "publishers": args.publishers,
        "collectors": args.collectors if args.workers is None else 1,
        "workers": args.workers,
        "published": pubs.total, "received_by_broker": into_broker, "queryable": count,
        "in_registry_seq_tracking": registry, "archived": archived,
        "elapsed_s": round(elapsed, 2),
        "rate_into_influxdb": round(count / elapsed, 1),
        "queryable_when_publishing_ended": while_publishing,
        "rate_into_influxdb_while_publishing": round(
            while_publishing / (published_at - started), 1),
        "latency_ms": {"p50": quantile(0.5), "p95": quantile(0.95), "p99": quantile(0.99),
                       "max": round(latencies[-1] * 1000, 1), "probes": len(latencies)}
        if latencies else None,
        "cpu_s_per_1000_msgs": {k: round(v / max(1, count) * 1000, 4) for k, v in cpu.items()},
        "cpu_share_of_one_core": {k: round(v / elapsed, 3) for k, v in cpu.items()},
        "baseline_broker_only": base,
    }
    if base:
        result["ratio_to_baseline"] = round(result["rate_into_influxdb"] / base["rate"], 3)
    result["node_red"] = peer
    if peer and peer["rate"]:
        result["ratio_to_node_red"] = round(result["rate_into_influxdb"] / peer["rate"], 3)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print_table(result)
    short = {name: pubs.total - got for name, got in (
        ("broker", into_broker), ("influxdb", count), ("registry", registry),
        ("archive", archived)) if got is not None and got != pubs.total}
    for name, missing in short.items():
        print(f"NOT ALL STORED in {name}: {missing} of {pubs.total} missing after the wait",
              file=sys.stderr)
    return 1 if short else 0


def node_red_run(influx: InfluxServer, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The same publishers and load through a fresh broker into Node-RED's flow."""
    db = "nodered"
    query = urllib.parse.urlencode({"q": f'CREATE DATABASE "{db}"'}).encode()
    urllib.request.urlopen(f"{influx.http_url}/query", data=query, timeout=10).close()
    with MosquittoServer() as broker:
        peer = NodeRed(home / "node-red", broker.host, broker.port, influx.host, influx.port,
                       db)
        peer.start()
        try:
            cpu0 = cpu_seconds(peer.pid)
            pubs = Publishers(broker, args.publishers, args.rate, args.seconds, "nr-",
                              paced=not args.unpaced)
            started = time.monotonic()
            pubs.start()
            pubs.wait(functools.partial(influx_count, influx.http_url, db, "nr-"))
            published_at = time.monotonic()
            while_publishing = influx_count(influx.http_url, db, "nr-")
            count, last_change, last = 0, time.monotonic(), -1
            # Until all are stored, or nothing new for 20 s (Node-RED may have dropped some).
            while count < pubs.total and time.monotonic() - last_change < 20:
                count = influx_count(influx.http_url, db, "nr-")
                if count != last:
                    last, last_change = count, time.monotonic()
                time.sleep(0.2)
            elapsed = last_change - started
            cpu = cpu_seconds(peer.pid) - cpu0
        finally:
            peer.stop()
    return {"published": pubs.total, "stored": count, "seconds": round(elapsed, 2),
            "rate": round(count / elapsed, 1) if elapsed > 0 else 0.0,
            "rate_while_publishing": round(while_publishing / (published_at - started), 1),
            "cpu_s_per_1000_msgs": round(cpu / max(1, count) * 1000, 4),
            "flow": "mqtt in (QoS 1, json) -> function -> join 1000 / 0.5 s -> influxdb batch"}


def print_table(result: dict[str, Any]) -> None:
    """The three rates of this run side by side."""
    base, peer = result.get("baseline_broker_only"), result.get("node_red")
    rows = [("broker only (mosquitto_sub counting)", base["rate"] if base else None, None),
            (f"iotmeter ({result['collectors']} collector process(es))"
             if result.get("workers") is None else f"iotmeter --workers {result['workers']}",
             result["rate_into_influxdb"],
             result["cpu_s_per_1000_msgs"]["collector"] * 1000),
            ("Node-RED flow", peer["rate"] if peer else None,
             peer["cpu_s_per_1000_msgs"] * 1000 if peer else None)]
    offered = (f"{result['published']:,} messages unpaced" if result["target_rate"] is None
               else f"{result['target_rate']:,.0f} msg/s for {result['seconds']:g} s")
    print(f"\noffered {offered}, {result['publishers']} publishers, QoS 1")
    print(f"{'run':<40}{'msg/s stored':>14}{'vs broker':>11}{'CPU µs/msg':>12}")
    for name, rate, cpu in rows:
        ratio = f"{rate / base['rate']:.3f}" if rate and base else "-"
        print(f"{name:<40}{f'{rate:,.0f}' if rate else '-':>14}{ratio:>11}"
              f"{f'{cpu:.1f}' if cpu is not None else '-':>12}")
    if "ratio_to_node_red" in result:
        print(f"iotmeter / Node-RED: {result['ratio_to_node_red']:.2f}x (target >= 2)")
    print("(rates are wall-clock: on a loaded machine compare the ratios of one run)")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its descendants (a --workers command's worker processes),
    live or reaped."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(c) for c in task.read_text().split()]
        except OSError:
            continue
    return cpu_seconds(pid) + sum(tree_cpu_seconds(c) for c in children)


def start_collector(settings: Settings, broker: MosquittoServer, home: Path, n: int,
                    count: int, workers: int | None = None) -> subprocess.Popen[bytes]:
    """`iotmeter --collector-only` as its own process; with count > 1, members of one shared
    subscription, each with its own client id (and so its own spool); with `workers`, one
    command that runs that many worker processes itself."""
    env = {**os.environ, **env_for(settings, broker.url)}
    if count > 1:
        env.update(IOTMETER_SHARE_GROUP="bench", IOTMETER_CLIENT_ID=f"bench-collector-{n}")
    collector = subprocess.Popen(
        [sys.executable, "-m", "iotmeter_tui", "--collector-only",
         "--metrics-port", str(free_port())]
        + ([] if workers is None else ["--workers", str(workers)]),
        env=env, stdout=open(home / f"collector-{n}.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT)
    # Whatever happens below, the collector must not outlive the bench.
    atexit.register(lambda: collector.poll() is None and collector.kill())
    return collector


def broker_received(broker: MosquittoServer) -> int:
    topic = "$SYS/broker/publish/messages/received"
    return int(broker_sys(broker.port, topic).get(topic, -1))


def audit_stores(settings: Settings, pubs: Publishers,
                 timeout_s: float = 180) -> tuple[int, int]:
    """Messages counted by the registry's sequence tracking and lines in the archive, once
    both have caught up (or the timeout has passed)."""
    audit = StoreAudit(settings)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            registry = sum(s.received for s in audit.stores.metadata.load_seq_states(
                pubs.devices))
            if registry == pubs.total or time.monotonic() > deadline:
                break
            time.sleep(1)
        while True:
            archived = sum(sum(audit.archive_keys(d).values()) for d in pubs.devices)
            if archived == pubs.total or time.monotonic() > deadline:
                return registry, archived
            time.sleep(2)
    finally:
        audit.close()


if __name__ == "__main__":
    raise SystemExit(main())
