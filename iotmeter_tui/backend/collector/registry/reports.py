"""Command acknowledgements and OTA progress reports, stored before the registry's cursor
moves past them."""

from __future__ import annotations

from typing import Any

from iotmeter_tui.backend.collector.registry.alerting import AlertFeed
from iotmeter_tui.backend.collector.spool import SpoolRecord
from iotmeter_tui.backend.control.ota_plan import target_state_for_report
from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.backend.stores.metadata import MetadataStore

# OTA reports after which the meter restarts on purpose: its offline is planned, not news.
PLANNED_REBOOT_STATES = frozenset({"installing", "rebooting"})

Report = tuple[str, dict[str, Any], int]  # device id, the message's data, arrival


class DeviceReports:
    """One batch's command acks and OTA reports. Both store updates are guarded against
    going back from a final state, so applying them again after a crash is harmless."""

    def __init__(self, store: MetadataStore, alerts: AlertFeed) -> None:
        self.store = store
        self.alerts = alerts
        self.commands: list[Report] = []
        self.ota: list[Report] = []

    def command_ack(self, r: SpoolRecord, data: dict[str, Any]) -> None:
        self.commands.append((r.device_id, data, r.received_ms))
        if data.get("result") == "accepted" and self._is_reboot(r.device_id,
                                                                str(data["command_id"])):
            self.alerts.expect_reboot(r.device_id, "reboot command", r.received_ms)

    def ota_status(self, r: SpoolRecord, data: dict[str, Any]) -> None:
        self.ota.append((r.device_id, data, r.received_ms))
        if data.get("state") in PLANNED_REBOOT_STATES:
            self.alerts.expect_reboot(r.device_id, "OTA install", r.received_ms)

    def store_all(self) -> None:
        for device_id, data, at in self.commands:
            result = str(data["result"])
            # Matched by device too: device B acknowledging A's command id changes nothing.
            self.store.update_command(str(data["command_id"]), state=result, at=at,
                                      result=result, detail=str(data.get("detail") or ""),
                                      device_id=device_id)
        for device_id, data, at in self.ota:
            # A reported "done" is not final yet: the next hello must show the new version.
            self.store.update_target(
                str(data["campaign_id"]), device_id,
                state=target_state_for_report(str(data["state"])), at=at,
                progress_pct=float(data.get("progress_pct", 0)),
                error=(str(data["error"]) if data.get("error") else None))

    def _is_reboot(self, device_id: str, command_id: str) -> bool:
        # One read per accepted command (operators' commands are rare next to telemetry).
        # Without it the reboot pages as an outage; the batch must not fail for it. Only the
        # device's own command counts: accepting another's reboot would silence its offline.
        try:
            command = self.store.get_command(command_id)
        except StoreError:
            return False
        return command is not None and command.name == "reboot" and (
            command.device_id == device_id)
