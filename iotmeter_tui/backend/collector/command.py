"""`iotmeter --collector-only`: the collector as a service, one process or a pool of worker
processes (workers.py), behind one /metrics, /healthz and /readyz port."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from iotmeter_tui.backend.collector.interpreter import tune_for_ingest
from iotmeter_tui.backend.collector.service import Collector
from iotmeter_tui.backend.config import ConfigError, Settings

log = logging.getLogger(__name__)


def run_collector(settings: Settings) -> int:
    """`iotmeter --collector-only`: run until SIGTERM/SIGINT, then drain and exit 0 (1 when
    a worker process failed to start)."""
    from iotmeter_tui.backend import logjson
    from iotmeter_tui.backend.broker import EmbeddedBroker
    from iotmeter_tui.backend.collector import workers
    from iotmeter_tui.backend.health_server import HealthServer

    logjson.configure(settings.log_level)
    broker = None
    mqtt_url = settings.mqtt_url
    if mqtt_url is None:
        broker = EmbeddedBroker(settings.home / "broker")
        broker.start()
        mqtt_url = broker.url
        log.info("embedded broker started", extra={"event": "broker_started", "url": mqtt_url})
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def serve(registry: Any, readiness: Any) -> HealthServer:
        # Loopback unless IOTMETER_METRICS_HOST says otherwise (the image sets 0.0.0.0:
        # Prometheus and the probes come from outside the container). No secret is served.
        try:
            return HealthServer(registry, readiness, host=settings.metrics_host,
                                port=settings.metrics_port).start()
        except OSError as exc:
            if broker is not None:
                broker.stop()
            raise ConfigError("IOTMETER_METRICS_PORT", f"cannot listen on port "
                              f"{settings.metrics_port}: {exc.strerror or exc}") from None

    count = workers.resolve_workers(settings.collector_workers)
    if count > 1:
        try:
            return workers.run_pool(settings, mqtt_url, count, stop, serve)
        finally:
            if broker is not None:
                broker.stop()
    tune_for_ingest()
    collector = Collector(settings, mqtt_url)
    serve(collector.metrics.registry, collector.readiness)

    def start() -> None:
        # Workers of an earlier run with more of them give their share back first.
        workers.retire_extra_workers(settings, mqtt_url, 1, stop)
        collector.start()

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    stop.wait()
    collector.stop()
    if broker is not None:
        broker.stop()
    return 0
