"""The rollup sink: keeps the time-series store's 1-minute and 1-hour rollups up to date from
the spool, off the time-series write path.

It reads the spool from its own cursor, like the other sinks, but only what the time-series
sink has stored (that sink's saved cursor), because every bucket is recomputed from the
stored points (TimeSeriesStore.roll_up): a late point re-computes its old buckets, and a
batch rolled up twice (a crash before the cursor was saved) changes nothing. A collector
outside any share group is the only rollup writer, so the store may fold each batch into the
rows it wrote last instead (InfluxDB: stores/rollup_fold.py). It writes a
batch at most every `every_s`, so a busy minute is recomputed a few times, not once per
time-series batch -- sooner when the spool is half full or the pipeline is waiting for room in
it, so rollups never hold segments the other sinks are done with.

It reads as often as the other sinks, though, folding what was committed into the batch it
will write next: the spool keeps its newest records in memory, parsed, for a few seconds, and
a read a minute late found them only in the file, to be decoded and parsed again (at 5,000
meters, 41 % of the collector's time). Only the write waits for the minute; the cursor moves
with the write, so a crash reads the unwritten minute back from the file as before.
"""

from __future__ import annotations

import time
from typing import Final

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.collector.sinks import CursorFile, Sink, _data
from iotmeter_tui.backend.collector.spool import ACCEPTED, READ_RECORDS, Position, Spool
from iotmeter_tui.backend.stores.rollup_fold import RollupBatch
from iotmeter_tui.backend.stores.timeseries import Point, TimeSeriesStore

ROLLUP_EVERY_S: Final = 60.0
# A batch holds its points folded per device and minute (about 2 KiB each), not the points:
# about 100 s of 5,000 meters, so a catch-up writes each device's rows every 100 s, and a
# batch's minutes stay a few per device.
MAX_BATCH_RECORDS: Final = 500_000
# While the collector stops, how long a batch waits for the time-series sink to store it.
DRAIN_WAIT_S: Final = 5.0


class RollupSink(Sink[RollupBatch]):
    name = "rollups"

    def __init__(self, store: TimeSeriesStore, cursor: CursorFile, stored: CursorFile, *,
                 every_s: float = ROLLUP_EVERY_S, max_records: int = MAX_BATCH_RECORDS,
                 sole_writer: bool = False) -> None:
        self.store = store
        self.sole_writer = sole_writer  # no other collector writes rollups: rows may be folded
        self.max_records = max_records
        self.cursor = cursor
        self.stored = stored  # the time-series sink's cursor: what is in the store
        self.every_s = every_s
        self._taken_at = -float("inf")
        # The batch being folded: from `_open_from` (the runner's cursor when it began) to
        # `_open_end`, `_open_records` records read. None: begin anew at the next cursor.
        self._open_from: Position | None = None
        self._open = RollupBatch()
        self._open_end = Position(0, 0)
        self._open_records = 0
        # A batch read but not stored yet by the time-series sink: kept as it is (same end)
        # until that sink passes it, so a busy spool cannot keep it waiting for ever.
        self._pending: tuple[RollupBatch, Position] | None = None

    def load_cursor(self) -> Position | None:
        return self.cursor.load()

    def save_cursor(self, position: Position) -> None:
        self.cursor.save(position)

    def next_batch(self, spool: Spool, cursor: Position) -> tuple[list[RollupBatch], Position]:
        if self._pending is None:
            if self._open_from != cursor:  # the first call, or the last batch was written
                self._open_from = self._open_end = cursor
                self._open, self._open_records = RollupBatch(), 0
            self._fold(spool)
            # A batch full at `max_records` is due at once: a fleet sending more than that a
            # minute would otherwise fall further behind every minute, holding up to half the
            # spool. A turn larger than what is left waits while the spool is far from half
            # full: waiting for the minute would hold the broker's acknowledgements that long.
            due = (self.draining or self._open_records >= self.max_records
                   or time.monotonic() - self._taken_at >= self.every_s
                   or spool.size_bytes >= spool.max_bytes // 2 or spool.waiting_for_room)
            if not due:
                return [], cursor
            batch, end = self._open, self._open_end
            self._open_from = None
            if not batch.minutes:
                return [], end if self._is_stored(spool, end) else cursor
            self._pending = (batch, end)
        batch, end = self._pending
        deadline = time.monotonic() + (DRAIN_WAIT_S if self.draining else 0.0)
        while not self._is_stored(spool, end):
            if time.monotonic() >= deadline:
                return [], cursor  # the time-series sink is behind: ask again later
            time.sleep(0.05)
        self._pending = None
        self._taken_at = time.monotonic()
        return [batch], end

    def _fold(self, spool: Spool) -> None:
        """Fold the telemetry committed after the open batch's end into it, across segments,
        until it holds `max_records` records: a batch holds no points (rollup_fold)."""
        batch = self._open
        position = self._open_end
        while self._open_records < self.max_records:
            records, end = spool.read(position, max_records=min(
                READ_RECORDS, self.max_records - self._open_records))
            if not records and end == position:
                break
            self._open_records += len(records)
            for r in records:
                if r.kind == ACCEPTED and r.msg_type == protocol.TELEMETRY:
                    batch.add(Point(r.device_id, r.device_type, r.ts, r.boot, r.seq, _data(r)))
            position = end
        self._open_end = position

    def _is_stored(self, spool: Spool, end: Position) -> bool:
        saved = self.stored.load()
        if saved is None:
            return False
        stored, end = spool.normalise(saved), spool.normalise(end)
        if stored >= end:
            return True
        # The end of a sealed segment and the start of a later one are one place when only
        # empty segments lie between (each start of the collector opens one): the
        # time-series sink saves the first, a read that moved on returns the second.
        return (end.offset == 0 and spool.is_sealed(stored.segment)
                and stored.offset >= spool.committed_size(stored.segment)
                and not any(spool.committed_size(s) for s in spool.segments()
                            if stored.segment < s < end.segment))

    def write(self, records: list[RollupBatch], end: Position) -> None:
        for batch in records:
            self.store.roll_up(batch, sole_writer=self.sole_writer)
