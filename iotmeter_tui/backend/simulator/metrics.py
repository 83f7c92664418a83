"""The simulator's Prometheus metrics (`iotmeter simulate --metrics-port P`): fleet figures
copied from `Fleet.stats()` once a second on the simulator's own loop, so a scrape never walks
the devices while the loop changes them. docs/operations.md lists them."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from iotmeter_tui.backend.simulator.fleet import FleetStats

# name, type, help, FleetStats field
FIGURES = (
    ("iotmeter_sim_devices", "gauge", "Simulated meters", "devices"),
    ("iotmeter_sim_devices_connected", "gauge", "Simulated meters connected to the broker",
     "online"),
    ("iotmeter_sim_messages_published", "counter",
     "Messages the simulated meters produced (each given a seq)", "produced"),
    ("iotmeter_sim_messages_acked", "counter", "PUBACKs the simulated meters received", "acked"),
    ("iotmeter_sim_messages_buffered", "gauge",
     "Messages waiting in the meters' offline buffers", "buffered"),
    ("iotmeter_sim_reconnects", "counter", "Connections the simulated meters lost",
     "connection_losses"),
    ("iotmeter_sim_connect_failures", "counter", "Connection attempts that failed",
     "connect_failures"),
)
FAULTS = "iotmeter_sim_faults_injected"


class SimulatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._stats: FleetStats | None = None
        self._lock = threading.Lock()
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def update(self, stats: FleetStats) -> None:
        with self._lock:
            self._stats = stats

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            stats = self._stats
        for name, kind, doc, attr in FIGURES:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, doc)
            if stats is not None:
                family.add_metric([], float(getattr(stats, attr)))
            yield family
        faults = CounterMetricFamily(FAULTS, "Faults injected (--faults), by kind",
                                     labels=["fault"])
        for fault, n in sorted((stats.faults if stats else {}).items()):
            faults.add_metric([fault], float(n))
        yield faults
