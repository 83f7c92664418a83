"""The collector: wires intake, pipeline, spool and sinks together, starts and stops them.

`Collector` is what `iotmeter --collector-only` runs headless and what the dashboard runs in a
child process. Start-up order matters for exactly-once: the duplicate window is rebuilt from
the registry's stored sequence state plus every spool record after the registry's cursor
before the first message is taken from the broker.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotmeter_tui.backend.collector.alerts import AlertEngine
from iotmeter_tui.backend.collector.anomaly import AnomalyDetector, parse_sensitivity
from iotmeter_tui.backend.collector.broker_sys import BrokerSysMonitor, broker_sys_url
from iotmeter_tui.backend.collector.health import CollectorHealth, SinkHealth
from iotmeter_tui.backend.collector.intake import INBOX_MAX_READS, Delivery, MqttIntake
from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.collector.monitor import CountingPublisher, StoreMonitor
from iotmeter_tui.backend.collector.pipeline import Decider, DeviceDirectory, Pipeline
from iotmeter_tui.backend.collector.registry import RegistrySink
from iotmeter_tui.backend.collector.retention import RETENTION_INTERVAL_S, RetentionKeeper
from iotmeter_tui.backend.collector.rollup_sink import ROLLUP_EVERY_S, RollupSink
from iotmeter_tui.backend.collector.seqtrack import BootTrack, SeqTracker
from iotmeter_tui.backend.collector.sinks import (
    ArchiveSink,
    CursorFile,
    SinkRunner,
    TimeSeriesSink,
)
from iotmeter_tui.backend.collector.spool import Position, Spool
from iotmeter_tui.backend.config import Settings
from iotmeter_tui.backend.control.dispatch import Dispatcher
from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.backend.stores import Stores, open_stores
from iotmeter_tui.backend.stores.archive_writer import ArchiveWriter
from iotmeter_tui.backend.stores.metadata import MetadataStore

log = logging.getLogger(__name__)

STOP_BUDGET_S = 8.0  # SIGTERM to exit, within the 10 s a service manager allows
# Meters going offline within this long of each other are judged together (one grouped
# alert when there are offline_group_min of them): Last Wills of a section that lost power
# arrive spread over the devices' keep-alive, silent meters every housekeeping round (5 s).
OFFLINE_GROUP_WINDOW_MS = 10_000


def device_locations(metadata: MetadataStore, device_ids: list[str]) -> dict[str, str]:
    """The registry's location of each device that has one: asked when meters go offline
    together (rare), one read per meter."""
    found = {}
    for device_id in device_ids:
        device = metadata.get_device(device_id)
        if device is not None and device.location:
            found[device_id] = device.location
    return found


@dataclass
class Tuning:
    """Knobs tests turn; production uses the defaults."""

    segment_max_age_s: float | None = None  # default: the archive window
    segment_max_bytes: int = 64 << 20
    sink_max_backoff_s: float = 10.0
    start_retry_s: float = 2.0
    retention_interval_s: float = RETENTION_INTERVAL_S
    rollup_every_s: float = ROLLUP_EVERY_S


class Collector:
    def __init__(self, settings: Settings, mqtt_url: str, *, stores: Stores | None = None,
                 metrics: CollectorMetrics | None = None, tuning: Tuning | None = None,
                 lead: bool = True, retiring: bool = False) -> None:
        self.settings = settings
        # One collector of a command's workers leads: only it runs the dispatcher (one
        # sender of commands and firmware offers, one firmware endpoint), the broker's $SYS
        # monitor and the retention passes. A retiring collector drops its subscriptions and
        # takes only what its broker session still holds (workers.py).
        self.lead = lead and not retiring
        self.retiring = retiring
        self.drained = False  # after stop(): every sink took everything spooled
        self.mqtt_url = mqtt_url
        self.metrics = metrics or CollectorMetrics()
        self.tuning = tuning or Tuning()
        self._stores = stores
        # Bounded: the intake stops reading the socket when the pipeline falls this far behind
        # (a slow or full spool under a QoS 0 flood would otherwise grow it without end).
        self.inbox: queue.Queue[Delivery] = queue.Queue(maxsize=INBOX_MAX_READS)
        self.runners: list[SinkRunner] = []
        self.pipeline: Pipeline | None = None
        self.intake: MqttIntake | None = None
        self.spool: Spool | None = None
        self.dispatcher: Dispatcher | None = None  # commands and OTA: server -> device
        self.monitor: StoreMonitor | None = None  # store probes and fleet figures
        self.broker_sys: BrokerSysMonitor | None = None  # $SYS on a side connection
        self._stop = threading.Event()
        # start() may still be preparing in its own thread when stop() is called.
        self._lifecycle = threading.Lock()
        self._housekeeper: threading.Thread | None = None
        self.retention: RetentionKeeper | None = None

    @property
    def stores(self) -> Stores:
        assert self._stores is not None
        return self._stores

    @property
    def spool_dir(self) -> Path:
        # One spool per client id, so two collectors on one host never share segments.
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.settings.client_id)
        return self.settings.spool_dir / safe

    # --- start ------------------------------------------------------------------------------

    def start(self) -> None:
        """Prepare stores and state, then start taking messages. Blocks while the metadata
        store is unreachable (the broker keeps the messages meanwhile)."""
        self._stores = self._stores or self._retry("open stores", lambda: open_stores(
            self.settings))
        if self._stores is None:
            return
        s = self.settings
        with self._lifecycle:
            if self._stop.is_set():
                return
            self.monitor = StoreMonitor(self._stores, self.metrics, s.health_interval_s)
            self.monitor.start()
        self.spool = Spool(
            self.spool_dir,
            max_bytes=s.spool_max_bytes,
            segment_max_bytes=self.tuning.segment_max_bytes,
            segment_max_age_s=self.tuning.segment_max_age_s or s.archive_window_s,
        )
        reorder_ms = int(s.reorder_timeout_s * 1000)
        metadata = self.stores.metadata
        anomaly = AnomalyDetector(parse_sensitivity(s.anomaly_sensitivity),
                                  self.spool_dir / "anomaly-baselines.json")
        anomaly.load()
        alerts = AlertEngine(metadata, planned_reboot_ms=int(s.planned_reboot_s * 1000),
                             group_min=s.offline_group_min,
                             group_window_ms=OFFLINE_GROUP_WINDOW_MS,
                             locate=lambda ids: device_locations(metadata, ids),
                             anomaly=anomaly)
        registry = RegistrySink(metadata, f"{s.client_id}/registry", SeqTracker(reorder_ms),
                                alerts, self.metrics, collector=s.client_id,
                                shared=s.share_group is not None)
        state = self._retry("load registry state", lambda: (
            registry.load_cursor(), metadata.load_seq_states(collector=s.client_id),
            metadata.device_types()))
        if state is None:
            return
        cursor, seq_states, types = state
        self._retry("load open alerts", lambda: alerts.load(metadata))
        registry.restore(seq_states)

        decider = Decider(SeqTracker(reorder_ms), DeviceDirectory(types), self.metrics,
                          auto_register=s.auto_register, field_budget=s.field_budget)
        now = int(time.time() * 1000)
        for st in seq_states:
            decider.tracker.restore(st.device_id, st.boot, BootTrack.restore(
                st.highest_seq, st.received, st.duplicates, st.gaps, now))
        replayed = self._replay(decider, cursor)

        writer = ArchiveWriter(self.stores.archive, gzip=s.archive_gzip)
        sinks = [
            TimeSeriesSink(self.stores.timeseries, CursorFile(self.spool_dir / "timeseries.cursor"),
                           self.metrics),
            ArchiveSink(writer, CursorFile(self.spool_dir / "archive.cursor"),
                        source=self.spool_dir.name),
            registry,
        ]
        if s.rollups:
            # Behind the time-series sink, off its write path (collector/rollup_sink.py).
            sinks.append(RollupSink(self.stores.timeseries,
                                    CursorFile(self.spool_dir / "rollups.cursor"),
                                    CursorFile(self.spool_dir / "timeseries.cursor"),
                                    every_s=self.tuning.rollup_every_s,
                                    # Without a share group no other collector takes
                                    # this fleet's messages: none writes its rollups.
                                    sole_writer=s.share_group is None))
        with self._lifecycle:
            if not self._stop.is_set():
                self._start_threads(sinks, decider)
        log.info("collector started", extra={
            "event": "collector_started", "stores": self.stores.describe(),
            "spool": str(self.spool_dir), "replayed": replayed,
            "devices": len(types), "client_id": s.client_id})

    def _start_threads(self, sinks: list[Any], decider: Decider) -> None:
        assert self.spool is not None
        s = self.settings
        self.runners = [
            SinkRunner(sink, self.spool, self.metrics, threading.Event(),
                       max_backoff_s=self.tuning.sink_max_backoff_s)
            for sink in sinks
        ]
        for runner in self.runners:
            runner.start()
        if self.lead:
            self._start_lead_threads()
        self.intake = MqttIntake(self.mqtt_url, s.client_id, self.inbox,
                                 share_group=s.share_group, retiring=self.retiring,
                                 subscription_file=self.spool_dir / "subscription.json")
        self.pipeline = Pipeline(self.inbox, decider, self.spool, self.intake.ack, self.metrics,
                                 on_commit=self._wake_sinks)
        self.pipeline.start()
        self.intake.start()
        self._housekeeper = threading.Thread(target=self._housekeeping, daemon=True,
                                             name="iotmeter-housekeeping")
        self._housekeeper.start()

    def _start_lead_threads(self) -> None:
        s = self.settings
        self.dispatcher = Dispatcher.for_collector(s, self.mqtt_url, self.stores)
        if self.dispatcher.commands.publisher is not None:
            counting = CountingPublisher(self.dispatcher.commands.publisher, self.metrics)
            self.dispatcher.commands.publisher = counting
            if self.dispatcher.rollout is not None:
                self.dispatcher.rollout.publisher = counting
        self.dispatcher.start()
        sys_url = broker_sys_url(s.mqtt_sys_url, self.mqtt_url, s.mqtt_dispatch_url)
        if sys_url is None:
            log.info("no broker metrics: set IOTMETER_MQTT_SYS_URL to a user that may read "
                     "$SYS/broker/#", extra={"event": "broker_sys_disabled"})
        else:
            self.broker_sys = BrokerSysMonitor(sys_url, f"{s.client_id}-sys",
                                               self.metrics.broker_sys)
            self.broker_sys.start()
        self.retention = RetentionKeeper(self.stores.timeseries, self.metrics,
                                         self.tuning.retention_interval_s)
        self.retention.start()

    def wait_ready(self, timeout_s: float = 30.0) -> bool:
        """True once the collector is subscribed and taking messages."""
        deadline = time.monotonic() + timeout_s
        while self.intake is None:
            if time.monotonic() > deadline or self._stop.is_set():
                return False
            time.sleep(0.05)
        return self.intake.connected.wait(max(0.0, deadline - time.monotonic()))

    def _replay(self, decider: Decider, cursor: Position | None) -> int:
        """Feed the decider every record the registry has not stored yet."""
        assert self.spool is not None
        position = self.spool.normalise(cursor)
        count = 0
        while True:
            records, nxt = self.spool.read(position)
            if not records:
                if nxt == position:
                    return count
                position = nxt
                continue
            for record in records:
                decider.replay(record)
            count += len(records)
            position = nxt

    def _retry(self, what: str, action: Any) -> Any:
        while not self._stop.is_set():
            try:
                return action()
            except StoreError as exc:
                log.warning("collector waiting for a store", extra={
                    "event": "start_blocked", "step": what, "error": str(exc)})
                self._stop.wait(self.tuning.start_retry_s)
        return None

    def _wake_sinks(self) -> None:
        for runner in self.runners:
            runner.wake.set()

    def _housekeeping(self) -> None:
        counted_passes = 0
        while not self._stop.wait(1.0):
            assert self.spool is not None
            if all(r.loaded.is_set() for r in self.runners):
                self.spool.release([r.cursor for r in self.runners])
            self.metrics.spool_bytes.set(self.spool.size_bytes)
            self.metrics.spool_oldest.set(self.spool.oldest_segment_age_s())
            if self.intake is not None:
                self.metrics.broker_connected.set(1 if self.intake.connected.is_set() else 0)
            if self.dispatcher is not None:
                passes = self.dispatcher.passes
                self.metrics.dispatch_passes.inc(max(0, passes - counted_passes))
                counted_passes = passes
                self.metrics.dispatch_up.set(0 if self.dispatcher.last_error else 1)

    # --- stop -------------------------------------------------------------------------------

    def stop(self, budget_s: float = STOP_BUDGET_S) -> None:
        """Stop intake, commit and acknowledge what arrived, let the sinks catch up within
        the budget; what they have not taken stays in the spool for the next start."""
        deadline = time.monotonic() + budget_s
        with self._lifecycle:
            self._stop.set()
        if self.monitor is not None:
            self.monitor.stop()
        if self.broker_sys is not None:
            self.broker_sys.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.retention is not None:
            self.retention.stop()
        if self.intake is not None:
            self.intake.stop_reading()
        if self.pipeline is not None:
            self.pipeline.stopping.set()
            self.pipeline.join(max(0.1, deadline - time.monotonic() - 2))
        if self.intake is not None:
            # After the pipeline's last turn: what it committed is acknowledged, not sent again.
            self.intake.disconnect()
        pipeline_done = self.pipeline is not None and not self.pipeline.is_alive()
        if self.spool is not None and pipeline_done and self.spool.committed_size(
                self.spool.active_segment) > 0:
            self.spool.roll()  # sealed, so the archive can take it now
        for runner in self.runners:
            runner.stop(max(0.0, deadline - time.monotonic() - 0.5))
        for runner in self.runners:
            runner.join(max(0.1, deadline - time.monotonic()))
        for runner in self.runners:
            if not runner.is_alive():
                runner.sink.close()
        if self.spool is not None and all(not r.is_alive() for r in self.runners):
            self.drained = pipeline_done and all(r.backlog_bytes() == 0 for r in self.runners)
            self.spool.release([r.cursor for r in self.runners])
            self.spool.close()
        if self.retention is not None:
            # A pass in progress ends its current small transaction soon; never close the
            # store under it.
            self.retention.join(max(0.1, deadline - time.monotonic()))
        if self._stores is not None:
            self._stores.close()
        log.info("collector stopped", extra={"event": "collector_stopped"})

    # --- health -----------------------------------------------------------------------------

    def readiness(self) -> list[str]:
        """What /readyz names while the collector cannot do its work: `starting`, `broker`,
        and each store that its probe or its sink found down (empty when ready)."""
        if self.intake is None:
            return ["starting"] + (sorted(self.monitor.down) if self.monitor else [])
        down = set(self.monitor.down) if self.monitor is not None else set()
        for runner in self.runners:
            if not runner.healthy:
                down.add("metadata" if runner.sink.name == "registry" else runner.sink.name)
        names = sorted(down)
        if not self.intake.connected.is_set():
            names.insert(0, "broker")
        return names

    def health(self) -> CollectorHealth:
        """What the dashboard's status line and system screen show: counters, spool, sinks,
        the dispatcher."""
        intake, pipeline, spool = self.intake, self.pipeline, self.spool
        return CollectorHealth(
            at=time.time(),
            starting=intake is None,
            broker_connected=bool(intake and intake.connected.is_set()),
            broker_error=intake.last_error if intake else None,
            received=pipeline.received if pipeline else 0,
            acked=pipeline.acked if pipeline else 0,
            duplicates=pipeline.decider.duplicates_total if pipeline else 0,
            spool_bytes=spool.size_bytes if spool else 0,
            spool_full=bool(pipeline and pipeline.full_since is not None),
            sinks=tuple(SinkHealth(r.sink.name, r.healthy, r.last_error, r.backlog_bytes())
                        for r in self.runners),
            dispatcher=self.dispatcher.health() if self.dispatcher else None,
        )
