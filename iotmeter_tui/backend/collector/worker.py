"""The collector in a child process, for the dashboard: ingest never competes with the UI for
the interpreter. The child sends a health snapshot (a `CollectorHealth`, pickled) once a second
over a pipe; the parent keeps the latest one."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from dataclasses import replace
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from pathlib import Path

from iotmeter_tui.backend.collector.health import CollectorHealth
from iotmeter_tui.backend.config import Settings

HEALTH_PERIOD_S = 1.0
STOP_JOIN_S = 12.0  # the pool's stop budget and a margin


def _child(settings: Settings, mqtt_url: str, conn: Connection) -> None:
    import logging
    import signal

    from iotmeter_tui.backend import logjson
    from iotmeter_tui.backend.collector import workers
    from iotmeter_tui.backend.collector.interpreter import tune_for_ingest
    from iotmeter_tui.backend.collector.service import Collector

    parent = os.getppid()

    # Logs go to a file: the parent's terminal belongs to the dashboard.
    log_path = settings.home / "collector.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logjson.configure(settings.log_level, stream=open(log_path, "a", buffering=1))  # noqa: SIM115
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the dashboard
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    count = workers.resolve_workers(settings.collector_workers)
    if count > 1:
        _child_pool(settings, mqtt_url, count, conn, stop, parent, log_path)
        return
    tune_for_ingest()
    collector = Collector(settings, mqtt_url)

    def start() -> None:
        # Workers of an earlier run with more of them give their share back first.
        workers.retire_extra_workers(settings, mqtt_url, 1, stop)
        collector.start()

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    try:
        # A dashboard that died (its SSH session dropped, say) sends no "stop": the child
        # notices it was orphaned and drains on its own.
        while not stop.is_set() and os.getppid() == parent:
            if conn.poll(HEALTH_PERIOD_S) and conn.recv() == "stop":
                break
            # The start thread is the authority on "starting": alive exactly while start()
            # prepares (a start that failed is not starting any more).
            conn.send(replace(collector.health(), starting=starter.is_alive()))
    except (EOFError, BrokenPipeError, OSError):
        pass  # the parent went away: stop cleanly all the same
    finally:
        collector.stop()
        logging.shutdown()


def _child_pool(settings: Settings, mqtt_url: str, count: int, conn: Connection,
                stop: threading.Event, parent: int, log_path: Path) -> None:
    """The child as the supervisor of `count` worker processes (workers.py), reporting their
    combined health."""
    import logging

    from iotmeter_tui.backend.collector import workers

    pool = workers.WorkerPool(settings, mqtt_url, count, log_path=log_path)

    def run() -> None:
        workers.retire_extra_workers(settings, mqtt_url, count, stop)
        if not stop.is_set():
            pool.run(stop)

    runner = threading.Thread(target=run, daemon=True, name="iotmeter-collector-pool")
    runner.start()
    try:
        while not stop.is_set() and os.getppid() == parent and runner.is_alive():
            if conn.poll(HEALTH_PERIOD_S) and conn.recv() == "stop":
                break
            conn.send(pool.health())
    except (EOFError, BrokenPipeError, OSError):
        pass
    finally:
        stop.set()
        runner.join(STOP_JOIN_S)
        logging.shutdown()


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker now, while sys.stderr is the process's own.
    The first spawned child starts the tracker and hands it sys.stderr's fd; inside a running
    Textual app sys.stderr is a capture whose fileno() is -1, and the spawn then fails ("bad
    value(s) in fds_to_keep"). The dashboard calls this before Textual captures stderr; once
    the tracker runs, later spawns do not look at sys.stderr."""
    resource_tracker.ensure_running()


class CollectorWorker:
    """Starts, watches and stops the child collector."""

    def __init__(self, settings: Settings, mqtt_url: str) -> None:
        self.settings = settings
        self.mqtt_url = mqtt_url
        self._conn: Connection | None = None
        self._process: mp.process.BaseProcess | None = None
        self._latest: CollectorHealth | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        from iotmeter_tui.backend.collector.workers import resolve_workers

        ctx = mp.get_context("spawn")  # a clean interpreter: no Textual state, no threads
        parent, child = ctx.Pipe()
        # A child that supervises worker processes cannot be a daemonic one (multiprocessing
        # forbids a daemon children); stop() ends it all the same.
        single = resolve_workers(self.settings.collector_workers) == 1
        self._process = ctx.Process(target=_child, args=(self.settings, self.mqtt_url, child),
                                    name="iotmeter-collector", daemon=single)
        self._process.start()
        child.close()
        self._conn = parent
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name="iotmeter-collector-health")
        self._reader.start()

    def _read(self) -> None:
        assert self._conn is not None
        try:
            while True:
                self._latest = self._conn.recv()
        except (EOFError, OSError):
            return

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def health(self) -> CollectorHealth | None:
        """The latest snapshot, or None before the first one (or once the child died)."""
        if not self.alive:
            return None
        return self._latest

    def wait_ready(self, timeout_s: float) -> bool:
        """True once the child reports it is subscribed to the broker."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive:
            health = self._latest
            if health is not None and health.broker_connected:
                return True
            time.sleep(0.1)
        return False

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._process is None:
            return
        try:
            if self._conn is not None:
                self._conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(2)
        self._process = None
