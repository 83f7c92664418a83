"""The silence watch: devices that stopped talking without a Last Will are marked offline
after three missed heartbeats; and the fleet figures the collector exports."""

from __future__ import annotations

from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.collector.registry.alerting import AlertFeed
from iotmeter_tui.backend.stores.metadata import MetadataStore


class SilenceWatch:
    def __init__(self, store: MetadataStore, alerts: AlertFeed,
                 metrics: CollectorMetrics) -> None:
        self.store = store
        self.alerts = alerts
        self.metrics = metrics

    def mark_silent(self, now_ms: int) -> list[str]:
        """Mark the silent devices offline and tell the alert rules; their ids."""
        silent = self.store.mark_silent_offline(now_ms)
        for device_id in silent:
            self.alerts.status(device_id, "offline", now_ms)
        return silent

    def report_fleet(self, now_ms: int) -> None:
        counts = self.store.device_counts_by_status()
        self.alerts.engine.on_fleet_offline(counts.get("offline", 0), now_ms)
        self.metrics.devices_online.set(counts.get("online", 0))
        self.metrics.alerts_active.set(len(self.store.open_alerts()))
