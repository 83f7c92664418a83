"""The collector's own health, read at a low rate on a thread of its own: every
`health_interval_s` it probes each store (`iotmeter_store_up`, what `/readyz` names) and reads
the fleet figures from the metadata store with a handful of GROUP BY queries
(`iotmeter_fleet_*`). Never on the message path: a slow store slows only this thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import Gauge

from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.control.ota_plan import CAMPAIGN_FINAL_STATES
from iotmeter_tui.backend.control.publisher import Publisher, PublishError
from iotmeter_tui.backend.errors import IotmeterError
from iotmeter_tui.backend.stores import Stores
from iotmeter_tui.backend.stores.metadata import FleetFigures

log = logging.getLogger(__name__)


class StoreMonitor:
    def __init__(self, stores: Stores, metrics: CollectorMetrics, interval_s: float) -> None:
        self.stores = stores
        self.metrics = metrics
        self.interval_s = interval_s
        self.down: dict[str, str] = {}  # store -> its last error
        self.probed = threading.Event()  # set after the first round
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="iotmeter-monitor")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # Not waited for long: a probe stuck on a store must not eat the sinks' drain time.
        self._stop.set()
        self._thread.join(0.5)

    def run_once(self) -> None:
        checks: dict[str, Callable[[], object]] = {
            "metadata": self.stores.metadata.check,
            "timeseries": self.stores.timeseries.check,
            "archive": self.stores.archive.check,
        }
        for name, check in checks.items():
            self._probe(name, check)
        if "metadata" not in self.down:
            try:
                self._export(self.stores.metadata.fleet_figures())
            except IotmeterError as exc:
                self._mark(name="metadata", error=str(exc))
        self.probed.set()

    def _probe(self, name: str, check: Callable[[], object]) -> None:
        try:
            check()
        except IotmeterError as exc:
            self._mark(name, str(exc))
        except OSError as exc:  # an adapter that let one through: still "down", not a crash
            self._mark(name, f"{type(exc).__name__}: {exc}")
        else:
            if self.down.pop(name, None) is not None:
                log.info("store is back", extra={"event": "store_up", "store": name})
            self.metrics.store_up.labels(name).set(1)

    def _mark(self, name: str, error: str) -> None:
        if self.down.get(name) != error:  # once per change, not every probe
            log.warning("store health probe failed", extra={
                "event": "store_down", "store": name, "error": error})
        self.down[name] = error
        self.metrics.store_up.labels(name).set(0)

    def _export(self, figures: FleetFigures) -> None:
        m = self.metrics
        _set_all(m.fleet_devices, figures.devices)
        _set_all(m.fleet_alerts_open, figures.open_alerts)
        _set_all(m.fleet_commands, figures.commands)
        _set_all(m.fleet_ota_targets, figures.ota_targets)
        m.fleet_campaigns_active.set(sum(
            n for state, n in figures.campaigns.items() if state not in CAMPAIGN_FINAL_STATES))
        m.fleet_refreshed.set(time.time())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # a bug here must not end the probes: log it, go on
                log.exception("store monitor pass failed", extra={"event": "monitor_failed"})
            self._stop.wait(self.interval_s)


def _set_all(gauge: Gauge, counts: dict[str, int]) -> None:
    """Set every label seen so far: a label whose count fell to nothing reads 0, not stale."""
    seen = {labels[0] for labels in _label_values(gauge)}
    for label in seen - counts.keys():
        gauge.labels(label).set(0)
    for label, n in counts.items():
        gauge.labels(label).set(n)


def _label_values(gauge: Gauge) -> list[tuple[str, ...]]:
    return [tuple(s.labels.values()) for family in gauge.collect() for s in family.samples]


class CountingPublisher:
    """Wraps the dispatcher's publisher: counts what the broker took and refused, by kind
    (`command` or `ota`, from the topic), without the command and OTA services knowing."""

    def __init__(self, inner: Publisher, metrics: CollectorMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    @property
    def connected(self) -> bool:
        return self.inner.connected

    def publish(self, topic: str, payload: bytes) -> None:
        kind = "ota" if topic.endswith("/ota") else "command"
        try:
            self.inner.publish(topic, payload)
        except PublishError:
            self.metrics.publish_failures.labels(kind).inc()
            raise
        self.metrics.published.labels(kind).inc()
