"""The collector's Prometheus metrics, all named `iotmeter_…`, in a registry of their own (so
several collectors in one test process do not collide). docs/operations.md documents each one;
a test keeps the two in step."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600)


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
        self.lag = Histogram(
            "iotmeter_end_to_end_lag_seconds",
            "Arrival time minus the device's ts, for telemetry", buckets=LAG_BUCKETS, registry=r)
        self.devices_online = Gauge(
            "iotmeter_devices_online", "Devices whose connection_status is online", registry=r)
        self.alerts_active = Gauge(
            "iotmeter_alerts_active", "Open (active or acknowledged) alerts", registry=r)
        self.broker_connected = Gauge(
            "iotmeter_broker_connected", "1 while connected to the MQTT broker", registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> object:
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of a sample (tests and the dashboard's health view)."""
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value
