"""The sinks' common frame, the time-series and archive sinks (the registry sink is
`collector/registry/`), and the thread that feeds each from the spool.

Each sink reads the spool from its own cursor, so a slow or failed sink never holds back the
others; its cursor moves only after a write succeeded, so a failure means "retry later", never
"lost". Every write is idempotent, which is what makes a crash between the write and the cursor
harmless: time-series points overwrite by (device_id, ts), archive objects are named after
their spool segment, and the registry stores its cursor in the same transaction as its state.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any, Generic, TypeVar

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.collector.spool import (
    ACCEPTED,
    DUPLICATE,
    READ_RECORDS,
    Position,
    SegmentReader,
    Spool,
    SpoolRecord,
)
from iotmeter_tui.backend.errors import PartialWriteError, StoreError
from iotmeter_tui.backend.stores.archive_writer import ArchiveRecord, ArchiveWriter, RejectedRecord
from iotmeter_tui.backend.stores.timeseries import Point, TimeSeriesStore

log = logging.getLogger(__name__)


def _data(record: SpoolRecord) -> dict[str, Any]:
    """The message's "data": as the pipeline parsed it, or parsed again from the payload for
    a record read back from the spool file."""
    if record.data is not None:
        return record.data
    data: dict[str, Any] = protocol.loads(record.payload)["data"]
    return data


class CursorFile:
    """A sink's cursor in a small JSON file, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Position | None:
        try:
            data = json.loads(self.path.read_text())
            return Position(int(data["segment"]), int(data["offset"]))
        except FileNotFoundError:
            return None

    def save(self, position: Position) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump({"segment": position.segment, "offset": position.offset}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


R = TypeVar("R")  # what a sink's batches hold


class Sink(ABC, Generic[R]):
    name: str
    draining = False  # set when the collector stops: take everything there is, now
    stop_by = float("inf")  # set with `draining`: the monotonic time the drain ends
    # Batches of fewer than `small_batch` records start at most once per `linger_s`: a sink
    # woken by every commit (a few milliseconds apart under load) would otherwise pay a
    # write's fixed cost for a few hundred records. A larger batch means records are
    # waiting, and the next goes at once, so the pace never limits a catch-up.
    linger_s = 0.0
    small_batch = READ_RECORDS // 2

    @abstractmethod
    def load_cursor(self) -> Position | None: ...

    @abstractmethod
    def save_cursor(self, position: Position) -> None: ...

    @abstractmethod
    def next_batch(self, spool: Spool, cursor: Position) -> tuple[list[R], Position]: ...

    @abstractmethod
    def write(self, records: list[R], end: Position) -> None:
        """Store the records; raise StoreError to have the same batch retried later."""

    def housekeeping(self) -> None:
        """Periodic work that needs no new records; called after every turn of the runner,
        busy or idle, so it must limit its own rate."""

    def close(self) -> None:
        """Release what the sink holds (the runner has stopped)."""


class RecordSink(Sink[SpoolRecord]):
    """A sink fed spool records in order, in batches of what has been committed."""

    def next_batch(self, spool: Spool, cursor: Position) -> tuple[list[SpoolRecord], Position]:
        return spool.read(cursor)


class TimeSeriesSink(RecordSink):
    name = "timeseries"
    # At 20,000 msg/s about 40 writes a second of 500 points become 4 of 5,000 (an HTTP
    # request, a gzip stream and a cursor fsync each), for at most 0.25 s more before a
    # point is queryable.
    linger_s = 0.25

    def __init__(self, store: TimeSeriesStore, cursor: CursorFile,
                 metrics: CollectorMetrics) -> None:
        self.store = store
        self.cursor = cursor
        self.metrics = metrics

    def load_cursor(self) -> Position | None:
        return self.cursor.load()

    def save_cursor(self, position: Position) -> None:
        self.cursor.save(position)

    def write(self, records: list[SpoolRecord], end: Position) -> None:
        telemetry = protocol.TELEMETRY
        points = [
            # The values as parsed: every adapter stores them as floats, so a JSON 750 is
            # 750.0 there without a per-field conversion here.
            Point(r.device_id, r.device_type, r.ts, r.boot, r.seq,
                  r.data if r.data is not None else _data(r))
            for r in records
            if r.msg_type == telemetry and r.kind == ACCEPTED
        ]
        if not points:
            return
        try:
            self.store.write(points)
        except PartialWriteError as exc:
            # The store took the rest and will never take these (a field-type conflict made
            # by another writer): say so loudly; the raw messages are in the archive.
            self.metrics.sink_failures.labels(self.name).inc()
            log.error("time-series store refused points", extra={
                "event": "points_refused", "refused": len(exc.failed), "detail": str(exc)})


class ArchiveObject:
    """Where one archive object's records are in a sealed spool segment (not the records):
    about 12 bytes a record, so a segment's index is a small share of the segment."""

    __slots__ = ("bytes", "lengths", "offsets", "part")

    def __init__(self, part: int) -> None:
        self.part = part
        self.offsets = array("Q")
        self.lengths = array("I")
        self.bytes = 0

    def add(self, offset: int, length: int) -> None:
        self.offsets.append(offset)
        self.lengths.append(length)
        self.bytes += length


class ArchiveSink(Sink[ArchiveObject]):
    """Turns each sealed spool segment into objects named after it, one per device and
    category (and per rejection reason), streamed.

    A segment (a minute of the whole fleet's traffic, up to 64 MiB) is never held: a first
    pass over its file notes where each object's records are, and a second reads one object's
    records at a time and hands it to the writer, which holds a bounded amount of encoded
    objects waiting for their puts. The cursor moves past the segment only once every object
    is put; a crash before that writes the same keys with the same bytes again. An object
    larger than PART_BYTES of spool frames (one chatty device) is cut into parts, the part
    number in their batch id, so no single object holds a segment either; parts are cut by
    frame bytes in spool order, so a replay cuts them alike."""

    name = "archive"
    PART_BYTES = 4 << 20
    PENDING_BYTES = 8 << 20

    def __init__(self, writer: ArchiveWriter, cursor: CursorFile, source: str, *,
                 part_bytes: int = PART_BYTES, pending_bytes: int = PENDING_BYTES) -> None:
        """`source` names this collector's spool (its client id, made key-safe): collectors
        sharing a subscription have spools of their own whose segment ids can coincide, and
        their objects for one device must not overwrite each other. `part_bytes` differs
        from PART_BYTES only in tests: object names depend on it."""
        self.writer = writer
        self.cursor = cursor
        self.source = source
        self.part_bytes = part_bytes
        self.pending_bytes = pending_bytes
        self._spool: Spool | None = None

    def load_cursor(self) -> Position | None:
        return self.cursor.load()

    def save_cursor(self, position: Position) -> None:
        self.cursor.save(position)

    def next_batch(self, spool: Spool, cursor: Position) -> tuple[list[ArchiveObject], Position]:
        """The objects of the next sealed segment to archive, whatever the cursor's offset in
        it: objects are per segment."""
        self._spool = spool
        cursor = spool.normalise(cursor)
        for segment in spool.segments():
            if segment < cursor.segment or not spool.is_sealed(segment):
                continue
            size = spool.committed_size(segment)
            if segment == cursor.segment and cursor.offset >= size:
                continue
            return self._index(spool, segment), Position(segment, size)
        return [], cursor

    def _index(self, spool: Spool, segment: int) -> list[ArchiveObject]:
        # Accepted objects first, then rejected, each in order of first appearance (as
        # ArchiveWriter.write_batch orders them).
        groups: dict[tuple[bool, str, str], ArchiveObject] = {}
        parts: list[ArchiveObject] = []
        later: list[ArchiveObject] = []
        for offset, length, r in spool.scan(segment):
            if r.kind == DUPLICATE:
                continue
            if r.kind == ACCEPTED:
                key, out = (True, r.device_id, r.msg_type), parts
            else:
                key, out = (False, r.reason, ""), later
            current = groups.get(key)
            if current is None or (current.bytes and
                                   current.bytes + length > self.part_bytes):
                current = groups[key] = ArchiveObject(0 if current is None else
                                                      current.part + 1)
                out.append(current)
            current.add(offset, length)
        return parts + later

    def write(self, records: list[ArchiveObject], end: Position) -> None:
        spool = self._spool
        assert spool is not None, "write() follows next_batch()"
        with spool.open_segment(end.segment) as segment:
            self.writer.write_groups(self._groups(segment, records, end),
                                     max_pending_bytes=self.pending_bytes)

    def _groups(self, segment: SegmentReader, objects: list[ArchiveObject],
                end: Position) -> Iterator[
            tuple[str, list[ArchiveRecord] | list[RejectedRecord]]]:
        for o in objects:
            # A segment of a large fleet takes longer than a stop's budget: past it, the
            # rest waits in the spool (the next start writes the segment again, overwriting).
            if self.draining and time.monotonic() > self.stop_by:
                raise StoreError(self.name, "stopping: the rest of the segment waits for the "
                                 "next start")
            yield self.batch_id(end.segment, o.part), self._records(segment, o)

    @staticmethod
    def _records(segment: SegmentReader, o: ArchiveObject) -> list[
            ArchiveRecord] | list[RejectedRecord]:
        # Only what the archive keeps is held, not the spool records it is read from.
        frames = segment.frames(zip(o.offsets, o.lengths, strict=True))
        first = next(frames)
        if first.kind == ACCEPTED:
            return [ArchiveRecord(r.device_id, r.msg_type, r.received_ms, r.payload)
                    for r in chain((first,), frames)]
        return [RejectedRecord(r.reason, r.detail, r.topic, r.device_id or None,
                               r.received_ms, r.payload) for r in chain((first,), frames)]

    def batch_id(self, segment: int, part: int = 0) -> str:
        """The objects' name for a segment, and the part of an object cut into parts (the
        first part is named as an object that needs none)."""
        return f"{segment}{f'.{part}' if part else ''}-{self.source}"[:128]

    def close(self) -> None:
        self.writer.close()


class SinkRunner(threading.Thread):
    """Feeds one sink from the spool, retrying failed batches with back-off."""

    def __init__(self, sink: Sink[Any], spool: Spool, metrics: CollectorMetrics,
                 wake: threading.Event, *, max_backoff_s: float = 10.0) -> None:
        super().__init__(name=f"iotmeter-sink-{sink.name}", daemon=True)
        self.sink = sink
        self.spool = spool
        self.metrics = metrics
        self.wake = wake
        self.max_backoff_s = max_backoff_s
        self.cursor = spool.start()
        self.loaded = threading.Event()
        self.stopping = threading.Event()
        self.drain_deadline = float("inf")
        self.healthy = True
        self.last_error: str | None = None

    def run(self) -> None:
        self.cursor = self._load()
        # Reported before the first batch, which may take a while (a rollup batch after a
        # restart reads up to 500,000 records): /metrics shows what waits from the start.
        self.metrics.sink_backlog.labels(self.sink.name).set(self.backlog_bytes())
        backoff = 0.2
        # A failed batch is retried exactly as it was (not re-read, which could take in
        # more records), so a sink can tell a retry from a new batch by its end position.
        failed: tuple[list[Any], Position] | None = None
        while not self._should_stop():
            try:
                # Read before the batch: stop() sets `draining` first, so a sink that saw
                # it stopping has been asked for everything there is.
                stopping = self.stopping.is_set()
                records, end = failed or self.sink.next_batch(self.spool, self.cursor)
                failed = None
                if not records:
                    self.cursor = end
                    self.sink.housekeeping()
                    self._ok()
                    if stopping:
                        return  # caught up
                    self.wake.wait(0.1)
                    self.wake.clear()
                    continue
                started = time.perf_counter()
                failed = (records, end)
                self.sink.write(records, end)
                self.sink.save_cursor(end)
                failed = None
                self.metrics.sink_latency.labels(self.sink.name).observe(
                    time.perf_counter() - started)
                self.metrics.sink_batch.labels(self.sink.name).observe(len(records))
                self.cursor = end
                self.sink.housekeeping()
                self._ok()
                backoff = 0.2
                if len(records) < self.sink.small_batch and self.sink.linger_s:
                    # From this batch's start: a write that took longer goes on at once.
                    # A stop drains at once.
                    self.stopping.wait(self.sink.linger_s - (time.perf_counter() - started))
            except Exception as exc:
                self._failed(exc)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            finally:
                self.metrics.sink_backlog.labels(self.sink.name).set(self.backlog_bytes())

    def _load(self) -> Position:
        backoff = 0.2
        while not self._should_stop():
            try:
                cursor = self.spool.normalise(self.sink.load_cursor())
                self.loaded.set()
                return cursor
            except Exception as exc:
                self._failed(exc)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
        return self.cursor

    def _should_stop(self) -> bool:
        return self.stopping.is_set() and time.monotonic() > self.drain_deadline

    def _ok(self) -> None:
        if not self.healthy:
            log.info("sink recovered", extra={"event": "sink_recovered", "sink": self.sink.name})
        self.healthy = True
        self.last_error = None
        self.metrics.sink_up.labels(self.sink.name).set(1)

    def _failed(self, exc: Exception) -> None:
        self.metrics.sink_failures.labels(self.sink.name).inc()
        self.metrics.sink_up.labels(self.sink.name).set(0)
        message = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
        if self.healthy or message != self.last_error:
            level = logging.WARNING if isinstance(exc, StoreError) else logging.ERROR
            log.log(level, "sink write failed; will retry", exc_info=not isinstance(
                exc, StoreError), extra={"event": "sink_failed", "sink": self.sink.name,
                                         "error": message})
        self.healthy = False
        self.last_error = message

    def stop(self, drain_s: float) -> None:
        self.drain_deadline = time.monotonic() + drain_s
        self.sink.stop_by = self.drain_deadline
        self.sink.draining = True
        self.stopping.set()
        self.wake.set()

    def backlog_bytes(self) -> int:
        cursor = self.spool.normalise(self.cursor)
        total = 0
        for segment in self.spool.segments():
            if segment > cursor.segment:
                total += self.spool.committed_size(segment)
            elif segment == cursor.segment:
                total += max(0, self.spool.committed_size(segment) - cursor.offset)
        return total
