"""What the registry's messages feed besides the registry: the alert rules (with the anomaly
detector inside them) and the data-quality scores."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from iotmeter_tui.backend.collector.alerts import AlertEngine
from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.collector.quality import QualityTracker
from iotmeter_tui.backend.collector.spool import SpoolRecord
from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.backend.stores.metadata import MetadataStore

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


class AlertFeed:
    """The alert engine, fed message by message. A rule that fails on some reading is a bug
    to log, not a reason to stop the registry: retrying the batch would fail the same way for
    ever, and status, commands and OTA would stop for the whole fleet."""

    def __init__(self, engine: AlertEngine, metrics: CollectorMetrics, sink_name: str) -> None:
        self.engine = engine
        self.metrics = metrics
        self.sink_name = sink_name

    def telemetry(self, r: SpoolRecord, data: dict[str, Any]) -> None:
        try:  # _evaluate, inline: this runs for every reading
            self.engine.on_telemetry(r.device_id, r.device_type, data, r.received_ms, r.ts)
        except Exception:
            self._failed(r)

    def hello(self, r: SpoolRecord, device_type: str, data: dict[str, Any]) -> None:
        self._evaluate(self.engine.on_hello, r, r.device_id, device_type, data, r.received_ms)

    def status(self, device_id: str, state: str, at: int) -> None:
        self.engine.on_status(device_id, state, at)

    def expect_reboot(self, device_id: str, reason: str, at: int) -> None:
        self.engine.expect_reboot(device_id, reason, at)

    def gaps(self, device_id: str, gap_count: int, at: int) -> None:
        self.engine.on_gaps(device_id, gap_count, at)

    def flush(self, now_ms: int) -> None:
        """Write the queued alert changes (a store error propagates: the batch is retried)."""
        self.engine.flush(now_ms)

    def close(self) -> None:
        # A clean stop keeps the last minute of learning too (flushes save once a minute).
        if self.engine.anomaly is not None:
            self.engine.anomaly.save(_now_ms(), force=True)

    def _evaluate(self, rule: Callable[..., None], r: SpoolRecord, *args: Any) -> None:
        try:
            rule(*args)
        except Exception:
            self._failed(r)

    def _failed(self, r: SpoolRecord) -> None:
        self.metrics.sink_failures.labels(self.sink_name).inc()
        log.exception("alert rules failed on a message; its alerts are skipped", extra={
            "event": "alert_rule_failed", "device_id": r.device_id, "seq": r.seq})


class QualityFeed:
    """Data-quality counts from every record of a batch, scored and stored per batch. Scores
    are advisory and rebuilt from memory on the next batch: a failed write is logged, never
    a reason to retry the registry batch."""

    def __init__(self, store: MetadataStore, engine: AlertEngine) -> None:
        self.store = store
        self.engine = engine
        self.tracker = QualityTracker()

    def observe(self, records: Iterable[SpoolRecord]) -> None:
        """Each record exactly once: the caller skips a retried batch."""
        self.tracker.observe_all(records)

    def gaps(self, device_id: str, gap_count: int, at: int) -> None:
        self.tracker.gaps(device_id, gap_count, at)

    def save(self) -> None:
        anomaly = self.engine.anomaly
        now = _now_ms()
        if anomaly is not None:
            for device_id, resets in anomaly.take_counter_resets().items():
                self.tracker.counter_reset(device_id, now, resets)
        scores = self.tracker.drain(now, anomaly.stuck_fields if anomaly else None)
        try:
            self.store.save_quality(scores)
        except StoreError as exc:
            log.warning("data-quality scores of %d devices not saved: %s", len(scores), exc)
