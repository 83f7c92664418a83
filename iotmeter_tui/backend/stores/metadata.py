"""Metadata port: the device registry, alerts, commands, sequence tracking and OTA campaigns.

Adapters: `metadata_postgres` (PostgreSQL 15+, psycopg 3 pool) and `metadata_sqlite` (one file,
WAL mode, safe for several processes). Both run the one implementation in `metadata_sql`, and both
pass the same contract suite (tests/stores/test_metadata_contract.py). docs/stores-metadata.md
describes every table and column for operators who query the database directly.

Every timestamp, in the records below and in the database, is an integer count of milliseconds
since the Unix epoch (UTC), stored as BIGINT: `last_seen`, `created_at`, `raised_at`, and so on.
Errors are the project's own (`StoreUnavailable`: retry later; `StoreRejected`: will not succeed).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

UNKNOWN: Final = "unknown"


class Unset:
    """The type of UNSET: "leave this field as it is" where None is a value (clear it)."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset()

CONNECTION_STATUSES: Final = ("online", "offline", UNKNOWN)

ALERT_STATES: Final = ("active", "acknowledged", "cleared")

COMMAND_OPEN_STATES: Final = ("queued", "sent", "accepted")
COMMAND_FINAL_STATES: Final = ("done", "rejected", "failed", "timed_out")
COMMAND_STATES: Final = COMMAND_OPEN_STATES + COMMAND_FINAL_STATES

# OTA target states are the device's reported ones plus the server's own; only the final
# ones are enforced (no change after them), so the OTA service may add intermediate states.
# `skipped`: never offered, because its campaign was aborted first.
TARGET_FINAL_STATES: Final = ("done", "failed", "timed_out", "skipped")

# A campaign created without a per-target timeout (and every campaign stored before the
# column existed) gives each device this long from its offer to report the new version.
DEFAULT_TARGET_TIMEOUT_S: Final = 900.0

# Columns list_devices may sort by: the dashboard passes user choices straight through.
DEVICE_ORDER_COLUMNS: Final = (
    "device_id",
    "device_type",
    "connection_status",
    "fw_version",
    "last_seen",
    "boot",
    "heartbeat_s",
    "status_changed_at",
    "created_at",
    "name",
    "location",
    "quality",  # the data-quality score: ascending puts the worst meters first
)

API_KEY_ROLES: Final = ("viewer", "operator", "admin")


# --- records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Device:
    """A registry row. `device_type` is 'unknown' until the device's first hello."""

    device_id: str
    device_type: str
    connection_status: str  # online | offline | unknown
    fw_version: str | None
    last_seen: int | None  # newest message received, ms
    boot: int | None
    heartbeat_s: float | None
    status_changed_at: int | None  # when connection_status last changed, ms
    created_at: int
    # What operators say about the device (never what the device says about itself).
    name: str | None = None
    location: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # free JSON object
    # The collector's data-quality score (0-100, see DeviceQuality); None: not scored yet.
    quality: float | None = None


@dataclass(frozen=True, slots=True)
class DeviceUpdate:
    """What the collector learned about a device since its last batch.

    None means "unchanged". `status_at` orders status changes (default: `last_seen`); it must
    be on the same clock as `mark_silent_offline`'s `now_ms` (the collector's receive clock)."""

    device_id: str
    last_seen: int
    device_type: str | None = None
    fw_version: str | None = None
    boot: int | None = None
    heartbeat_s: float | None = None
    connection_status: str | None = None
    status_at: int | None = None


@dataclass(frozen=True, slots=True)
class SeqState:
    """Duplicate and gap accounting of one device boot. `gaps`: open missing seq ranges,
    each (first, last) inclusive."""

    device_id: str
    boot: int
    highest_seq: int
    received: int
    duplicates: int
    missing: int
    gaps: tuple[tuple[int, int], ...]
    updated_at: int
    # Which collector's view this is. Collectors sharing a subscription each see part of a
    # device's sequence, so each keeps its own row; readers get them merged.
    collector: str = ""


def merge_seq_states(states: Iterable[SeqState]) -> list[SeqState]:
    """One state per (device, boot) from the rows of several collectors: a seq is missing
    only if no collector has it (each collector's gaps, plus everything above its highest)."""
    groups: dict[tuple[str, int], list[SeqState]] = {}
    for state in states:
        groups.setdefault((state.device_id, state.boot), []).append(state)
    merged = []
    for (device_id, boot), rows in sorted(groups.items()):
        if len(rows) == 1:
            merged.append(rows[0])
            continue
        highest = max(r.highest_seq for r in rows)
        gaps: list[tuple[int, int]] = [(0, highest)]
        for r in rows:
            not_seen = [*r.gaps, (r.highest_seq + 1, highest)]
            gaps = _intersect(gaps, [g for g in not_seen if g[0] <= g[1]])
        merged.append(SeqState(
            device_id, boot, highest, sum(r.received for r in rows),
            sum(r.duplicates for r in rows), sum(last - first + 1 for first, last in gaps),
            tuple(gaps), max(r.updated_at for r in rows)))
    return merged


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Intersection of two sorted lists of disjoint inclusive ranges."""
    out, i, j = [], 0, 0
    b = sorted(b)
    while i < len(a) and j < len(b):
        first, last = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if first <= last:
            out.append((first, last))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    device_id: str
    rule: str
    severity: str
    state: str  # active | acknowledged | cleared
    value: float | None
    message: str
    raised_at: int
    acknowledged_at: int | None
    cleared_at: int | None
    updated_at: int


@dataclass(frozen=True, slots=True)
class FleetFigures:
    """What Prometheus sees of the fleet: counts by status, never per device."""

    devices: dict[str, int]  # connection_status -> n
    open_alerts: dict[str, int]  # severity -> n (active or acknowledged)
    commands: dict[str, int]  # state -> n
    ota_targets: dict[str, int]  # state -> n
    campaigns: dict[str, int]  # state -> n


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    device_id: str
    name: str
    params: dict[str, Any]
    state: str  # queued | sent | accepted | done | rejected | failed | timed_out
    created_at: int
    updated_at: int
    expires_at: int | None
    attempts: int = 0
    result: str | None = None
    detail: str | None = None
    sent_at: int | None = None
    created_by: str | None = None  # who asked: an OS user (CLI) or an API key's name


@dataclass(frozen=True, slots=True)
class Firmware:
    version: str
    size: int  # bytes
    sha256: str  # hex
    key: str  # where the image lives in the archive store
    uploaded_at: int
    # Base64 Ed25519 signature of the image (control.signing), carried in offers; None for
    # an image uploaded unsigned.
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    fw_version: str
    selector: str  # which devices, as the operator wrote it
    batch_size: int
    max_failures_pct: float
    state: str
    created_at: int
    updated_at: int
    detail: str | None = None
    target_timeout_s: float = DEFAULT_TARGET_TIMEOUT_S  # offer -> final state, per device
    created_by: str | None = None  # who started it: an OS user (CLI) or an API key's name


@dataclass(frozen=True, slots=True)
class OtaTarget:
    campaign_id: str
    device_id: str
    state: str  # 'pending' at creation
    progress_pct: float | None
    error: str | None
    attempts: int
    started_at: int | None
    updated_at: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key's record. The secret itself is never stored, only its sha256 (hex)."""

    name: str
    role: str  # viewer | operator | admin
    key_hash: str
    created_at: int
    revoked_at: int | None = None
    last_used_at: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row: who (actor, role) did what (action) to what (target), with what result.
    `id` is assigned by the store (0 before); `detail` is a small JSON object or None."""

    id: int
    at: int
    actor: str
    role: str
    action: str
    target: str | None
    result: str
    request_id: str | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class DeviceDeletion:
    """What delete_device removed and closed, for the audit log and the operator."""

    device_id: str
    configs: int
    seq_rows: int
    commands_failed: int
    targets_skipped: int
    alerts_cleared: int


# --- keyset pages of devices ----------------------------------------------------------------


def encode_device_cursor(device: Device, order_by: str = "device_id",
                         descending: bool = False) -> str:
    """The opaque `after` token for the page that follows `device` (the last of a page) in
    the given order. URL-safe; it carries the order so a token is never used with another."""
    value = getattr(device, order_by) if order_by in DEVICE_ORDER_COLUMNS else None
    raw = json.dumps([order_by, descending, value, device.device_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_device_cursor(cursor: str, order_by: str, descending: bool) -> tuple[Any, str]:
    """(order value, device_id) of a token from encode_device_cursor; ValueError when the
    token is malformed or was made for another order."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        token_order, token_desc, value, device_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise ValueError("the page cursor is not one this server made") from None
    if token_order != order_by or token_desc is not descending:
        raise ValueError("the page cursor was made for another sort order")
    if not isinstance(device_id, str) or not (
        value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))
    ):
        raise ValueError("the page cursor is not one this server made")
    return value, device_id


# --- the port -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceQuality:
    """A device's data-quality score (0-100, 100: nothing wrong seen) and its parts; counts
    decay with a one-hour half-life (collector/quality.py), `clock_skew_ms` is the typical
    |arrival - ts|."""

    device_id: str
    score: float
    received: float
    gaps: float
    duplicates: float
    rejects: float
    counter_resets: float
    stuck_fields: int
    clock_skew_ms: int
    updated_at: int


class MetadataStore(Protocol):
    """Every method may raise StoreUnavailable (retry later) or StoreRejected.

    The schema is migrated on first use (or by `migrate()`), so a store can be opened while
    its database is down and start working when it comes back."""

    # -- schema
    def migrate(self) -> list[int]:
        """Apply pending migrations (safe when several processes start at once); returns the
        versions applied by this call."""

    def schema_version(self) -> int:
        """Highest applied migration version."""

    # -- collector side: each call is one transaction
    def apply_collector_batch(
        self,
        devices: Sequence[DeviceUpdate],
        seq_states: Sequence[SeqState],
        cursor: tuple[str, str] | None = None,
    ) -> None:
        """Upsert devices (in order; last_seen only grows; a status only replaces an older
        one), upsert seq states by (device_id, boot), and store the cursor."""

    def get_cursor(self, name: str) -> str | None: ...

    def load_seq_states(self, device_ids: Iterable[str] | None = None, *,
                        collector: str | None = None) -> list[SeqState]:
        """Every stored boot of the given devices (all devices when None): one collector's
        own rows when `collector` is given, else every collector's rows merged."""

    def device_types(self) -> dict[str, str]:
        """device_id -> device_type of every registered device."""

    # -- data quality (collector/quality.py writes, the dashboard and API read)
    def save_quality(self, scores: Sequence[DeviceQuality]) -> None:
        """Upsert each device's latest score."""

    def device_quality(self, device_ids: Iterable[str] | None = None
                       ) -> dict[str, DeviceQuality]:
        """device_id -> latest score, of the given devices (every scored device when None)."""

    def mark_silent_offline(self, now_ms: int, factor: float = 3.0) -> list[str]:
        """Online devices silent for more than factor * heartbeat_s become offline."""

    # -- registry / dashboard
    def get_device(self, device_id: str) -> Device | None: ...

    def list_devices(
        self,
        *,
        search: str | None = None,
        status: str | None = None,
        device_type: str | None = None,
        order_by: str = "device_id",
        descending: bool = False,
        offset: int = 0,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[Device]:
        """A page of devices. `search` is a case-insensitive substring of the id, type,
        firmware version, name or location; `order_by` one of DEVICE_ORDER_COLUMNS
        (ValueError otherwise). `after`: a token from encode_device_cursor (the last device
        of the previous page, same order): the page starts after it, stable while devices
        come and go (ValueError for a bad token)."""

    def create_device(
        self,
        device_id: str,
        device_type: str = UNKNOWN,
        *,
        name: str | None = None,
        location: str | None = None,
        metadata: dict[str, Any] | None = None,
        at: int | None = None,
    ) -> Device:
        """Register a device before it is heard (status unknown); AlreadyExists when the
        id is registered (also when the collector registered it first)."""

    def update_device_info(
        self,
        device_id: str,
        *,
        name: str | Unset | None = UNSET,
        location: str | Unset | None = UNSET,
        metadata: dict[str, Any] | Unset = UNSET,
    ) -> Device | None:
        """Change only the fields given (None clears name/location); None when unknown."""

    def delete_device(self, device_id: str, *, at: int | None = None) -> DeviceDeletion | None:
        """In one transaction: the registry row, its configs and sequence tracking go; its
        open commands end `failed` and its unfinished OTA targets `skipped` (kept as history,
        with "device deleted" as detail); its open alerts are cleared. Time series and archive
        stay. None when the device is not registered. A deleted device that speaks again is
        registered again by the collector, as a new unknown device."""

    def count_devices_by_status_and_type(self) -> dict[tuple[str, str], int]:
        """(connection_status, device_type) -> devices; only pairs that occur."""

    def count_open_alerts_by_severity(self) -> dict[str, int]:
        """Open (active or acknowledged) alerts per severity; only severities that occur."""

    def open_alert_counts(self, device_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Open (active or acknowledged) alerts per device, counted in the store (GROUP BY),
        over every device or those of `device_ids`; only devices with an open alert."""

    def count_devices(
        self,
        *,
        search: str | None = None,
        status: str | None = None,
        device_type: str | None = None,
    ) -> int: ...

    def device_counts_by_status(self) -> dict[str, int]:
        """Devices per connection status; every status in CONNECTION_STATUSES is present."""

    def fleet_figures(self) -> FleetFigures:
        """Counts for the monitoring gauges, each one GROUP BY query (bounded labels only)."""

    def get_config(self, device_id: str) -> dict[str, Any]: ...

    def get_configs(self) -> dict[str, dict[str, Any]]:
        """Every device's config in one read; a device without settings is absent."""

    def set_config(self, device_id: str, key: str, value: Any) -> None:
        """Store one JSON-serialisable setting of a device."""

    def replace_config(self, device_id: str, values: dict[str, Any]) -> None:
        """Make `values` the device's whole config, in one transaction (keys left out go)."""

    # -- alerts: at most one active-or-acknowledged alert per (device, rule)
    def raise_alert(
        self,
        device_id: str,
        rule: str,
        severity: str,
        value: float | None,
        message: str,
        at: int,
    ) -> tuple[Alert, bool]:
        """The open alert of (device, rule), refreshed, or a new one; True when new."""

    def clear_alert(self, alert_id: int, at: int) -> bool:
        """True when the alert was open and is now cleared."""

    def acknowledge_alert(self, alert_id: int, at: int) -> bool:
        """True when the alert was active and is now acknowledged."""

    def clear_alerts_for(self, device_id: str, rule: str, at: int) -> list[int]: ...

    def open_alerts(self, device_id: str | None = None) -> list[Alert]: ...

    def list_alerts(
        self, *, state: str | None = None, device_id: str | None = None, limit: int = 500
    ) -> list[Alert]:
        """Newest first."""

    # -- commands
    def create_command(self, cmd: Command) -> None:
        """StoreRejected when the id exists."""

    def get_command(self, command_id: str) -> Command | None: ...

    def list_commands(
        self, *, device_id: str | None = None, state: str | None = None, limit: int = 500
    ) -> list[Command]:
        """Newest first."""

    def update_command(
        self,
        command_id: str,
        *,
        state: str,
        at: int,
        result: str | None = None,
        detail: str | None = None,
        sent: bool = False,
        device_id: str | None = None,
    ) -> bool:
        """Move a command on; a final state never changes again. `sent` records a delivery
        attempt (sent_at, attempts + 1). With `device_id`, only that device's command of this
        id changes (a device's acknowledgement). True when the command changed."""

    def pending_commands(self, device_id: str | None = None) -> list[Command]:
        """Commands not in a final state, oldest first."""

    # -- API keys (the secret is never stored: only its sha256)
    def add_api_key(self, key: ApiKey) -> None:
        """AlreadyExists when the name (revoked or not) or the hash is taken."""

    def get_api_key_by_hash(self, key_hash: str) -> ApiKey | None: ...

    def get_api_key(self, name: str) -> ApiKey | None: ...

    def list_api_keys(self) -> list[ApiKey]:
        """By name, revoked ones included."""

    def revoke_api_key(self, name: str, *, at: int | None = None) -> bool:
        """True when the key was active and is now revoked."""

    def touch_api_key(self, name: str, *, at: int | None = None) -> None:
        """Record a use (last_used_at only grows)."""

    # -- audit log
    def add_audit(self, entry: AuditEntry) -> AuditEntry:
        """Store the entry (its `id` is ignored); returns it with the id assigned."""

    def list_audit(
        self,
        *,
        limit: int = 100,
        before_id: int | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: int | None = None,
    ) -> list[AuditEntry]:
        """Newest first; `before_id` pages back (entries with a smaller id), `since` keeps
        entries at or after that time (ms)."""

    # -- OTA
    def add_firmware(self, fw: Firmware) -> None:
        """StoreRejected when the version exists."""

    def get_firmware(self, version: str) -> Firmware | None: ...

    def list_firmware(self) -> list[Firmware]:
        """Newest upload first."""

    def create_campaign(self, c: Campaign, device_ids: Sequence[str]) -> None:
        """The campaign and one 'pending' target per device, in one transaction."""

    def get_campaign(self, campaign_id: str) -> Campaign | None: ...

    def list_campaigns(self, limit: int = 100, *, state: str | None = None) -> list[Campaign]:
        """Newest first; only those in `state` when given."""

    def update_campaign(
        self, campaign_id: str, *, state: str, at: int, detail: str | None = None
    ) -> bool: ...

    def list_targets(self, campaign_id: str) -> list[OtaTarget]: ...

    def ota_target_counts(self, campaign_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        """campaign -> target state -> targets, counted in the store (GROUP BY); a campaign
        without targets (or unknown) is absent."""

    def update_target(
        self,
        campaign_id: str,
        device_id: str,
        *,
        state: str,
        at: int,
        progress_pct: float | None = None,
        error: str | None = None,
        started: bool = False,
    ) -> bool:
        """Like update_command: no change after a final state; `started` records an attempt."""

    # -- lifecycle
    def check(self) -> None:
        """Raise StoreError when the store cannot be reached or used."""

    def close(self) -> None: ...
