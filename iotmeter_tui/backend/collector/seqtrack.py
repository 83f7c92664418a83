"""Duplicate and gap accounting per device and boot (pure, no I/O).

For each (device_id, boot) the tracker keeps the highest `seq` seen and the ranges below it
that have not arrived. That is exact, not a sliding window: a `seq` at or below the highest
that is not in a missing range is a duplicate; one inside a range fills it. A missing range is
only *pending* at first; it becomes a gap when it is still missing `reorder_timeout_ms` after it
opened (Sparkplug's reorder timeout), so reordering is never counted as a gap.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

# A device that jumps absurdly far, or loses messages in a pattern (or a hostile one that skips
# every other seq), could grow the list of missing ranges without end, and the registry writes
# the whole list with each state it stores. Past this many, the oldest ranges are given up as
# lost for good: their seqs stay counted in `gap_count` (so gap accounting stays honest), and a
# late arrival of one of them is taken for a duplicate.
MAX_RANGES = 256
# Boots kept in memory per device; a message from an older boot than these is a duplicate.
BOOTS_KEPT = 4


class Verdict(Enum):
    NEW = "new"  # the next seq or a jump forward
    FILL = "fill"  # arrived late into a missing range
    DUPLICATE = "duplicate"


_NEW = Verdict.NEW  # read once: an Enum member read from its class costs a lookup per message


@dataclass(slots=True)
class BootTrack:
    """What has been seen of one boot of one device."""

    highest: int = -1
    received: int = 0
    duplicates: int = 0
    gap_count: int = 0  # seqs declared missing after the reorder timeout, still missing
    # Missing ranges [lo, hi] inclusive, sorted, disjoint; with the time each one opened and
    # whether it has been declared a gap yet.
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    opened: list[int] = field(default_factory=list)
    declared: list[bool] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return sum(e - s + 1 for s, e in zip(self.starts, self.ends, strict=True))

    def ranges(self) -> tuple[tuple[int, int], ...]:
        return tuple(zip(self.starts, self.ends, strict=True))

    def observe(self, seq: int, now_ms: int) -> Verdict:
        if seq > self.highest:
            if seq > self.highest + 1:
                self._open(self.highest + 1, seq - 1, now_ms)
            self.highest = seq
            self.received += 1
            return Verdict.NEW
        i = bisect.bisect_right(self.starts, seq) - 1
        if i < 0 or seq > self.ends[i]:
            self.duplicates += 1
            return Verdict.DUPLICATE
        self._fill(i, seq)
        self.received += 1
        return Verdict.FILL

    def _open(self, lo: int, hi: int, now_ms: int) -> None:
        self.starts.append(lo)
        self.ends.append(hi)
        self.opened.append(now_ms)
        self.declared.append(False)
        if len(self.starts) > MAX_RANGES:
            self._forget(0)

    def _fill(self, i: int, seq: int) -> None:
        lo, hi, declared = self.starts[i], self.ends[i], self.declared[i]
        if declared:
            self.gap_count -= 1
        if lo == hi:
            self._forget(i, count_loss=False)
        elif seq == lo:
            self.starts[i] = lo + 1
        elif seq == hi:
            self.ends[i] = hi - 1
        else:
            self.ends[i] = seq - 1
            self.starts.insert(i + 1, seq + 1)
            self.ends.insert(i + 1, hi)
            self.opened.insert(i + 1, self.opened[i])
            self.declared.insert(i + 1, declared)

    def _forget(self, i: int, count_loss: bool = True) -> None:
        if count_loss and not self.declared[i]:
            self.gap_count += self.ends[i] - self.starts[i] + 1
        del self.starts[i], self.ends[i], self.opened[i], self.declared[i]

    def declare_gaps(self, now_ms: int, reorder_timeout_ms: int) -> int:
        """Turn pending ranges older than the timeout into gaps; return how many seqs."""
        newly = 0
        for i, opened in enumerate(self.opened):
            if not self.declared[i] and now_ms - opened >= reorder_timeout_ms:
                self.declared[i] = True
                newly += self.ends[i] - self.starts[i] + 1
        self.gap_count += newly
        return newly

    @classmethod
    def restore(
        cls,
        highest: int,
        received: int,
        duplicates: int,
        gaps: Iterable[tuple[int, int]],
        restored_at_ms: int,
    ) -> BootTrack:
        """Rebuild from a stored state. Stored ranges count as declared gaps: they were
        missing long before this restart."""
        track = cls(highest=highest, received=received, duplicates=duplicates)
        for lo, hi in sorted(gaps):
            track.starts.append(lo)
            track.ends.append(hi)
            track.opened.append(restored_at_ms)
            track.declared.append(True)
            track.gap_count += hi - lo + 1
        # A state stored by an older version (or a longer limit) is bounded too; what is cut
        # is already counted in gap_count.
        excess = len(track.starts) - MAX_RANGES
        if excess > 0:
            del track.starts[:excess], track.ends[:excess]
            del track.opened[:excess], track.declared[:excess]
        return track


class SeqTracker:
    """All devices' BootTracks, with the set changed since the last `take_changed()`."""

    def __init__(self, reorder_timeout_ms: int) -> None:
        self.reorder_timeout_ms = reorder_timeout_ms
        self._boots: dict[str, dict[int, BootTrack]] = {}
        self._changed: set[tuple[str, int]] = set()

    def observe(self, device_id: str, boot: int, seq: int, now_ms: int) -> Verdict:
        boots = self._boots.get(device_id)
        if boots is None:
            boots = self._boots[device_id] = {}
        track = boots.get(boot)
        if track is not None and seq == track.highest + 1:
            # The next seq of a known boot, nearly every message: BootTrack.observe's first
            # case, without the call.
            track.highest = seq
            track.received += 1
            self._changed.add((device_id, boot))
            return _NEW
        if track is None:
            if len(boots) >= BOOTS_KEPT and boot < min(boots):
                return Verdict.DUPLICATE  # older than anything we still remember
            track = boots[boot] = BootTrack()
            if len(boots) > BOOTS_KEPT:
                del boots[min(boots)]
        verdict = track.observe(seq, now_ms)
        self._changed.add((device_id, boot))
        return verdict

    def restore(self, device_id: str, boot: int, track: BootTrack) -> None:
        boots = self._boots.setdefault(device_id, {})
        boots[boot] = track
        while len(boots) > BOOTS_KEPT:
            del boots[min(boots)]

    def get(self, device_id: str, boot: int) -> BootTrack | None:
        return self._boots.get(device_id, {}).get(boot)

    def sweep(self, now_ms: int) -> int:
        """Declare gaps whose reorder timeout has passed; returns how many seqs became gaps."""
        total = 0
        for device_id, boots in self._boots.items():
            for boot, track in boots.items():
                if track.opened:
                    newly = track.declare_gaps(now_ms, self.reorder_timeout_ms)
                    if newly:
                        total += newly
                        self._changed.add((device_id, boot))
        return total

    def mark_changed(self, keys: Iterable[tuple[str, int]]) -> None:
        """Have these states reported again by the next take_changed() (a failed save)."""
        self._changed.update(keys)

    def take_changed(self) -> list[tuple[str, int, BootTrack]]:
        changed = [
            (device_id, boot, track)
            for device_id, boot in self._changed
            if (track := self.get(device_id, boot)) is not None
        ]
        self._changed.clear()
        return changed

    def __len__(self) -> int:
        return sum(len(b) for b in self._boots.values())
