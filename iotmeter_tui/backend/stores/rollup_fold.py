"""Rollup rows folded from the points as they arrive, for a rollup writer that is the only one
(one collector process): the InfluxDB adapter's way of keeping rollups without asking the
server to aggregate every minute of the fleet again (stores/timeseries_influx.py).

Each row is, per field, [min, max, sum, count, last, lt], lt being the ts of `last`. A
bucket's new points are folded into its row only when all of them are newer than everything
the row holds (each ts above every field's lt) and came in order (no two at one ts): then
none of them can be in the row already. Anything else -- a point delivered again, a batch
rolled up a second time after a crash, a late point older than the row's newest, a point
that replaces one at the same ts -- sends the bucket back to the store to be recomputed from
the level below, which is exact whatever was folded before. A meter reporting in order
never takes that path.

The rows of the newest few buckets are kept in memory as they were written, so the common
batch reads only the rows of a bucket new to it; any other row is read from the store once
(the caller does that: `unknown()` then `learn()`).
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from iotmeter_tui.backend.stores.rollups import MINUTE_MS, Resolution
from iotmeter_tui.backend.stores.timeseries import Point, point_problem

Acc = list[float]  # [min, max, sum, count, last, lt]
Row = dict[str, Acc]  # field name -> its Acc
Key = tuple[str, int]  # (device_id, bucket start ms)

# Buckets kept in memory either side of the current one: the previous bucket still takes
# the points that arrive just after it closes. A bucket further out (a late point, a meter
# whose clock is far off) is read from the store when it is touched.
KEEP_BUCKETS: Final = 1
# Distinct field layouts shared by packed rows before the table starts again.
MAX_LAYOUTS: Final = 10_000


@dataclass(slots=True)
class Delta:
    """What a batch adds to one bucket: its points' fields folded, the earliest and the
    newest ts among them, and whether each came later than the one before (so no two share
    a ts)."""

    first: int
    newest: int
    row: Row
    ordered: bool


class RollupBatch:
    """The points a rollup batch holds, folded per (device_id, minute) as they are added
    rather than kept: a minute of a 5,000-meter fleet is 300,000 points, hundreds of MiB as
    objects, and a few MiB folded. Points no store could hold (timeseries.point_problem) are
    left out, as the time-series write refused them."""

    __slots__ = ("minutes", "names", "points")

    def __init__(self) -> None:
        self.minutes: dict[Key, Delta] = {}
        self.names: dict[str, None] = {}  # every field seen, in order: an ordered set
        self.points = 0

    @classmethod
    def of(cls, points: Iterable[Point]) -> RollupBatch:
        batch = cls()
        for point in points:
            batch.add(point)
        return batch

    def __len__(self) -> int:
        return self.points

    def add(self, point: Point) -> None:
        if point_problem(point) is not None:
            return
        ts = point.ts
        key = (point.device_id, ts - ts % MINUTE_MS)
        delta = self.minutes.get(key)
        if delta is None:
            delta = self.minutes[key] = Delta(ts, ts, {}, True)
        elif ts > delta.newest:
            delta.newest = ts
        else:
            delta.ordered = False
            if ts < delta.first:
                delta.first = ts
        row = delta.row
        stamp = float(ts)
        for name, value in point.fields.items():
            v = float(value)  # an int or a finite float: point_problem made sure
            acc = row.get(name)
            if acc is None:
                row[name] = [v, v, v, 1.0, v, stamp]
                if name not in self.names:
                    self.names[name] = None
                continue
            if v < acc[0]:
                acc[0] = v
            elif v > acc[1]:
                acc[1] = v
            acc[2] += v
            acc[3] += 1.0
            if stamp >= acc[5]:
                acc[4], acc[5] = v, stamp
        self.points += 1


class PackedRow(Mapping[str, Sequence[float]]):
    """A rollup row held compactly: the six numbers of every field in one array of doubles,
    behind a layout (field -> offset) shared by all rows with the same fields. As a dict of
    lists a DC meter's row took about 3.6 KiB; packed, about 0.7 KiB, and a 5,000-meter fleet
    keeps 15,000 to 25,000 rows in memory."""

    __slots__ = ("layout", "numbers")

    def __init__(self, fields: Mapping[str, Sequence[float]] | None = None) -> None:
        self.layout: dict[str, int] = _layout(tuple(fields or ()))
        self.numbers = array("d")
        for acc in (fields or {}).values():
            self.numbers.extend(acc)

    def __getitem__(self, name: str) -> Sequence[float]:
        at = self.layout[name]
        return self.numbers[at : at + 6]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layout)

    def __len__(self) -> int:
        return len(self.layout)

    def newest(self) -> float:
        """The newest ts the row holds, of any field."""
        return max(self.numbers[5::6], default=-math.inf)

    def fold(self, name: str, acc: Sequence[float]) -> None:
        """Fold one [min, max, sum, count, last, lt] into a field's packed numbers."""
        at = self.layout.get(name)
        if at is None:
            self._append(name, acc)
            return
        v = self.numbers
        if acc[0] < v[at]:
            v[at] = acc[0]
        if acc[1] > v[at + 1]:
            v[at + 1] = acc[1]
        v[at + 2] += acc[2]
        v[at + 3] += acc[3]
        if acc[5] >= v[at + 5]:
            v[at + 4] = acc[4]
            v[at + 5] = acc[5]

    def put(self, name: str, acc: Sequence[float]) -> None:
        """A field's numbers replaced (a bucket recomputed by the store)."""
        at = self.layout.get(name)
        if at is None:
            self._append(name, acc)
        else:
            self.numbers[at : at + 6] = array("d", acc)

    def _append(self, name: str, acc: Sequence[float]) -> None:
        self.layout = _layout((*self.layout, name))
        self.numbers.extend(acc)


_LAYOUTS: dict[tuple[str, ...], dict[str, int]] = {}


def _layout(names: tuple[str, ...]) -> dict[str, int]:
    """The shared layout of rows with these fields, in this order."""
    layout = _LAYOUTS.get(names)
    if layout is None:
        if len(_LAYOUTS) >= MAX_LAYOUTS:  # field names are chosen by devices
            _LAYOUTS.clear()
        layout = _LAYOUTS[names] = {name: 6 * i for i, name in enumerate(names)}
    return layout


class FoldedRows:
    """One rollup level's rows as this writer last wrote them, for the buckets around now."""

    def __init__(self, level: Resolution, keep_buckets: int = KEEP_BUCKETS) -> None:
        self.level = level
        self.keep_buckets = keep_buckets
        self.rows: dict[Key, PackedRow] = {}
        self._newest = -(1 << 62)  # the newest bucket written, as far as it is believed
        self._window: tuple[int, int] | None = None  # bucket starts kept, as last trimmed

    def unknown(self, keys: Iterable[Key]) -> list[Key]:
        """The keys whose row is not in memory: the caller reads them from the store."""
        rows = self.rows
        return [key for key in keys if key not in rows]

    def learn(self, rows: Mapping[Key, Mapping[str, Sequence[float]]]) -> None:
        """Rows as the store holds them (an empty row: the store has none)."""
        self.rows.update((key, PackedRow(row)) for key, row in rows.items())

    def fold(self, deltas: dict[Key, Delta], names: Iterable[str]) -> tuple[
            dict[Key, PackedRow], set[Key]]:
        """Fold the batch's minutes (fields of `names`) into the rows of this level's buckets
        that hold them, in place: (the rows folded, keys to recompute from the level below).
        A bucket's minutes are folded one after another, each only if newer than the row
        as it stands; a bucket any of them cannot go into is recomputed whole. Every key
        must be known (keys(), unknown() and learn()). The rows in memory change here: if
        writing them fails, forget() them."""
        wanted = set(names)
        width = self.level.width_ms
        folded: dict[Key, PackedRow] = {}
        redo: set[Key] = set()
        rows = self.rows
        for (device_id, minute), delta in deltas.items():
            key = (device_id, minute - minute % width)
            if key in redo:
                continue
            row = rows[key]
            if not delta.ordered or row.newest() >= delta.first:
                redo.add(key)
                folded.pop(key, None)
                continue
            for name, acc in delta.row.items():
                if name in wanted:
                    row.fold(name, acc)
            folded[key] = row
        return folded, redo

    def keys(self, deltas: Iterable[Key]) -> set[Key]:
        """This level's buckets that the batch's minutes fall in."""
        width = self.level.width_ms
        return {(device_id, minute - minute % width) for device_id, minute in deltas}

    def forget(self, keys: Iterable[Key]) -> None:
        """Rows whose write failed: the store holds whichever version it took, so they are
        read again before the next fold."""
        for key in keys:
            self.rows.pop(key, None)

    def keep(self, rows: dict[Key, PackedRow], now_ms: int | None = None) -> None:
        """Rows the store now holds as written (folded or recomputed). Kept in memory: the
        buckets around the newest one written, counting none past the wall clock's next
        bucket (a meter whose clock runs years ahead must not move the window); the rest
        are let go and read again if ever touched."""
        self.rows.update(rows)
        width = self.level.width_ms
        now = int(time.time() * 1000) if now_ms is None else now_ms
        ceiling = now - now % width + self.keep_buckets * width
        self._newest = max(self._newest, max(
            (bucket for _, bucket in rows if bucket <= ceiling), default=self._newest))
        reach = self.keep_buckets * width
        window = (self._newest - reach, self._newest + reach)
        if window != self._window or any(
                not window[0] <= bucket <= window[1] for _, bucket in rows):
            self.rows = {key: row for key, row in self.rows.items()
                         if window[0] <= key[1] <= window[1]}
            self._window = window

