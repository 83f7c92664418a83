"""Rollups and retention rules both time-series adapters share: which resolutions exist, which
one a history query can read exactly, which buckets a batch touches, how long each is kept.

A rollup row holds, per device, field and bucket: min, max, sum, count and last (with the ts
of the last). Sum and count (not a mean) let a coarser rollup and a chart bucket be folded
from finer rows exactly. A batch's new points are folded into their buckets (a late point
into its old bucket); a bucket holding a point that was stored before is recomputed from the
level below (1 min from raw points, 1 h from 1 min rows), so a redelivered point counts once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000


@dataclass(frozen=True, slots=True)
class Resolution:
    name: str  # "1m" or "1h": table/measurement/retention-policy suffix
    width_ms: int


ONE_MINUTE: Final = Resolution("1m", MINUTE_MS)
ONE_HOUR: Final = Resolution("1h", HOUR_MS)
# Finest first: each is folded from the one before it (raw points for the first).
RESOLUTIONS: Final = (ONE_MINUTE, ONE_HOUR)

_DURATION_RE: Final = re.compile(r"(\d+)([hdw])")
_UNIT_MS: Final = {"h": HOUR_MS, "d": 24 * HOUR_MS, "w": 7 * 24 * HOUR_MS}


def parse_retention(text: str) -> int | None:
    """`30d`, `12h`, `52w` -> milliseconds; `inf` -> None (kept for ever). At least 1 h:
    InfluxDB keeps nothing shorter, and a shorter raw retention would cut into the newest
    hour's rollups."""
    value = text.strip().lower()
    if value in ("inf", "infinite", "forever"):
        return None
    found = _DURATION_RE.fullmatch(value)
    if found is None:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 52w or inf")
    ms = int(found.group(1)) * _UNIT_MS[found.group(2)]
    if ms < HOUR_MS:
        raise ValueError(f"{text!r} is shorter than the 1h minimum")
    return ms


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each resolution is kept, in ms; None: for ever (the default: nothing is
    deleted unless the operator says so)."""

    raw_ms: int | None = None
    minute_ms: int | None = None
    hour_ms: int | None = None

    def of(self, resolution: Resolution | None) -> int | None:
        if resolution is None:
            return self.raw_ms
        return self.minute_ms if resolution is ONE_MINUTE else self.hour_ms

    def recompute_floor(self, resolution: Resolution, now_ms: int) -> int:
        """Oldest bucket start of `resolution` that may still be recomputed where the store
        deletes continuously (InfluxDB): older, the level below may be partly gone, and a
        recompute would replace a whole rollup by one of the few rows left."""
        below = self.raw_ms if resolution is ONE_MINUTE else self.minute_ms
        if below is None:
            return 0
        return now_ms - below + resolution.width_ms


def readable_resolution(start_ms: int, end_ms: int, width_ms: int) -> Resolution | None:
    """The coarsest rollup a history query can be answered from exactly: its buckets must be
    whole rollup buckets (start, end and width multiples of the resolution). None: read raw."""
    for resolution in reversed(RESOLUTIONS):
        r = resolution.width_ms
        if width_ms >= r and not (width_ms % r or start_ms % r or end_ms % r):
            return resolution
    return None


def aligned_range(start_ms: int, end_ms: int, max_points: int) -> tuple[int, int]:
    """A range covering [start_ms, end_ms) whose history buckets (see bucket_width) are whole
    1 h or 1 min rollup buckets when they are at least that wide, so a chart of days or
    weeks reads rollups instead of every raw point. Shorter ranges come back unchanged. The
    end may move past end_ms (to start + max_points * width): those buckets are empty."""
    if max_points < 1 or end_ms <= start_ms:
        return start_ms, end_ms
    for resolution in reversed(RESOLUTIONS):
        r = resolution.width_ms
        if -(-(end_ms - start_ms) // max_points) < r:
            continue
        start = start_ms - start_ms % r
        width = -(-(end_ms - start) // max_points)
        width += -width % r
        return start, start + max_points * width
    return start_ms, end_ms


def touched_buckets(
    keys: Iterable[tuple[str, int]], width_ms: int, floor_ms: int = 0
) -> dict[str, list[int]]:
    """(device_id, ts) pairs -> per device the sorted bucket starts they fall in, leaving out
    buckets older than floor_ms."""
    seen = {(d, ts - ts % width_ms) for d, ts in keys}
    per_device: dict[str, list[int]] = {}
    for device_id, bucket in seen:
        if bucket >= floor_ms:
            per_device.setdefault(device_id, []).append(bucket)
    for buckets in per_device.values():
        buckets.sort()
    return per_device


def bucket_runs(buckets: Sequence[int], width_ms: int) -> list[tuple[int, int]]:
    """Sorted bucket starts -> [start, end) ranges of consecutive buckets."""
    runs: list[tuple[int, int]] = []
    for bucket in buckets:
        if runs and runs[-1][1] == bucket:
            runs[-1] = (runs[-1][0], bucket + width_ms)
        elif runs and runs[-1][1] > bucket:
            continue
        else:
            runs.append((bucket, bucket + width_ms))
    return runs
