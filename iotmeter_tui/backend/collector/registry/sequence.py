"""Sequence accounting for the registry: each record's (boot, seq) observed once, the gaps
swept, and the states that changed handed over to be stored with the cursor."""

from __future__ import annotations

import time
from collections.abc import Iterable

from iotmeter_tui.backend.collector.seqtrack import BootTrack, SeqTracker, Verdict
from iotmeter_tui.backend.collector.spool import REJECTED, SpoolRecord
from iotmeter_tui.backend.stores.metadata import SeqState

Changed = list[tuple[str, int, BootTrack]]


def _now_ms() -> int:
    return int(time.time() * 1000)


class SequenceLedger:
    """The tracker and each device's current boot. Not thread-safe: the sink owns it."""

    def __init__(self, tracker: SeqTracker, collector: str) -> None:
        self.tracker = tracker
        # Its own rows of device_seq_tracking: with a shared subscription each collector
        # keeps the part of every sequence it received.
        self.collector = collector
        self.current_boot: dict[str, int] = {}

    def restore(self, states: Iterable[SeqState]) -> None:
        now = _now_ms()
        for s in states:
            self.tracker.restore(s.device_id, s.boot, BootTrack.restore(
                s.highest_seq, s.received, s.duplicates, s.gaps, now))
            self.current_boot[s.device_id] = max(s.boot, self.current_boot.get(s.device_id, -1))

    def observe(self, records: Iterable[SpoolRecord]) -> None:
        """Each record exactly once: the caller skips a retried batch."""
        observe, current, duplicate = self.tracker.observe, self.current_boot, Verdict.DUPLICATE
        for r in records:
            if r.kind != REJECTED and r.seq >= 0:
                verdict = observe(r.device_id, r.boot, r.seq, r.received_ms)
                if verdict is not duplicate and r.boot > current.get(r.device_id, -1):
                    current[r.device_id] = r.boot

    def is_stale(self, device_id: str, boot: int | None) -> bool:
        """Sparkplug's rule: a death certificate from an earlier boot than the device's
        current one is stale."""
        return boot is not None and boot < self.current_boot.get(device_id, -1)

    def is_current(self, device_id: str, boot: int) -> bool:
        return boot == self.current_boot.get(device_id)

    def sweep(self, now_ms: int) -> int:
        """Declare the gaps whose reorder timeout has passed; how many seqs that was."""
        return self.tracker.sweep(now_ms)

    def take_changed(self) -> Changed:
        return self.tracker.take_changed()

    def give_back(self, changed: Changed) -> None:
        """Not stored after all: the next take_changed() hands these over again."""
        self.tracker.mark_changed((d, b) for d, b, _ in changed)

    def states(self, changed: Changed) -> list[SeqState]:
        now = _now_ms()
        return [SeqState(device_id, boot, track.highest, track.received, track.duplicates,
                         track.gap_count, track.ranges(), now, self.collector)
                for device_id, boot, track in changed]
