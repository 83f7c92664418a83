"""A data-quality score per device, from what the registry sink sees anyway: messages received,
sequence gaps, duplicates, rejections, clock skew between `ts` and arrival, and the anomaly
detector's counter resets and stuck fields. Pure; the sink stores `drain()` per batch.

Counts decay with a one-hour half-life, so the score says how the device is doing now, not
since the collector started, and one bad minute fades within a few hours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from iotmeter_tui.backend.collector.spool import ACCEPTED, DUPLICATE, REJECTED, SpoolRecord
from iotmeter_tui.backend.stores.metadata import DeviceQuality

HALF_LIFE_MS: Final = 3_600_000
SKEW_ALPHA: Final = 0.05  # EW mean of |arrival - ts|, per message
SKEW_WARN_MS: Final = 5_000  # a device clock this far off loses points
SKEW_BAD_MS: Final = 60_000


def quality_score(received: float, gaps: float, duplicates: float, rejects: float,
                  counter_resets: float, stuck_fields: int, clock_skew_ms: float) -> float:
    """100 x the share of messages that arrived intact and once, less fixed deductions for
    what makes the data wrong rather than missing. Documented in docs/alerts.md."""
    expected = received + gaps
    delivered = 1.0 if expected <= 0 else received / expected
    unique = 1.0 if received + duplicates <= 0 else received / (received + duplicates)
    valid = 1.0 if received + rejects <= 0 else received / (received + rejects)
    score = 100.0 * delivered * unique * valid
    score -= min(30.0, 15.0 * counter_resets)  # an energy register that went wrong
    score -= min(30.0, 10.0 * stuck_fields)
    if clock_skew_ms >= SKEW_BAD_MS:
        score -= 20.0
    elif clock_skew_ms >= SKEW_WARN_MS:
        score -= 10.0
    return round(max(0.0, min(100.0, score)), 1)


class _Counts:
    __slots__ = ("at", "counter_resets", "duplicates", "gap_level", "gaps", "received",
                 "rejects", "skew")

    def __init__(self, at: int) -> None:
        self.at = at
        self.received = self.gaps = self.duplicates = self.rejects = 0.0
        self.counter_resets = 0.0
        self.skew = -1.0  # no telemetry yet: the first reading sets it
        self.gap_level: int | None = None

    def decay(self, now: int) -> None:
        if now > self.at:
            factor = math.exp2(-(now - self.at) / HALF_LIFE_MS)
            self.received *= factor
            self.gaps *= factor
            self.duplicates *= factor
            self.rejects *= factor
            self.counter_resets *= factor
            self.at = now


class QualityTracker:
    """Per-device counts between registry batches; `drain()` scores the devices that changed."""

    def __init__(self) -> None:
        self._devices: dict[str, _Counts] = {}
        self._changed: set[str] = set()

    def _get(self, device_id: str, at: int) -> _Counts:
        counts = self._devices.get(device_id)
        if counts is None:
            counts = self._devices[device_id] = _Counts(at)
        counts.decay(at)
        self._changed.add(device_id)
        return counts

    def observe(self, r: SpoolRecord) -> None:
        """One record of a registry batch, whatever its kind (each seen once)."""
        if not r.device_id:
            return  # a rejection that named no usable device
        if r.kind == ACCEPTED:
            if r.msg_type == "telemetry":
                self.received(r.device_id, r.ts, r.received_ms)
        elif r.kind == DUPLICATE:
            self.duplicate(r.device_id, r.received_ms)
        elif r.kind == REJECTED:
            self.rejected(r.device_id, r.received_ms)

    def observe_all(self, records: Iterable[SpoolRecord]) -> None:
        """observe() for each record of a batch. A telemetry record, nearly every one, is
        counted here without the calls (_get and received, written out)."""
        devices, changed = self._devices, self._changed
        for r in records:
            device_id = r.device_id
            if r.kind != ACCEPTED or r.msg_type != "telemetry" or not device_id:
                self.observe(r)
                continue
            at = r.received_ms
            counts = devices.get(device_id)
            if counts is None:
                counts = devices[device_id] = _Counts(at)
            elif at > counts.at:
                counts.decay(at)
            changed.add(device_id)
            counts.received += 1
            skew, mean = abs(at - r.ts), counts.skew
            counts.skew = skew if mean < 0 else mean + SKEW_ALPHA * (skew - mean)

    def received(self, device_id: str, ts_ms: int, received_ms: int) -> None:
        counts = self._get(device_id, received_ms)
        counts.received += 1
        skew = abs(received_ms - ts_ms)
        counts.skew = skew if counts.skew < 0 else counts.skew + SKEW_ALPHA * (skew - counts.skew)

    def duplicate(self, device_id: str, at: int) -> None:
        self._get(device_id, at).duplicates += 1

    def rejected(self, device_id: str, at: int) -> None:
        # Only devices already heard from: any client can name any device in garbage, and
        # the tracker must not grow with invented ids.
        if device_id in self._devices:
            self._get(device_id, at).rejects += 1

    def counter_reset(self, device_id: str, at: int, count: int = 1) -> None:
        self._get(device_id, at).counter_resets += count

    def gaps(self, device_id: str, gap_count: int, at: int) -> None:
        """`gap_count`: seqs missing so far in the current boot (as alerts.on_gaps); rises
        count as gaps, a fall (a new boot, late arrivals) only moves the level."""
        counts = self._get(device_id, at)
        if counts.gap_level is not None and gap_count > counts.gap_level:
            counts.gaps += gap_count - counts.gap_level
        counts.gap_level = gap_count

    def drain(self, now_ms: int,
              stuck_of: Callable[[Iterable[str]], Mapping[str, int]] | None = None,
              ) -> list[DeviceQuality]:
        """Scores of the devices seen since the last drain; `stuck_of`: stuck fields per
        device (the anomaly detector's `stuck_fields`)."""
        stuck = stuck_of(self._changed) if stuck_of is not None and self._changed else {}
        out = []
        for device_id in sorted(self._changed):
            c = self._devices[device_id]
            c.decay(now_ms)
            n_stuck = stuck.get(device_id, 0)
            skew = max(c.skew, 0.0)
            gaps, duplicates, rejects, resets = c.gaps, c.duplicates, c.rejects, c.counter_resets
            # Every device of every batch: round(x, 2) costs a few hundred ns, and most of
            # these counts are 0.0, which it returns unchanged.
            out.append(DeviceQuality(
                device_id, quality_score(c.received, gaps, duplicates, rejects, resets, n_stuck,
                                         skew),
                round(c.received, 2), round(gaps, 2) if gaps else gaps,
                round(duplicates, 2) if duplicates else duplicates,
                round(rejects, 2) if rejects else rejects,
                round(resets, 2) if resets else resets, n_stuck, round(skew), now_ms))
        self._changed.clear()
        return out
