"""Request and response models, declared once: flask-openapi3 validates requests with them and
writes them into the OpenAPI document; responses are built through them too (`out()`), so what
leaves the API is what the document says."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
LABEL = r"^[A-Za-z0-9_.+-]{1,64}$"
MAX_PAGE = 1000


class Record(BaseModel):
    # Built straight from the services' dataclasses (attribute access in pydantic's core):
    # dataclasses.asdict's deep copy cost more than the database query for a page.
    model_config = ConfigDict(from_attributes=True)


_PLAIN_SCHEMAS: dict[type[BaseModel], dict[str, Any]] = {}


class Strict(BaseModel):
    # Unknown members are an error naming them: a typo must not be silently ignored.
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # flask-openapi3 reads a query model's schema on every request to parse the query
        # string; generating it took longer than a device page's database query. The plain
        # schema (no arguments) never changes, so it is made once; it is only read.
        if args or kwargs:
            return super().model_json_schema(*args, **kwargs)
        schema = _PLAIN_SCHEMAS.get(cls)
        if schema is None:
            schema = _PLAIN_SCHEMAS[cls] = super().model_json_schema()
        return schema


# --- paths ----------------------------------------------------------------------------------


class DevicePath(BaseModel):
    device_id: str = Field(pattern=DEVICE_ID, description="the device id")


class AlertPath(BaseModel):
    alert_id: int = Field(ge=1, le=2**63 - 1)


class CommandPath(BaseModel):
    command_id: str = Field(max_length=100)


class CampaignPath(BaseModel):
    campaign_id: str = Field(max_length=100)


# --- common ---------------------------------------------------------------------------------


class PageQuery(Strict):
    limit: int = Field(100, ge=1, le=MAX_PAGE, description="items per page (at most 1000)")
    cursor: str | None = Field(None, max_length=200,
                               description="the `next_cursor` of the previous page")


# --- devices --------------------------------------------------------------------------------

Metadata = dict[str, Any]


class Device(Record):
    device_id: str
    device_type: str
    name: str | None = None
    location: str | None = None
    metadata: Metadata = Field(default_factory=dict)
    connection_status: Literal["online", "offline", "unknown"]
    fw_version: str | None = None
    last_seen: int | None = Field(None, description="ms since the epoch")
    boot: int | None = None
    heartbeat_s: float | None = None
    status_changed_at: int | None = None
    created_at: int
    quality: float | None = Field(None, ge=0, le=100, description="data-quality score, 0-100 "
                                  "(100: nothing wrong seen lately); null until the collector "
                                  "has scored the device; its parts: GET .../quality")


class DevicePage(BaseModel):
    items: list[Device]
    total: int
    next_cursor: str | None = None


class DeviceListQuery(PageQuery):
    status: Literal["online", "offline", "unknown"] | None = None
    type: str | None = Field(None, max_length=64, description="device type")
    q: str | None = Field(None, max_length=200, description="text in id, type, firmware, name, "
                          "location")
    sort: Literal["device_id", "device_type", "connection_status", "fw_version", "last_seen",
                  "created_at", "quality"] = Field(
        "device_id", description="`quality` ascending puts the worst meters first (unscored "
        "devices last)")
    order: Literal["asc", "desc"] = "asc"


class DeviceCreate(Strict):
    device_id: str = Field(pattern=DEVICE_ID)
    device_type: str = Field("unknown", pattern=LABEL)
    name: str | None = Field(None, max_length=200)
    location: str | None = Field(None, max_length=200)
    metadata: Metadata = Field(default_factory=dict, description="free JSON object")


class DevicePatch(Strict):
    """Only the members sent change; null clears a name or location."""

    name: str | None = Field(None, max_length=200)
    location: str | None = Field(None, max_length=200)
    metadata: Metadata = Field(default_factory=dict, description="replaces the whole object")


class DeviceCreated(Device):
    password: str | None = Field(None, description="the device's broker password, shown once "
                                 "(when broker credentials are managed)")


class DeviceQuality(Record):
    """The score and its parts. Counts decay with a one-hour half-life (so they are
    fractional and say how the device is doing lately)."""

    device_id: str
    score: float = Field(ge=0, le=100)
    received: float = Field(description="telemetry messages received")
    gaps: float = Field(description="messages missing (sequence gaps)")
    duplicates: float
    rejects: float = Field(description="messages rejected as invalid")
    counter_resets: float = Field(description="energy counters that went backwards or jumped")
    stuck_fields: int = Field(description="fields stuck at one value right now")
    clock_skew_ms: int = Field(description="typical |arrival - ts|")
    updated_at: int = Field(description="when it was scored, ms since the epoch")


class DeviceConfig(BaseModel):
    device_id: str
    values: dict[str, Any]


class ConfigReplace(Strict):
    values: dict[str, Any] = Field(description="the device's whole configuration: keys left "
                                   "out are removed")


class ConfigResult(DeviceConfig):
    command_id: str | None = Field(None, description="the set_config command pushed to the "
                                   "device, when it must apply a change")
    pushed: dict[str, Any] = Field(description="the keys and values sent to the device")
    reason: str | None = Field(None, description="why nothing was sent, when nothing was")


# --- telemetry ------------------------------------------------------------------------------


class TelemetryQuery(Strict):
    fields: str | None = Field(None, max_length=2000, description="comma-separated field "
                               "names; default every field")
    start: str | None = Field(None, max_length=40, description="ISO-8601 or ms since the epoch;"
                              " default an hour before end")
    end: str | None = Field(None, max_length=40, description="ISO-8601 or ms; default now")
    every: str | None = Field(None, max_length=20, description="downsample into buckets of "
                              "this width: 500ms, 10s, 1m, 1h, 1d; default raw points")
    agg: Literal["mean", "min", "max", "last"] = "mean"


class TelemetryPoint(BaseModel):
    ts: int
    values: dict[str, float | None]


class Telemetry(BaseModel):
    device_id: str
    start: int
    end: int
    every_ms: int | None = None
    agg: str | None = None
    fields: list[str]
    points: list[TelemetryPoint]


class LatestQuery(Strict):
    device: list[str] | None = Field(None, description="repeat for several; default all")


class LatestValues(BaseModel):
    device_id: str
    device_type: str
    ts: int
    values: dict[str, float]


class LatestList(BaseModel):
    items: list[LatestValues]


# --- archive --------------------------------------------------------------------------------


class RawQuery(Strict):
    category: Literal["telemetry", "hello", "status", "command_ack", "ota_status"] | None = None
    start: str | None = Field(None, max_length=40)
    end: str | None = Field(None, max_length=40)


class RejectedQuery(Strict):
    reason: str | None = Field(None, max_length=64)
    device: str | None = Field(None, max_length=64)
    start: str | None = Field(None, max_length=40)
    end: str | None = Field(None, max_length=40)


# --- alerts ---------------------------------------------------------------------------------


class Alert(Record):
    id: int
    device_id: str
    rule: str
    severity: str
    state: Literal["active", "acknowledged", "cleared"]
    value: float | None = None
    message: str
    raised_at: int
    acknowledged_at: int | None = None
    cleared_at: int | None = None
    updated_at: int


class AlertQuery(PageQuery):
    device: str | None = Field(None, max_length=64)
    rule: str | None = Field(None, max_length=64)
    severity: str | None = Field(None, max_length=32)
    state: Literal["active", "acknowledged", "cleared"] | None = None


class AlertPage(BaseModel):
    items: list[Alert]
    next_cursor: str | None = None


# --- commands -------------------------------------------------------------------------------


class Command(Record):
    id: str
    device_id: str
    name: str
    params: dict[str, Any]
    state: Literal["queued", "sent", "accepted", "done", "rejected", "failed", "timed_out"]
    created_at: int
    updated_at: int
    expires_at: int | None = None
    attempts: int = 0
    result: str | None = None
    detail: str | None = None
    sent_at: int | None = None
    created_by: str | None = None


class CommandCreate(Strict):
    name: str = Field(pattern=LABEL, description="ping, reboot, set_interval, set_config")
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(300.0, gt=0, le=30 * 24 * 3600, description="expiry")


class CommandSendQuery(Strict):
    wait: float | None = Field(None, ge=0, le=60, description="wait up to this many seconds "
                               "for the outcome")


class CommandQuery(PageQuery):
    device: str | None = Field(None, max_length=64)
    state: Literal["queued", "sent", "accepted", "done", "rejected", "failed",
                   "timed_out"] | None = None


class CommandPage(BaseModel):
    items: list[Command]
    next_cursor: str | None = None


# --- firmware and OTA -----------------------------------------------------------------------


class Firmware(BaseModel):
    version: str
    size: int
    sha256: str
    uploaded_at: int
    signature: str | None = Field(None, description="the image's Ed25519 signature (base64), "
                                  "carried in every offer")


SIGNATURE = r"^[A-Za-z0-9+/]{86}==$"  # 64 bytes of Ed25519 signature, base64


class FirmwareQuery(Strict):
    version: str | None = Field(None, pattern=LABEL, description="the image's version (raw "
                                "body uploads; multipart uploads send it as a form field)")
    signature: str | None = Field(None, pattern=SIGNATURE, description="the image's Ed25519 "
                                  "signature, base64, as `iotmeter ota sign` writes it "
                                  "(required when the server pins a signing key)")


class CampaignCreate(Strict):
    version: str = Field(pattern=LABEL)
    devices: list[str] | None = Field(None, min_length=1, max_length=100_000)
    type: str | None = Field(None, pattern=LABEL)
    all: bool = False
    batch_size: int | None = Field(None, ge=1, le=100_000)
    batch_pct: float | None = Field(None, gt=0, le=100)
    max_failures_pct: float = Field(20.0, ge=0, le=100)
    target_timeout_s: float = Field(900.0, gt=0, le=7 * 24 * 3600)


class Campaign(Record):
    id: str
    fw_version: str
    selector: str
    batch_size: int
    max_failures_pct: float
    state: str
    created_at: int
    updated_at: int
    detail: str | None = None
    target_timeout_s: float
    created_by: str | None = None


class OtaTarget(Record):
    device_id: str
    state: str
    progress_pct: float | None = None
    error: str | None = None
    attempts: int
    started_at: int | None = None
    updated_at: int


class CampaignDetail(Campaign):
    tally: dict[str, int]
    targets: list[OtaTarget]


class CampaignQuery(PageQuery):
    pass


class CampaignPage(BaseModel):
    items: list[Campaign]
    next_cursor: str | None = None


# --- statistics, audit, health --------------------------------------------------------------


class StoreHealth(BaseModel):
    name: str
    ok: bool
    detail: str


class Stats(BaseModel):
    devices_total: int
    devices_by_status: dict[str, int]
    devices_by_type: dict[str, int]
    telemetry_points_last_minute: int
    telemetry_points_per_s: float
    open_alerts_by_severity: dict[str, int]
    stores: list[StoreHealth]


class AuditEntry(Record):
    id: int
    at: int
    actor: str
    role: str
    action: str
    target: str | None = None
    result: str
    request_id: str | None = None
    detail: dict[str, Any] | None = None


class AuditQuery(PageQuery):
    actor: str | None = Field(None, max_length=200)
    action: str | None = Field(None, max_length=100)


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None = None


class Health(BaseModel):
    status: str
    stores: list[StoreHealth] | None = None
