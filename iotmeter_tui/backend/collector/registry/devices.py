"""The device rows: everything one batch says about each device, folded into one update per
device, so a write costs a row per device seen however many messages it covers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from iotmeter_tui.backend.collector.spool import SpoolRecord
from iotmeter_tui.backend.stores.metadata import DeviceUpdate


class DeviceChange:
    """One device's part of a batch."""

    __slots__ = ("boot", "device_type", "fw_version", "heartbeat_s", "last_seen", "status",
                 "status_at")

    def __init__(self, last_seen: int) -> None:
        self.last_seen = last_seen
        self.device_type: str | None = None
        self.fw_version: str | None = None
        self.boot: int | None = None
        self.heartbeat_s: float | None = None
        self.status: str | None = None
        self.status_at: int | None = None

    def update(self, device_id: str) -> DeviceUpdate:
        return DeviceUpdate(device_id, self.last_seen, self.device_type, self.fw_version,
                            self.boot, self.heartbeat_s, self.status, self.status_at)


class DeviceFold:
    """The device updates of one batch. Status changes use the collector's clock (arrival
    time), so a device's skewed clock cannot leave it stuck offline."""

    def __init__(self) -> None:
        self.changes: dict[str, DeviceChange] = {}

    def seen(self, record: SpoolRecord) -> DeviceChange:
        change = self.changes.get(record.device_id)
        if change is None:
            change = self.changes[record.device_id] = DeviceChange(record.received_ms)
        elif record.received_ms > change.last_seen:
            change.last_seen = record.received_ms
        return change

    @staticmethod
    def online(change: DeviceChange, at: int) -> None:
        """Any message but a status says the device is connected now."""
        if change.status != "online":
            change.status, change.status_at = "online", at

    @staticmethod
    def hello(change: DeviceChange, record: SpoolRecord, data: dict[str, Any]) -> None:
        change.device_type = str(data["device_type"])
        change.fw_version = str(data["fw_version"])
        change.boot = record.boot
        change.heartbeat_s = float(data["heartbeat_s"])

    @staticmethod
    def status(change: DeviceChange, state: str, at: int) -> None:
        change.status, change.status_at = state, at

    def updates(self) -> list[DeviceUpdate]:
        return [change.update(device_id) for device_id, change in self.changes.items()]


class KnownDevices:
    """What the registry last stored of each device's hello and connection status. A hello
    that changes neither is a heartbeat: like telemetry, it can wait for the next write.
    (With 5,000 meters sending a hello every 30 s, one arrives every few milliseconds; taken
    as news, they had the registry rewrite every device's row back to back.)"""

    def __init__(self) -> None:
        self._hello: dict[str, tuple[str, str, int, float]] = {}
        self._status: dict[str, str] = {}

    def remember(self, updates: Iterable[DeviceUpdate]) -> None:
        """Call once the updates are stored."""
        for u in updates:
            if (u.device_type is not None and u.fw_version is not None and u.boot is not None
                    and u.heartbeat_s is not None):
                self._hello[u.device_id] = (u.device_type, u.fw_version, u.boot, u.heartbeat_s)
            if u.connection_status is not None:
                self._status[u.device_id] = u.connection_status

    def forget_status(self, device_ids: Iterable[str]) -> None:
        """Their status changed in the store behind the registry's back (the silence watch)."""
        for device_id in device_ids:
            self._status.pop(device_id, None)

    def changed_by(self, record: SpoolRecord, data: dict[str, Any]) -> bool:
        """Whether this hello changes the device's row beyond its last_seen."""
        return self._status.get(record.device_id) != "online" or self._hello.get(
            record.device_id) != (str(data["device_type"]), str(data["fw_version"]),
                                  record.boot, float(data["heartbeat_s"]))
