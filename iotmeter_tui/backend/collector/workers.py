"""Several collector processes behind one command (`--workers N`): one process is held to one
core by the interpreter's lock, so past about 15,000 msg/s the load is split over processes
on one MQTT shared subscription, as separate collector replicas already split it.

Each worker is a whole collector with a broker identity of its own: worker 1 keeps the
configured client id (so one worker is exactly the collector as it always was), worker k > 1
is `<client id>-w<k>`, and with it its own persistent session and spool directory. Worker 1
leads (the dispatcher, the firmware endpoint, $SYS and retention run there only).

Changing the number of workers must lose and duplicate nothing:
- a worker whose subscription form changes (plain <-> `$share/...`) subscribes the new form
  before dropping the old one, so a message may come twice only to the same worker, whose
  duplicate window drops it (intake.py);
- worker 1 changes its form before any other worker starts, so no message is delivered both
  to its plain subscription and to another worker's share;
- a worker no longer wanted (`-w3` when going from 3 to 2) is retired before the others
  start: it drops its subscriptions, takes what its broker session still held for it, lets
  every sink store its spool, and is marked retired (the file `retired` in its spool).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import re
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from iotmeter_tui.backend.collector.health import CollectorHealth, combined
from iotmeter_tui.backend.config import Settings

log = logging.getLogger(__name__)

DEFAULT_SHARE_GROUP = "iotmeter"
RETIRED_MARK = "retired"
REPORT_PERIOD_S = 0.5  # a worker's readiness to the parent
RETIRE_IDLE_S = 2.0  # a retiring session that brought nothing for this long is empty
RETIRE_DRAIN_S = 60.0  # its sinks' time to store its spool before it is tried again later
RESTART_BACKOFF_S = 1.0
# Past this many, the broker (mosquitto delivers on one thread) is the limit, not the workers.
MAX_AUTO_WORKERS = 8


def resolve_workers(configured: int, cpus: int | None = None) -> int:
    """The number of workers: as configured, or for 0 one per CPU (at most MAX_AUTO_WORKERS).
    Measured on 2 cores shared with the broker, InfluxDB and the load (docs/performance.md):
    two workers stored more per second than one at no more CPU per message, because one
    worker is capped by the interpreter's lock while the others wait on I/O."""
    if configured > 0:
        return configured
    return max(1, min(MAX_AUTO_WORKERS, cpus if cpus is not None else (os.cpu_count() or 1)))


def worker_client_id(client_id: str, index: int) -> str:
    return client_id if index == 0 else f"{client_id}-w{index + 1}"


def worker_settings(settings: Settings, index: int, count: int) -> Settings:
    """Worker `index` (0-based) of `count`: its client id (so its spool) and subscription."""
    share = settings.share_group if count == 1 else settings.share_group or DEFAULT_SHARE_GROUP
    return replace(settings, client_id=worker_client_id(settings.client_id, index),
                   share_group=share, collector_workers=count)


def _spool_name(client_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", client_id)


def retired_workers(settings: Settings, count: int) -> list[int]:
    """Indices of workers beyond `count` with a spool that was never retired."""
    pattern = re.compile(re.escape(_spool_name(settings.client_id)) + r"-w(\d+)")
    found = []
    if settings.spool_dir.is_dir():
        for path in settings.spool_dir.iterdir():
            match = pattern.fullmatch(path.name)
            if match and int(match[1]) > count and not (path / RETIRED_MARK).exists():
                found.append(int(match[1]) - 1)
    return sorted(found)


def retire(settings: Settings, mqtt_url: str, index: int, stop: threading.Event) -> bool:
    """Retire worker `index`: True once its session holds no subscription and every sink
    stored its spool (False: stopped first, or a store was down; tried again next start)."""
    from iotmeter_tui.backend.collector.service import Collector

    own = worker_settings(settings, index, index + 1)
    collector = Collector(own, mqtt_url, lead=False, retiring=True)
    log.info("retiring collector worker", extra={"event": "worker_retiring",
                                                 "client_id": own.client_id})
    starter = threading.Thread(target=collector.start, daemon=True)
    starter.start()
    try:
        while not stop.is_set() and not collector.wait_ready(1.0):
            pass
        last, quiet_since = -1, time.monotonic()
        while not stop.is_set() and time.monotonic() - quiet_since < RETIRE_IDLE_S:
            received = collector.pipeline.received if collector.pipeline else 0
            if received != last or not collector.inbox.empty():
                last, quiet_since = received, time.monotonic()
            stop.wait(0.2)
    finally:
        collector.stop(budget_s=1.0 if stop.is_set() else RETIRE_DRAIN_S)
        starter.join(5)
    if collector.drained and not stop.is_set():
        (collector.spool_dir / RETIRED_MARK).write_text("")
        log.info("collector worker retired", extra={"event": "worker_retired",
                                                    "client_id": own.client_id})
        return True
    return False


def retire_extra_workers(settings: Settings, mqtt_url: str, count: int,
                         stop: threading.Event) -> bool:
    """Retire every worker beyond `count`, one after the other. True when all are."""
    return all([retire(settings, mqtt_url, index, stop)
                for index in retired_workers(settings, count)])


# --- a worker process ----------------------------------------------------------------------


@dataclass
class WorkerReport:
    """What a worker tells the parent every REPORT_PERIOD_S."""

    metrics_port: int
    down: list[str]  # its readiness: empty when ready
    subscribed: bool
    health: CollectorHealth  # for the dashboard


def _worker_main(settings: Settings, mqtt_url: str, index: int, conn: Connection,
                 log_path: Path | None) -> None:
    import signal

    from iotmeter_tui.backend import logjson
    from iotmeter_tui.backend.collector.interpreter import tune_for_ingest
    from iotmeter_tui.backend.collector.service import Collector
    from iotmeter_tui.backend.health_server import HealthServer

    # The dashboard's workers log to a file: its terminal belongs to the dashboard.
    stream = None if log_path is None else open(log_path, "a", buffering=1)  # noqa: SIM115
    logjson.configure(settings.log_level, stream=stream)
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops its workers itself
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = os.getppid()
    tune_for_ingest()
    collector = Collector(settings, mqtt_url, lead=index == 0)
    health = HealthServer(collector.metrics.registry, collector.readiness).start()
    starter = threading.Thread(target=collector.start, daemon=True)
    starter.start()
    failed = False
    try:
        # A parent that died (SIGKILL) sends no "stop": an orphan drains on its own.
        while not stop.is_set() and os.getppid() == parent:
            if not starter.is_alive() and collector.intake is None:
                failed = True  # start() gave up (its error is logged): the parent decides
                break
            intake = collector.intake
            state = collector.health()
            conn.send(WorkerReport(health.port, collector.readiness(),
                                   intake is not None and intake.connected.is_set(),
                                   replace(state, starting=starter.is_alive())))
            if conn.poll(REPORT_PERIOD_S) and conn.recv() == "stop":
                break
    except (EOFError, BrokenPipeError, OSError):
        pass
    finally:
        collector.stop()
        health.stop()
    if failed:
        raise SystemExit(1)


@dataclass
class _Worker:
    index: int
    settings: Settings
    process: mp.process.BaseProcess | None = None
    conn: Connection | None = None
    report: WorkerReport | None = None
    ever_subscribed: bool = False
    restarts: int = 0
    reader: threading.Thread | None = field(default=None, repr=False)


class WorkerPool:
    """Starts, watches, restarts and stops the worker processes of one command."""

    def __init__(self, settings: Settings, mqtt_url: str, count: int, *,
                 log_path: Path | None = None) -> None:
        self.mqtt_url = mqtt_url
        self.log_path = log_path
        self.count = count
        self.workers = [_Worker(i, worker_settings(settings, i, count)) for i in range(count)]
        self.failed: str | None = None  # a worker that exited before it ever subscribed
        self._ctx = mp.get_context("spawn")

    # --- lifecycle ---

    def run(self, stop: threading.Event) -> int:
        """Start worker 1, once it is subscribed the others, then keep them running until
        `stop`; 1 when a worker failed to start, else 0."""
        try:
            first = self.workers[0]
            self._spawn(first)
            while not stop.is_set() and not first.ever_subscribed and self.failed is None:
                self._watch()
                stop.wait(0.1)
            for worker in self.workers[1:]:
                if not stop.is_set() and self.failed is None:
                    self._spawn(worker)
            while not stop.is_set() and self.failed is None:
                self._watch()
                stop.wait(REPORT_PERIOD_S)
        finally:
            self.stop()  # on an error of the parent's own too: no worker outlives it
        if self.failed is not None:
            log.error("collector worker failed to start", extra={
                "event": "worker_failed", "worker": self.failed})
            return 1
        return 0

    def _spawn(self, worker: _Worker) -> None:
        # Not retired any more. (A spool that is not a directory fails the worker's start.)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            (spool_of(worker.settings) / RETIRED_MARK).unlink()
        parent, child = self._ctx.Pipe()
        worker.process = self._ctx.Process(
            target=_worker_main,
            args=(worker.settings, self.mqtt_url, worker.index, child, self.log_path),
            name=f"iotmeter-collector-{worker.index + 1}", daemon=False)
        worker.process.start()
        child.close()
        worker.conn = parent
        worker.report = None
        worker.reader = threading.Thread(target=self._read, args=(worker, parent), daemon=True)
        worker.reader.start()
        log.info("collector worker started", extra={
            "event": "worker_started", "worker": worker.index + 1,
            "client_id": worker.settings.client_id, "pid": worker.process.pid})

    def _read(self, worker: _Worker, conn: Connection) -> None:
        try:
            while True:
                report = conn.recv()
                worker.report = report
                worker.ever_subscribed = worker.ever_subscribed or report.subscribed
        except (EOFError, OSError):
            return

    def _watch(self) -> None:
        """Restart a worker that died after it had started; a worker that died before it
        ever subscribed is a failure to start (a bad setting, a port taken)."""
        for worker in self.workers:
            process = worker.process
            if process is None or process.is_alive():
                continue
            if worker.reader is not None:
                worker.reader.join(1)
            if not worker.ever_subscribed:
                self.failed = worker.settings.client_id
                return
            log.error("collector worker died; restarting", extra={
                "event": "worker_restart", "worker": worker.index + 1,
                "exitcode": process.exitcode})
            worker.restarts += 1
            time.sleep(RESTART_BACKOFF_S)
            self._spawn(worker)

    def stop(self, budget_s: float | None = None) -> None:
        """Every worker drains at once, within the collector's stop budget."""
        from iotmeter_tui.backend.collector.service import STOP_BUDGET_S

        deadline = time.monotonic() + (budget_s or STOP_BUDGET_S + 1.0)
        for worker in self.workers:
            if worker.conn is not None and worker.process is not None:
                with contextlib.suppress(BrokenPipeError, OSError):
                    worker.conn.send("stop")
        for worker in self.workers:
            if worker.process is not None:
                worker.process.join(max(0.1, deadline - time.monotonic()))
                if worker.process.is_alive():
                    worker.process.kill()  # past the budget: the spool keeps the rest
                    worker.process.join(2)

    # --- health, for the parent's own /metrics and /readyz ---

    def readiness(self) -> list[str]:
        down: set[str] = set()
        for worker in self.workers:
            report = worker.report
            alive = worker.process is not None and worker.process.is_alive()
            if not alive or report is None:
                down.add(f"worker-{worker.index + 1}")
            else:
                down.update(report.down)
        return sorted(down)

    def health(self) -> CollectorHealth:
        """Every live worker's latest health as one collector's (starting until all report)."""
        parts = [w.report.health for w in self.workers
                 if w.report is not None and w.process is not None and w.process.is_alive()]
        merged = combined(parts, time.time())
        if len(parts) < len(self.workers):
            merged = replace(merged, starting=True)
        return merged

    def scrape(self) -> Iterator[tuple[int, str]]:
        """Each live worker's /metrics text, with its number."""
        for worker in self.workers:
            report = worker.report
            if report is None or worker.process is None or not worker.process.is_alive():
                continue
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{report.metrics_port}/metrics", timeout=2) as reply:
                    yield worker.index + 1, reply.read().decode()
            except OSError:
                continue


class WorkersMetrics:
    """A prometheus_client collector: every worker's samples, each with a `worker` label."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for number, text in self.pool.scrape():
            for family in text_string_to_metric_families(text):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation,
                                                        family.type, family.unit)
                for sample in family.samples:
                    into.add_sample(sample.name, {**sample.labels, "worker": str(number)},
                                    sample.value, sample.timestamp)
        return list(merged.values())


def run_pool(settings: Settings, mqtt_url: str, count: int, stop: threading.Event,
             serve: Any) -> int:
    """`iotmeter --collector-only` with `count` > 1 workers: retire the extra ones, then run
    the pool until `stop`. `serve(registry, readiness)` starts the parent's health endpoint."""
    pool = WorkerPool(settings, mqtt_url, count)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkersMetrics(pool))
    retiring = threading.Event()

    def readiness() -> list[str]:
        return ["starting"] if retiring.is_set() else pool.readiness()

    server = serve(registry, readiness)
    try:
        retiring.set()
        retire_extra_workers(settings, mqtt_url, count, stop)
        retiring.clear()
        return 0 if stop.is_set() else pool.run(stop)
    finally:
        server.stop()


def spool_of(settings: Settings) -> Path:
    """The spool directory of the collector `settings` describe (service.Collector's)."""
    return settings.spool_dir / _spool_name(settings.client_id)
