"""Device administration: register, describe, list, delete devices and manage their config.

The one implementation behind `iotmeter device ...`, the REST API and the dashboard's device
dialogs. A device's config (`device_configs`) holds three kinds of keys:

- keys the device applies (DEVICE_KEYS): changing one sends a `set_config` command with the
  changed keys, so the stored config is the desired one and the command says whether the
  device took it;
- server-side alert thresholds (SERVER_KEYS) the collector's alert engine reads;
- operators' own notes, any key starting with `x_` (NOTE_PREFIX): stored, never sent or read.

Any other key is refused, naming it, so a typo never becomes a setting nobody reads.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.audit import Actor, AuditLog
from iotmeter_tui.backend.control.commands import CommandService
from iotmeter_tui.backend.errors import InvalidRequest, NotFound
from iotmeter_tui.backend.stores.metadata import (
    COMMAND_FINAL_STATES,
    CONNECTION_STATUSES,
    DEVICE_ORDER_COLUMNS,
    UNKNOWN,
    UNSET,
    Device,
    DeviceDeletion,
    MetadataStore,
    Unset,
    encode_device_cursor,
)


class DeviceCredentials(Protocol):
    """The broker side of a device's identity (the sec-broker branch implements it with
    Mosquitto's dynamic security plugin)."""

    def provision(self, device_id: str) -> str:
        """Create the device's broker identity and ACL; return its new password (shown once)."""

    def revoke(self, device_id: str) -> None:
        """Remove the device's broker identity and disconnect it."""


@dataclass(frozen=True, slots=True)
class NumberRule:
    """A numeric config key: finite, within [low, high]; `integer` refuses fractions."""

    low: float
    high: float
    integer: bool = False
    boolean: bool = False


# What the device firmware applies (backend/simulator/device.py set_config; the same limits).
DEVICE_KEYS: Final[Mapping[str, NumberRule]] = {
    "interval_s": NumberRule(0.01, 86_400.0),
    "heartbeat_s": NumberRule(0.1, 86_400.0),
    "report_temperature": NumberRule(0, 1, boolean=True),
}
# What the collector's alert engine reads (collector/alerts.py limits_from_config and
# anomaly.sensitivity_from_config).
SERVER_KEYS: Final[Mapping[str, NumberRule]] = {
    "nominal_v": NumberRule(1.0, 100_000.0),
    "max_current_a": NumberRule(1.0, 100_000.0),
    "frequency_band_pct": NumberRule(0.01, 50.0),
    "gap_threshold": NumberRule(1, 1_000_000, integer=True),
    # The anomaly detector's sensitivity for this device (collector/anomaly.py); 0 turns it off.
    "anomaly_sensitivity": NumberRule(0.0, 100.0),
}
NOTE_PREFIX: Final = "x_"
MAX_NOTE_KEY_CHARS: Final = 64
MAX_TEXT_CHARS: Final = 200  # name, location, a note's text
MAX_METADATA_BYTES: Final = 16 * 1024
MAX_PAGE: Final = 1000
MAX_EXACT_INT: Final = 2**53
# How far back replace_config looks for the device's last set_config among its commands.
_RECENT_COMMANDS: Final = 100


@dataclass(frozen=True, slots=True)
class CreatedDevice:
    """A new registry entry and, when broker credentials are managed, the device's password
    (shown this once; nothing keeps it)."""

    device: Device
    password: str | None = None


@dataclass(frozen=True, slots=True)
class DevicePage:
    """One page of a listing; `next_after` is the token for the next page (None: last)."""

    devices: list[Device]
    next_after: str | None
    total: int


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """What replace_config did: the config now stored, the `set_config` command sent (its
    id and the keys it carries) or, when none was sent, why."""

    device_id: str
    config: dict[str, Any]
    command_id: str | None = None
    sent: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


def _text(what: str, value: Any) -> str | None:
    """An operator's free text: printed in terminals and pages, so no control characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be text")
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidRequest(f"{what} is longer than {MAX_TEXT_CHARS} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        raise InvalidRequest(f"{what} must not contain control characters")
    return value


def _metadata(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest("metadata must be a JSON object")
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"metadata is not JSON: {exc}") from None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise InvalidRequest(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    for key in value:
        _text(f"metadata key {key!r}", key)
    return dict(value)


def _number(key: str, value: Any, rule: NumberRule) -> Any:
    if rule.boolean:
        if type(value) is not bool:
            raise InvalidRequest(f"config {key}: must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"config {key}: must be a number")
    if not _finite(value):
        raise InvalidRequest(f"config {key}: must be a finite number")
    if rule.integer and value != int(value):
        raise InvalidRequest(f"config {key}: must be a whole number")
    if not rule.low <= value <= rule.high:
        raise InvalidRequest(f"config {key}: {value!r} is not between {rule.low:g} and "
                             f"{rule.high:g}")
    return int(value) if rule.integer else value


def _finite(value: int | float) -> bool:
    """A number every JSON reader takes alike: finite, and an integer within ±2**53 (what a
    double holds exactly); a JSON integer may be any size, and float() of one may overflow."""
    if isinstance(value, int):
        return abs(value) <= MAX_EXACT_INT
    return math.isfinite(value)


def validate_config(values: Any) -> dict[str, Any]:
    """The config as it will be stored; InvalidRequest naming the first bad key."""
    if not isinstance(values, dict):
        raise InvalidRequest("config must be an object of key: value")
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise InvalidRequest(f"config key {key!r} is not text")
        rule = DEVICE_KEYS.get(key) or SERVER_KEYS.get(key)
        if rule is not None:
            clean[key] = _number(key, value, rule)
        elif key.startswith(NOTE_PREFIX) and 2 < len(key) <= MAX_NOTE_KEY_CHARS and \
                protocol.is_valid_label(key):
            if not (value is None or isinstance(value, str | bool)
                    or (isinstance(value, int | float) and _finite(value))):
                raise InvalidRequest(f"config {key}: a note is text, a number or true/false")
            clean[key] = _text(f"config {key}", value) if isinstance(value, str) else value
        else:
            known = ", ".join([*DEVICE_KEYS, *SERVER_KEYS])
            raise InvalidRequest(f"config {key!r} is not a known key ({known}; or "
                                 f"{NOTE_PREFIX}<name> for a note)")
    return clean


class DeviceService:
    """Devices for operators, the API and the dashboard. `commands` sends set_config (None:
    configs are stored only); `credentials` manages broker identities (None: the broker is
    not managed by iotmeter); `audit` records every change made with an actor."""

    def __init__(self, metadata: MetadataStore, commands: CommandService | None,
                 credentials: DeviceCredentials | None = None,
                 audit: AuditLog | None = None) -> None:
        self.metadata = metadata
        self.commands = commands
        self.credentials = credentials
        self.audit = audit or AuditLog(metadata)

    # --- registry ---------------------------------------------------------------------------

    def create(self, device_id: str, device_type: str = UNKNOWN, *, name: str | None = None,
               location: str | None = None, metadata: dict[str, Any] | None = None,
               actor: Actor | None = None) -> CreatedDevice:
        """Register a device before it connects. InvalidRequest for a bad field, AlreadyExists
        when registered. With credentials, its broker identity is provisioned too; if that
        fails, the registry entry is removed again (nothing half-created)."""
        with self.audit.audited(actor, "device.create", device_id) as note:
            if not isinstance(device_id, str) or not protocol.is_valid_device_id(device_id):
                raise InvalidRequest(f"{device_id!r} is not a device id "
                                     f"({protocol.DEVICE_ID_PATTERN})")
            if not isinstance(device_type, str) or not protocol.is_valid_label(device_type):
                raise InvalidRequest(f"{device_type!r} is not a device type")
            device = self.metadata.create_device(
                device_id, device_type, name=_text("name", name),
                location=_text("location", location),
                metadata=_metadata({} if metadata is None else metadata))
            password = None
            if self.credentials is not None:
                try:
                    password = self.credentials.provision(device_id)
                except BaseException:
                    self.metadata.delete_device(device_id)
                    raise
                note.detail["credentials"] = "provisioned"
            return CreatedDevice(device, password)

    def get(self, device_id: str) -> Device | None:
        return self.metadata.get_device(device_id)

    def require(self, device_id: str) -> Device:
        device = self.metadata.get_device(device_id)
        if device is None:
            raise NotFound(f"no device {device_id!r}")
        return device

    def list(self, *, search: str | None = None, status: str | None = None,
             device_type: str | None = None, order_by: str = "device_id",
             descending: bool = False, limit: int = 100,
             after: str | None = None) -> DevicePage:
        """A page of devices with the token of the next one; InvalidRequest for a bad
        filter, order, limit or token."""
        if status is not None and status not in CONNECTION_STATUSES:
            raise InvalidRequest(f"status {status!r} is not one of "
                                 f"{', '.join(CONNECTION_STATUSES)}")
        if order_by not in DEVICE_ORDER_COLUMNS:
            raise InvalidRequest(f"cannot order by {order_by!r}; use one of "
                                 f"{', '.join(DEVICE_ORDER_COLUMNS)}")
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit {limit} is not between 1 and {MAX_PAGE}")
        try:
            rows = self.metadata.list_devices(search=search, status=status,
                                              device_type=device_type, order_by=order_by,
                                              descending=descending, limit=limit + 1,
                                              after=after)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        total = self.metadata.count_devices(search=search, status=status,
                                            device_type=device_type)
        page = rows[:limit]
        more = len(rows) > limit
        token = encode_device_cursor(page[-1], order_by, descending) if more else None
        return DevicePage(page, token, total)

    def update(self, device_id: str, *, name: str | Unset | None = UNSET,
               location: str | Unset | None = UNSET,
               metadata: dict[str, Any] | Unset = UNSET,
               actor: Actor | None = None) -> Device:
        """Change only the fields given (None clears name or location); NotFound when the
        device is not registered."""
        changed = [k for k, v in (("name", name), ("location", location),
                                  ("metadata", metadata)) if not isinstance(v, Unset)]
        with self.audit.audited(actor, "device.update", device_id, {"fields": changed}):
            device = self.metadata.update_device_info(
                device_id,
                name=name if isinstance(name, Unset) else _text("name", name),
                location=location if isinstance(location, Unset) else
                _text("location", location),
                metadata=metadata if isinstance(metadata, Unset) else _metadata(metadata))
            if device is None:
                raise NotFound(f"no device {device_id!r}")
            return device

    def delete(self, device_id: str, *, actor: Actor | None = None) -> DeviceDeletion:
        """Remove a device from the registry (see MetadataStore.delete_device for what goes
        and what stays). Its broker identity is revoked first: a device that cannot be cut
        off is not deleted, so it never keeps credentials without a registry entry."""
        with self.audit.audited(actor, "device.delete", device_id) as note:
            self.require(device_id)
            if self.credentials is not None:
                self.credentials.revoke(device_id)
                note.detail["credentials"] = "revoked"
            deleted = self.metadata.delete_device(device_id)
            if deleted is None:  # deleted by someone else meanwhile
                raise NotFound(f"no device {device_id!r}")
            note.detail |= {"commands_failed": deleted.commands_failed,
                            "alerts_cleared": deleted.alerts_cleared,
                            "targets_skipped": deleted.targets_skipped}
            return deleted

    # --- config -----------------------------------------------------------------------------

    def get_config(self, device_id: str) -> dict[str, Any]:
        self.require(device_id)
        return self.metadata.get_config(device_id)

    def replace_config(self, device_id: str, values: dict[str, Any], *,
                       actor: Actor | None, timeout_s: float | None = None) -> ConfigChange:
        """Make `values` the device's whole config. Device keys that changed (or are new)
        go to the device in one `set_config` command, sent first, so a stored config always
        has its command; when the device's last `set_config` did not end `done` (it timed out
        while the device was offline, or was refused), every device key is sent again, so
        running the same change again is how to retry it. A device key left out stays as the
        device has it (there is no "unset" on the device) and is only no longer shown.
        `timeout_s`: the command's expiry (CommandService's default when None).
        InvalidRequest naming a bad key, NotFound for an unknown device."""
        with self.audit.audited(actor, "device.config", device_id) as note:
            clean = validate_config(values)
            self.require(device_id)
            before = self.metadata.get_config(device_id)
            device_keys = {k: v for k, v in clean.items() if k in DEVICE_KEYS}
            if self._last_config_failed(device_id):
                changed = device_keys
            else:
                changed = {k: v for k, v in device_keys.items()
                           if k not in before or before[k] != v or type(before[k]) is not type(v)}
            command_id, reason = None, None
            if not changed:
                reason = ("no device-applied key changed" if device_keys
                          else "no device-applied key in the config")
            elif self.commands is None:
                reason = "no command service: stored only, not sent"
            else:
                options = {} if timeout_s is None else {"timeout_s": timeout_s}
                cmd = self.commands.send(device_id, "set_config", changed,
                                         created_by=None if actor is None else actor.name,
                                         **options)
                command_id = cmd.id
            self.metadata.replace_config(device_id, clean)
            note.detail |= {"keys": sorted(clean), "command_id": command_id}
            return ConfigChange(device_id, clean, command_id, changed if command_id else {},
                                reason)

    def _last_config_failed(self, device_id: str) -> bool:
        """True when the newest set_config sent to the device ended other than `done`."""
        for cmd in self.metadata.list_commands(device_id=device_id, limit=_RECENT_COMMANDS):
            if cmd.name == "set_config":
                return cmd.state in COMMAND_FINAL_STATES and cmd.state != "done"
        return False
