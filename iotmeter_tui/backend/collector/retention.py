"""Applies the time-series retention off the hot path: a thread of its own that asks the store
to delete what each resolution no longer keeps, every `interval_s`.

SQLite deletes in small transactions (SqliteTimeSeries.apply_retention), so the time-series
sink's writes never wait long behind it; InfluxDB enforces its retention policies itself and
answers at once."""

from __future__ import annotations

import logging
import threading

from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.backend.stores.timeseries import TimeSeriesStore

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 600.0


class RetentionKeeper(threading.Thread):
    """Runs store.apply_retention() once soon after start, then every interval_s, until
    stop(). A store error is logged and counted, and the next round tries again: rows
    not yet deleted stay until then, nothing else depends on them being gone."""

    def __init__(self, store: TimeSeriesStore, metrics: CollectorMetrics,
                 interval_s: float = RETENTION_INTERVAL_S, first_after_s: float = 5.0) -> None:
        super().__init__(daemon=True, name="iotmeter-retention")
        self.store = store
        self.metrics = metrics
        self.interval_s = interval_s
        self.first_after_s = first_after_s
        self.rounds = 0  # completed, for tests
        self._stopping = threading.Event()

    def run(self) -> None:
        wait = self.first_after_s
        while not self._stopping.wait(wait):
            wait = self.interval_s
            try:
                deleted = self.store.apply_retention()
            except StoreError as exc:
                self.metrics.sink_failures.labels("retention").inc()
                log.warning("retention pass failed", extra={
                    "event": "retention_failed", "error": str(exc)})
                continue
            for level, rows in deleted.items():
                if rows:
                    self.metrics.retention_deleted.labels(level).inc(rows)
            if any(deleted.values()):
                log.info("retention pass", extra={"event": "retention_deleted", **{
                    f"deleted_{level}": rows for level, rows in deleted.items()}})
            self.rounds += 1

    def stop(self) -> None:
        self._stopping.set()
