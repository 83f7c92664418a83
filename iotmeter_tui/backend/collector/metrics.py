"""The collector's Prometheus metrics, all named `iotmeter_…`, in a registry of their own (so
several collectors in one test process do not collide). docs/operations.md documents each one;
a test keeps the two in step."""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import HistogramMetricFamily

from iotmeter_tui.backend.collector.broker_sys import BrokerSysCollector

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600)


class BatchHistogram:
    """A Prometheus histogram fed a whole batch of observations at once. prometheus_client's
    Histogram takes a lock and walks its buckets in Python for every observation, which at
    20,000 messages a second is a noticeable share of the pipeline's time."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = list(buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Sequence[float]) -> None:
        if not values:
            return
        # "le" buckets: a value equal to a bound belongs to that bound's bucket. Sorted
        # once, each bound is one bisection (a third of the time of one per value).
        ordered = sorted(values)
        below = [bisect_right(ordered, bound) for bound in self.bounds]
        total = sum(ordered)
        with self._lock:
            counts, before = self._counts, 0
            for index, upto in enumerate(below):
                counts[index] += upto - before
                before = upto
            counts[-1] += len(ordered) - before
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, n in zip([*map(str, map(float, self.bounds)), "+Inf"], counts, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets,
                                    sum_value=total)


class CollectorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "iotmeter_messages_received", "MQTT messages taken from the broker", registry=r)
        self.accepted = Counter(
            "iotmeter_messages_accepted", "Messages that passed validation and dedup, by type",
            ["msg_type"], registry=r)
        self.rejected = Counter(
            "iotmeter_messages_rejected", "Messages rejected and archived under _rejected/",
            ["reason"], registry=r)
        self.duplicates = Counter(
            "iotmeter_messages_duplicate", "Messages dropped as duplicates of a stored (boot, seq)",
            registry=r)
        self.gaps = Counter(
            "iotmeter_seq_gaps", "Sequence numbers declared missing after the reorder timeout",
            registry=r)
        self.acked = Counter(
            "iotmeter_messages_acked", "Messages acknowledged to the broker after being durable",
            registry=r)
        self.sink_batch = Histogram(
            "iotmeter_sink_batch_size", "Records per sink batch", ["sink"],
            buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000), registry=r)
        self.sink_latency = Histogram(
            "iotmeter_sink_write_seconds", "Time to write one batch to a sink", ["sink"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.sink_failures = Counter(
            "iotmeter_sink_failures", "Failed sink writes (each retried later)", ["sink"],
            registry=r)
        self.sink_backlog = Gauge(
            "iotmeter_sink_backlog_bytes", "Spool bytes a sink has not taken yet", ["sink"],
            registry=r)
        self.sink_up = Gauge(
            "iotmeter_sink_up", "1 when the sink's last write succeeded", ["sink"], registry=r)
        self.spool_bytes = Gauge(
            "iotmeter_spool_bytes", "Bytes in the write-ahead spool", registry=r)
        self.spool_oldest = Gauge(
            "iotmeter_spool_oldest_age_seconds", "Age of the oldest spool segment", registry=r)
        self.spool_full = Gauge(
            "iotmeter_spool_full", "1 while the spool is full and acknowledgements are held",
            registry=r)
        self.lag = BatchHistogram(
            "iotmeter_end_to_end_lag_seconds",
            "Arrival time minus the device's ts, for telemetry", LAG_BUCKETS, r)
        self.devices_online = Gauge(
            "iotmeter_devices_online", "Devices whose connection_status is online", registry=r)
        self.alerts_active = Gauge(
            "iotmeter_alerts_active", "Open (active or acknowledged) alerts", registry=r)
        self.broker_connected = Gauge(
            "iotmeter_broker_connected", "1 while connected to the MQTT broker", registry=r)
        # --- retention (a thread of its own, off the sinks' path) ------------------------
        self.retention_deleted = Counter(
            "iotmeter_retention_deleted", "Time-series rows deleted by retention, by level",
            ["level"], registry=r)
        # --- health: the stores probed every few seconds (/readyz names the ones down) -----
        self.store_up = Gauge(
            "iotmeter_store_up", "1 when the store answered the last health probe", ["store"],
            registry=r)
        # --- server -> device: commands and OTA offers (the dispatcher) --------------------
        self.published = Counter(
            "iotmeter_dispatch_published", "Commands and OTA offers the broker took (PUBACK)",
            ["kind"], registry=r)
        self.publish_failures = Counter(
            "iotmeter_dispatch_publish_failures", "Commands and OTA offers the broker did not take",
            ["kind"], registry=r)
        self.dispatch_passes = Counter(
            "iotmeter_dispatch_passes", "Dispatcher passes over commands and campaigns that "
            "completed", registry=r)
        self.dispatch_up = Gauge(
            "iotmeter_dispatch_up", "1 when the dispatcher's last pass succeeded", registry=r)
        # --- fleet figures: GROUP BY queries on the metadata store at a low rate ------------
        self.fleet_devices = Gauge(
            "iotmeter_fleet_devices", "Registered devices by connection status", ["status"],
            registry=r)
        self.fleet_alerts_open = Gauge(
            "iotmeter_fleet_alerts_open", "Open (active or acknowledged) alerts by severity",
            ["severity"], registry=r)
        self.fleet_commands = Gauge(
            "iotmeter_fleet_commands", "Commands in the store by state (timed_out, done, ...)",
            ["state"], registry=r)
        self.fleet_ota_targets = Gauge(
            "iotmeter_fleet_ota_targets", "OTA campaign targets by state", ["state"], registry=r)
        self.fleet_campaigns_active = Gauge(
            "iotmeter_fleet_ota_campaigns_active", "OTA campaigns not in a final state",
            registry=r)
        self.fleet_refreshed = Gauge(
            "iotmeter_fleet_refreshed_timestamp_seconds",
            "When the fleet figures were last read from the metadata store", registry=r)
        # --- the broker as seen through $SYS (a side connection of its own) ----------------
        self.broker_sys = BrokerSysCollector(r)
        # --- the standard process_* and python_* metrics ----------------------------------
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of a sample, for tests (the dashboard reads `Collector.health()`)."""
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value
