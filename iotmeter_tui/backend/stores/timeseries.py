"""Time-series port: where telemetry points go and how the dashboard reads them back.

Adapters: `timeseries_influx.InfluxTimeSeries` (InfluxDB v1-compatible HTTP API) and
`timeseries_sqlite.SqliteTimeSeries`. Both pass the same contract suite
(tests/stores/test_timeseries_contract.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import msgspec

from iotmeter_tui.backend.protocol import (
    MAX_COUNT,
    MAX_TS_MS,
    field_name_problem,
    tag_problem,
)

if TYPE_CHECKING:  # rollup_fold imports this module's Point
    from iotmeter_tui.backend.stores.rollup_fold import RollupBatch

MEASUREMENT = "iot_telemetry"
DEFAULT_DATABASE = "iot-metrics"
AGGREGATES = ("mean", "min", "max", "last")


class Point(msgspec.Struct, frozen=True, gc=False):
    """One telemetry message as stored: tags device_id/device_type, fields, boot/seq. Field
    values are numbers; every adapter stores them as floats (750 becomes 750.0), so a field
    never meets a type conflict.

    (device_id, ts) identifies a point: writing the same point again overwrites it, which is
    what makes a redelivered batch harmless.

    A msgspec Struct, not a frozen dataclass: the sinks build one per message, and a frozen
    dataclass's __init__ cost ten times as much. Not tracked by the garbage collector (it
    holds no object that could lead back to it)."""

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
        """Store a batch. Raises StoreUnavailable (retry) or StoreRejected. Points no adapter
        can hold (see point_problem) or the store refused are listed in a PartialWriteError,
        raised after the rest are stored."""

    def roll_up(self, batch: RollupBatch, *, sole_writer: bool = False) -> None:
        """Bring the 1-minute and 1-hour rollup buckets the batch's stored points fall in up
        to date, as if each were recomputed from the level below as stored now (raw points,
        then 1-minute rows): a late point lands in its old bucket (backfill) and calling it
        again changes nothing. `sole_writer`: the caller is the only process rolling this
        store up, so an adapter may fold new points into the rows it wrote last instead of
        recomputing them (InfluxDB does: rollup_fold.py). The collector's rollup sink calls
        it after the points are stored, off the write path; a no-op with rollups off.
        Raises StoreUnavailable (retry) or StoreRejected."""

    def latest(self, device_ids: Iterable[str] | None = None) -> dict[str, Latest]:
        """Last values of every device (or the given ones) that has any point: each
        telemetry field's last value (boot and seq are not among them), the newest point's
        time and device_type."""

    def history(
        self,
        device_id: str,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        max_points: int = 500,
        *,
        aggregates: Sequence[str] = AGGREGATES,
    ) -> list[Bucket]:
        """[start_ms, end_ms) downsampled into at most `max_points` equal buckets
        (GROUP BY time), each with the requested `aggregates` (of AGGREGATES) per field and
        only those: each costs a pass over the range, so a chart asks for what it draws.
        Empty buckets are left out. Buckets start at start_ms + k * bucket_width(...).
        Raises ValueError on a field name that breaks protocol.FIELD_NAME_PATTERN or an
        aggregate not in AGGREGATES."""

    def counts(self, start_ms: int | None = None, end_ms: int | None = None) -> dict[str, int]:
        """Number of points per device in the range (all time when unset)."""

    def points(
        self, device_id: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[Point]:
        """Every stored point of one device in time order (audits and tests). A point without
        boot and seq (another writer's, or one half-visible while it is written) is left out."""

    def apply_retention(self, now_ms: int | None = None) -> dict[str, int]:
        """Delete what is older than each resolution keeps (rollups.Retention): rows deleted
        per level ("raw", "1m", "1h"). Slow on a big backlog: run it off the hot path."""

    def check(self) -> None:
        """Raise StoreError when the store cannot be reached or used."""

    def close(self) -> None: ...


# --- rules both adapters share: what a storable point is, how history is bucketed ----------
# Field names, tag values, counts and times follow the protocol's rules (protocol.py), so
# what the collector accepts is what every adapter can hold.


def check_field_names(names: Iterable[str]) -> list[str]:
    """`names` without repeats, in order; raises ValueError on one no adapter can store, so a
    name never reaches a query unvalidated."""
    unique = list(dict.fromkeys(names))
    for name in unique:
        problem = field_name_problem(name)
        if problem is not None:
            raise ValueError(problem)
    return unique


def check_aggregates(aggregates: Iterable[str]) -> tuple[str, ...]:
    """The requested aggregates without repeats, in AGGREGATES order; raises ValueError on
    one that is not in AGGREGATES."""
    if isinstance(aggregates, str):  # "mean" would otherwise read as "m", "e", "a", "n"
        raise ValueError(f"aggregates must be a sequence of names, not {aggregates!r}")
    wanted = list(aggregates)
    unknown = [a for a in wanted if a not in AGGREGATES]
    if unknown:
        raise ValueError(f"unknown aggregate(s) {unknown!r}; choose from {AGGREGATES}")
    return tuple(a for a in AGGREGATES if a in wanted)


# Tag values and field names already found good: a fleet repeats the same few thousand, and
# point_problem runs for every point written. Bounded, so odd input cannot grow them forever.
_GOOD_TAGS: set[str] = set()
_GOOD_NAMES: set[str] = set()
_GOOD_LIMIT = 100_000


def point_problem(point: Point) -> str | None:
    """Why a point cannot be stored (by any adapter), or None when it can."""
    for tag, text in (("device_id", point.device_id), ("device_type", point.device_type)):
        if text not in _GOOD_TAGS:
            problem = tag_problem(tag, text)
            if problem is not None:
                return problem
            _remember(_GOOD_TAGS, text)
    if type(point.ts) is not int or not 0 <= point.ts <= MAX_TS_MS:
        return f"ts {point.ts!r} is not an integer in 0..{MAX_TS_MS} ms"
    for name, count in (("boot", point.boot), ("seq", point.seq)):
        if type(count) is not int or not 0 <= count <= MAX_COUNT:
            return f"{name} {count!r} is not a non-negative 64-bit integer"
    fields = point.fields
    if not _GOOD_NAMES.issuperset(fields):  # one C call for the usual, known names
        for name in fields:
            if name not in _GOOD_NAMES:
                problem = field_name_problem(name)
                if problem is not None:
                    return problem
                _remember(_GOOD_NAMES, name)
    for name, value in fields.items():
        kind = type(value)  # exact: bool is an int subclass, but True is no measurement
        # x - x is 0.0 for every finite float and nan for inf and nan.
        if not ((kind is float and value - value == 0.0) or kind is int):
            return f"field {name!r} = {value!r} is not a finite number"
    return None


def _remember(good: set[str], text: str) -> None:
    if len(good) >= _GOOD_LIMIT:
        good.clear()
    good.add(text)


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
