"""The rollup sink: keeps the time-series store's 1-minute and 1-hour rollups up to date from
the spool, off the time-series write path.

It reads the spool from its own cursor, like the other sinks, but only what the time-series
sink has stored (that sink's saved cursor), because every bucket is recomputed from the
stored points (TimeSeriesStore.roll_up): a late point re-computes its old buckets, and a
batch rolled up twice (a crash before the cursor was saved) changes nothing. A collector
outside any share group is the only rollup writer, so the store may fold each batch into the
rows it wrote last instead (InfluxDB: stores/rollup_fold.py). It takes a
batch at most every `every_s`, so a busy minute is recomputed a few times, not once per
time-series batch -- sooner when the spool is half full or the pipeline is waiting for room in
it, so rollups never hold segments the other sinks are done with.
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
        # A batch read but not stored yet by the time-series sink: kept as it is (same end)
        # until that sink passes it, so a busy spool cannot keep it waiting for ever.
        self._pending: tuple[RollupBatch, Position] | None = None
        # The last read stopped at `max_records`, not at the end of the spool: the next
        # batch is due at once. (A fleet sending more than that a minute would otherwise
        # fall further behind every minute, holding up to half the spool.)
        self._behind = False

    def load_cursor(self) -> Position | None:
        return self.cursor.load()

    def save_cursor(self, position: Position) -> None:
        self.cursor.save(position)

    def next_batch(self, spool: Spool, cursor: Position) -> tuple[list[RollupBatch], Position]:
        if self._pending is None:
            # A turn larger than what is left waits while the spool is far from half full:
            # waiting for the minute would hold the broker's acknowledgements that long.
            due = (self.draining or self._behind
                   or time.monotonic() - self._taken_at >= self.every_s
                   or spool.size_bytes >= spool.max_bytes // 2 or spool.waiting_for_room)
            if not due:
                return [], cursor
            self._pending = self._read(spool, cursor)
            if not self._pending[0].minutes:
                end = self._pending[1]
                self._pending = None
                return [], end if self._is_stored(spool, end) else cursor
        batch, end = self._pending
        deadline = time.monotonic() + (DRAIN_WAIT_S if self.draining else 0.0)
        while not self._is_stored(spool, end):
            if time.monotonic() >= deadline:
                return [], cursor  # the time-series sink is behind: ask again later
            time.sleep(0.05)
        self._pending = None
        self._taken_at = time.monotonic()
        return [batch], end

    def _read(self, spool: Spool, cursor: Position) -> tuple[RollupBatch, Position]:
        """The telemetry after `cursor`, across segments, up to `max_records` records,
        folded as it is read (rollup_fold.RollupBatch): a batch holds no points."""
        batch = RollupBatch()
        position = cursor
        seen = 0
        while seen < self.max_records:
            records, end = spool.read(position, max_records=min(READ_RECORDS,
                                                                self.max_records - seen))
            if not records and end == position:
                break
            seen += len(records)
            for r in records:
                if r.kind == ACCEPTED and r.msg_type == protocol.TELEMETRY:
                    batch.add(Point(r.device_id, r.device_type, r.ts, r.boot, r.seq, _data(r)))
            position = end
        self._behind = seen >= self.max_records
        return batch, position

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
