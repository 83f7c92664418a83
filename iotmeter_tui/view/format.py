"""Short, fixed-width renderings of the values the screens show, and the role (colour) that
goes with each state. Pure functions: the snapshot tests depend on them being deterministic."""

from __future__ import annotations

import time
from collections.abc import Mapping

# State -> table role. Everything not listed renders plain.
STATE_ROLES: Mapping[str, str] = {
    "online": "ok",
    "offline": "error",
    "unknown": "muted",
    "active": "error",
    "acknowledged": "warn",
    "cleared": "muted",
    "queued": "muted",
    "sent": "accent",
    "accepted": "accent",
    "done": "ok",
    "rejected": "error",
    "failed": "error",
    "timed_out": "error",
    "pending": "muted",
    "offered": "accent",
    "downloading": "accent",
    "verifying": "accent",
    "installing": "accent",
    "rebooting": "accent",
    "confirming": "accent",
    "skipped": "muted",
    "running": "accent",
    "aborting": "warn",
    "completed": "ok",
    "aborted": "error",
    "cancelled": "muted",
    "critical": "error",
    "major": "error",
    "warning": "warn",
    "minor": "warn",
    "info": "muted",
}

STATUS_DOTS: Mapping[str, str] = {"online": "●", "offline": "○", "unknown": "?"}

TYPE_SHORT: Mapping[str, str] = {"power_meter_dc": "DC", "power_meter_ac": "AC"}

# Per meter type, the telemetry fields behind the V / A / kW columns and charts.
KEY_FIELDS: Mapping[str, tuple[str, str, str]] = {
    "power_meter_dc": ("voltage_v", "current_a", "power_kw"),
    "power_meter_ac": ("voltage_v", "current_a", "active_power_kw"),
}
DEFAULT_KEY_FIELDS = ("voltage_v", "current_a", "power_kw")


# Data-quality scores below these colour red / yellow (docs/dashboard.md).
QUALITY_BAD = 80.0
QUALITY_FAIR = 95.0


def role_of(state: str | None) -> str:
    return STATE_ROLES.get(state or "", "")


def key_fields(device_type: str | None,
               present: Mapping[str, float] | None = None) -> tuple[str, str, str]:
    """The V / A / kW fields of a meter type. A meter not yet typed (no hello seen) still
    shows its power: whichever type's power field its telemetry carries."""
    fields = KEY_FIELDS.get(device_type or "")
    if fields is not None:
        return fields
    if present is not None and "active_power_kw" in present and "power_kw" not in present:
        return KEY_FIELDS["power_meter_ac"]
    return DEFAULT_KEY_FIELDS


def short_type(device_type: str | None) -> str:
    if not device_type or device_type == "unknown":
        return "?"
    return TYPE_SHORT.get(device_type, device_type)


def ago(ts_ms: int | None, now_ms: int) -> str:
    """'3s', '12m', '5h', '2d' since `ts_ms`; '—' when never."""
    if ts_ms is None:
        return "—"
    seconds = max(0, (now_ms - ts_ms) // 1000)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86_400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86_400}d"


def clock(ts_ms: int | None) -> str:
    """HH:MM:SS in UTC (the stores' clock): an operator comparing two screens, or a screen
    with a log, needs one time zone."""
    if ts_ms is None:
        return "—"
    return time.strftime("%H:%M:%S", time.gmtime(ts_ms / 1000))


def stamp(ts_ms: int | None) -> str:
    """MM-DD HH:MM:SS in UTC."""
    if ts_ms is None:
        return "—"
    return time.strftime("%m-%d %H:%M:%S", time.gmtime(ts_ms / 1000))


def num(value: float | None) -> str:
    """A measurement in at most 7 cells: 748.2, -1210.5, 25.0k."""
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if magnitude >= 10_000:
        return f"{value / 1000:.1f}k"
    if magnitude >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}"


def count(value: float | int | None) -> str:
    """A counter with thousands separators."""
    if value is None:
        return "—"
    return f"{int(value):,}"


def rate(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 10_000:
        return f"{value / 1000:.1f}k/s"
    return f"{value:,.0f}/s"


def size(value: float | int | None) -> str:
    """Bytes as B, KiB, MiB, GiB."""
    if value is None:
        return "—"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


def quality_cell(score: float | None) -> tuple[str, str]:
    """A data-quality score as a cell: whole points, coloured where it costs data."""
    if score is None:
        return "·", "muted"  # not scored yet: no telemetry since the collector started
    role = "error" if score < QUALITY_BAD else "warn" if score < QUALITY_FAIR else ""
    return f"{score:.0f}", role


def one_line(text: str | None, limit: int = 200) -> str:
    """Error text on one line: a status line must stay one line."""
    if not text:
        return ""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
