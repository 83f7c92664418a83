"""Time-series port: where telemetry points go and how the dashboard reads them back.

Adapters: `timeseries_influx.InfluxTimeSeries` (InfluxDB v1-compatible HTTP API) and
`timeseries_sqlite.SqliteTimeSeries`. Both pass the same contract suite
(tests/stores/test_timeseries_contract.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from iotmeter_tui.backend.errors import StoreRejected

MEASUREMENT = "iot_telemetry"
DEFAULT_DATABASE = "iot-metrics"
AGGREGATES = ("mean", "min", "max", "last")


@dataclass(frozen=True, slots=True)
class Point:
    """One telemetry message as stored: tags device_id/device_type, float fields, boot/seq.

    (device_id, ts) identifies a point: writing the same point again overwrites it, which is
    what makes a redelivered batch harmless."""

    device_id: str
    device_type: str
    ts: int  # device clock, ms since the epoch (UTC)
    boot: int
    seq: int
    fields: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Latest:
    """A device's most recent values (each field's last value) and when they were measured."""

    device_id: str
    device_type: str
    ts: int
    fields: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Bucket:
    """One downsampled interval starting at `ts`: per field, per aggregate, a value."""

    ts: int
    values: Mapping[str, Mapping[str, float]]  # field -> {"mean": .., "min": .., ...}


class TimeSeriesStore(Protocol):
    def write(self, points: Sequence[Point]) -> None:
        """Store a batch. Raises StoreUnavailable (retry) or StoreRejected/PartialWriteError."""

    def latest(self, device_ids: Iterable[str] | None = None) -> dict[str, Latest]:
        """Last values of every device (or the given ones) that has any point."""

    def history(
        self,
        device_id: str,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        max_points: int = 500,
    ) -> list[Bucket]:
        """[start_ms, end_ms) downsampled into at most `max_points` equal buckets
        (GROUP BY time), each with mean/min/max/last per field; empty buckets left out."""

    def counts(self, start_ms: int | None = None, end_ms: int | None = None) -> dict[str, int]:
        """Number of points per device in the range (all time when unset)."""

    def points(
        self, device_id: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[Point]:
        """Every stored point of one device in time order (audits and tests)."""

    def check(self) -> None:
        """Raise StoreError when the store cannot be reached or used."""

    def close(self) -> None: ...


# --- rules both adapters share: what a storable point is, how history is bucketed ----------

# Field names that are safe as an InfluxQL double-quoted identifier (no quote, no backslash,
# no control character) and in line protocol once commas, spaces and '=' are escaped.
FIELD_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_ .,=:/%+-]{0,127}"
_FIELD_NAME_RE = re.compile(FIELD_NAME_PATTERN)
# Names taken by the point itself: InfluxDB's time column, our integer fields and the tags.
RESERVED_NAMES = frozenset({"time", "boot", "seq", "device_id", "device_type"})
# Tag values: a backslash has no escape that InfluxDB 1.x, 2.x and 3.x read alike, and line
# protocol cannot carry a line break at all.
_BAD_TAG_CHAR_RE = re.compile(r"[\\\x00-\x1f\x7f]")
MAX_TAG_LENGTH = 256
INT64_MAX = 2**63 - 1
# The last millisecond whose nanosecond timestamp InfluxDB can hold (year 2262).
MAX_TS_MS = 9_223_372_036_853


def field_name_problem(name: object) -> str | None:
    """Why `name` cannot be a field name, or None when it can."""
    if type(name) is not str or not _FIELD_NAME_RE.fullmatch(name):
        return f"field name {name!r} does not match {FIELD_NAME_PATTERN}"
    if name in RESERVED_NAMES:
        return f"field name {name!r} is reserved"
    return None


def check_field_names(names: Iterable[str]) -> list[str]:
    """`names` without repeats, in order; raises ValueError on one no adapter can store, so a
    name never reaches a query unvalidated."""
    unique = list(dict.fromkeys(names))
    for name in unique:
        problem = field_name_problem(name)
        if problem is not None:
            raise ValueError(problem)
    return unique


def point_problem(point: Point) -> str | None:
    """Why a point cannot be stored (by any adapter), or None when it can."""
    for tag, text in (("device_id", point.device_id), ("device_type", point.device_type)):
        if type(text) is not str or not text or len(text) > MAX_TAG_LENGTH:
            return f"{tag} {text!r} must be a non-empty string of at most {MAX_TAG_LENGTH}"
        if _BAD_TAG_CHAR_RE.search(text):
            return f"{tag} {text!r} contains a backslash or a control character"
    if type(point.ts) is not int or not 0 <= point.ts <= MAX_TS_MS:
        return f"ts {point.ts!r} is not an integer in 0..{MAX_TS_MS} ms"
    for name, count in (("boot", point.boot), ("seq", point.seq)):
        if type(count) is not int or not 0 <= count <= INT64_MAX:
            return f"{name} {count!r} is not a non-negative 64-bit integer"
    for name, value in point.fields.items():
        problem = field_name_problem(name)
        if problem is not None:
            return problem
        # bool is an int subclass, but True is no measurement.
        if type(value) not in (float, int) or not math.isfinite(value):
            return f"field {name!r} = {value!r} is not a finite number"
    return None


def clamp_range(start_ms: int | None, end_ms: int | None) -> tuple[int, int]:
    """A query range [start, end) within what a point can hold; unset means unbounded."""
    start = 0 if start_ms is None else max(0, int(start_ms))
    end = MAX_TS_MS + 1 if end_ms is None else min(MAX_TS_MS + 1, int(end_ms))
    return start, end


def bucket_width(start_ms: int, end_ms: int, max_points: int) -> int:
    """Width in ms of history buckets: the smallest that fits [start_ms, end_ms) into at most
    `max_points` buckets starting at start_ms."""
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, not {max_points}")
    return max(1, -(-(end_ms - start_ms) // max_points))


def open_timeseries(url: str, token: str | None = None) -> TimeSeriesStore:
    """The adapter for a time-series URL: influxdb://host:port/db (influxdbs:// for TLS; the
    token as in InfluxTimeSeries) or sqlite:///path. Nothing is contacted here: the database
    is prepared on first use. Raises StoreRejected on a URL no adapter serves."""
    # Imported here because both adapters import this module (the port and its rules).
    from iotmeter_tui.backend.stores.metadata_sqlite import sqlite_path
    from iotmeter_tui.backend.stores.timeseries_influx import InfluxTimeSeries
    from iotmeter_tui.backend.stores.timeseries_sqlite import SqliteTimeSeries

    scheme = urlsplit(url).scheme
    if scheme in ("influxdb", "influxdbs"):
        return InfluxTimeSeries(url, token)
    if scheme == "sqlite":
        try:
            return SqliteTimeSeries(sqlite_path(url))
        except ValueError as exc:
            raise StoreRejected("timeseries", str(exc)) from None
    raise StoreRejected(
        "timeseries", f"unsupported time-series URL scheme in {url!r}; use influxdb:// or sqlite://"
    )
