"""The collector's write-ahead spool: segment files on local disk, group-committed with fsync.

A message is acknowledged to the broker only once its record is in a committed segment, so a
crash loses nothing the broker does not still hold. Each sink reads the spool from its own
cursor; a segment is deleted only when every sink is past its end. Segments are sealed by size
or age, and a sealed segment never changes: that lets the archive sink turn one segment into
objects with deterministic names, so redoing it after a crash overwrites rather than duplicates.

Frame: u32 body length, u32 crc32(body), body. A torn tail (crash mid-write) fails its CRC and
is cut off on open; those records were never acknowledged, so the broker sends them again.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from iotmeter_tui.backend.errors import IotmeterError

ACCEPTED = 0
REJECTED = 1
# A duplicate leaves only a marker (no payload): the registry counts it per device and boot,
# and no sink stores it.
DUPLICATE = 2

_FRAME = struct.Struct("<II")
# kind, received_ms, boot, seq, ts, then the lengths of device_id, msg_type, device_type, topic,
# reason and detail; then those strings and the payload (the rest of the body).
_BODY = struct.Struct("<BqqqqBBBHBH")
_SUFFIX = ".spool"
# Committed records kept in memory for readers at the head of the spool (about 2.5 s at
# 20,000 msg/s): a sink that keeps up takes the pipeline's own objects, already parsed, instead
# of reading the file back and decoding every frame and payload again.
RECENT_RECORDS = 50_000
READ_RECORDS = 10_000  # records one read() gives at most, by default


class SpoolFull(IotmeterError):
    """The spool is at its size bound or its disk is full: stop acknowledging, retry later."""


class Position(NamedTuple):
    """A place in the spool: the byte offset just after a record in a segment."""

    segment: int
    offset: int


class SpoolRecord(msgspec.Struct, gc=False):
    """One message's record. Build one with the constructor of its kind (`accepted`,
    `duplicate`, `rejected`): each fills the fields its kind leaves empty the way the frame
    has always stored them, so segments written by any version read back alike.

    A msgspec Struct kept out of the garbage collector's generations: one is built per
    message and the spool keeps the newest RECENT_RECORDS of them, which the collector
    scanned again and again as they aged (docs/performance.md, round five). Nothing a record
    holds refers back to it."""

    kind: int  # ACCEPTED, REJECTED or DUPLICATE
    received_ms: int
    device_id: str  # "" when a rejected message had no usable device id
    msg_type: str  # "" for rejected messages
    device_type: str  # the registry's type when the message arrived (telemetry tags)
    boot: int  # -1 when absent (status messages, rejections)
    seq: int
    ts: int
    topic: str  # rejected records only: an accepted message's is device_topic(id, msg_type)
    reason: str
    detail: str
    payload: bytes
    # The payload's "data" object as the pipeline parsed it; not stored, so None for records
    # read back from the file. Shared by the sinks: never modified.
    data: dict[str, Any] | None = None

    @classmethod
    def accepted(cls, *, received_ms: int, device_id: str, msg_type: str, device_type: str,
                 boot: int | None, seq: int | None, ts: int, payload: bytes,
                 data: dict[str, Any] | None = None) -> SpoolRecord:
        """A valid message to store. `boot` and `seq` are None for a status (they take no
        part in dedup); `data` is the payload's "data" as the pipeline parsed it. No topic:
        an accepted message's is device_topic(device_id, msg_type)."""
        return cls(ACCEPTED, received_ms, device_id, msg_type, device_type,
                   -1 if boot is None else boot, -1 if seq is None else seq, ts, "", "", "",
                   payload, data)

    @classmethod
    def duplicate(cls, *, received_ms: int, device_id: str, msg_type: str, boot: int,
                  seq: int, ts: int) -> SpoolRecord:
        """The marker a repeated (boot, seq) leaves: counted by the registry, stored nowhere."""
        return cls(DUPLICATE, received_ms, device_id, msg_type, "", boot, seq, ts, "", "", "",
                   b"")

    @classmethod
    def rejected(cls, *, received_ms: int, topic: str, reason: str, detail: str,
                 payload: bytes, device_id: str | None = None) -> SpoolRecord:
        """A refused message, archived under _rejected/ with its reason. `device_id`: the
        device the topic named, when it named a usable one."""
        return cls(REJECTED, received_ms, device_id or "", "", "", -1, -1, -1, topic, reason,
                   detail, payload)

    def encode(self) -> bytes:
        dev = self.device_id.encode()
        kind = self.msg_type.encode()
        dtype = self.device_type.encode()
        topic = self.topic.encode()
        reason = self.reason.encode()[:255]
        detail = self.detail.encode()[:65535]
        body = b"".join(
            (
                _BODY.pack(
                    self.kind, self.received_ms, self.boot, self.seq, self.ts,
                    len(dev), len(kind), len(dtype), len(topic), len(reason), len(detail),
                ),
                dev, kind, dtype, topic, reason, detail, self.payload,
            )
        )
        return _FRAME.pack(len(body), zlib.crc32(body)) + body

    @classmethod
    def decode(cls, body: bytes) -> SpoolRecord:
        (kind, received, boot, seq, ts,
         n_dev, n_type, n_dtype, n_topic, n_reason, n_detail) = _BODY.unpack_from(body)
        at = _BODY.size
        view = memoryview(body)
        dev = str(view[at : at + n_dev], "utf-8")
        at += n_dev
        msg_type = str(view[at : at + n_type], "utf-8")
        at += n_type
        device_type = str(view[at : at + n_dtype], "utf-8")
        at += n_dtype
        # Empty for every accepted record (sinks read these back by the million).
        topic = reason = detail = ""
        if n_topic or n_reason or n_detail:
            topic = str(view[at : at + n_topic], "utf-8", "replace")
            at += n_topic
            reason = str(view[at : at + n_reason], "utf-8")
            at += n_reason
            detail = str(view[at : at + n_detail], "utf-8", "replace")
            at += n_detail
        return cls(kind, received, dev, msg_type, device_type, boot, seq, ts, topic, reason,
                   detail, body[at:])


class RecordHead(NamedTuple):
    """What the archive sink sorts a record by, read without its payload."""

    kind: int
    device_id: str
    msg_type: str
    reason: str

    @classmethod
    def unpack(cls, data: bytes, at: int) -> RecordHead:
        """The head of the record whose body starts at `data[at]`: its strings are sliced
        out of the block where they lie, the payload never copied."""
        (kind, _received, _boot, _seq, _ts,
         n_dev, n_type, n_dtype, n_topic, n_reason, _n_detail) = _BODY.unpack_from(data, at)
        at += _BODY.size
        dev = data[at : at + n_dev].decode()
        at += n_dev
        msg_type = data[at : at + n_type].decode()
        reason = ""
        if n_reason:
            at += n_type + n_dtype + n_topic
            reason = data[at : at + n_reason].decode()
        return cls(kind, dev, msg_type, reason)


def valid_frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(end offset, body) of each frame of a segment's bytes, up to the first whose length or
    CRC fails: a torn tail, or the frame the collector is writing right now."""
    at = 0
    while at + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, at)
        body = data[at + _FRAME.size : at + _FRAME.size + length]
        if len(body) != length or zlib.crc32(body) != crc:
            return
        at += _FRAME.size + length
        yield at, body


class SegmentReader:
    """One spool segment, open, read at (offset, length) spans that Spool.scan() gave."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()

    def frames(self, spans: Iterable[tuple[int, int]]) -> Iterator[SpoolRecord]:
        """The records at the spans, in the order given, one read each."""
        fd = self._file.fileno()
        for offset, length in spans:
            yield SpoolRecord.decode(os.pread(fd, length, offset)[_FRAME.size :])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

def _segment_name(segment: int) -> str:
    return f"{segment:016d}{_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Append, commit, read and release segments. Appends come from one thread (the
    pipeline); readers (sinks) may run in other threads."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_max_bytes: int = 64 << 20,
        segment_max_age_s: float = 60.0,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age_s = segment_max_age_s
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}  # committed bytes of every segment on disk
        for path in sorted(directory.glob("*" + _SUFFIX)):
            segment = int(path.name.removesuffix(_SUFFIX))
            self._sizes[segment] = self._recover(path)
        self._active = -1
        self._written = 0  # bytes written to the active segment, committed or not
        self._opened_at = 0.0
        self._uncommitted: list[SpoolRecord] = []
        # Accepted messages other than telemetry committed so far (hellos, statuses, command
        # and OTA reports): a cheap sign of news the registry should not keep waiting; the
        # registry sink looks at them to tell news from heartbeats.
        self.committed_news = 0
        # Set while the last append was refused for the bound or a full disk: the writer is
        # holding, and sinks that batch lazily (rollups) should take what they can now.
        self.waiting_for_room = False
        # Recently committed records by the position they start at: (end, records).
        self._recent: dict[Position, tuple[Position, list[SpoolRecord]]] = {}
        self._recent_order: deque[Position] = deque()
        self._recent_count = 0
        self._open_segment()

    # --- writing (pipeline thread) ---------------------------------------------------------

    def _open_segment(self) -> None:
        # Time-based ids keep growing even if the directory is wiped, so a cursor stored
        # elsewhere (the registry's, in the database) never points past new data.
        segment = max(int(time.time() * 1000), max(self._sizes, default=0) + 1)
        path = self.directory / _segment_name(segment)
        fh = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the segment
        try:
            _fsync_dir(self.directory)
        except OSError:
            # Leave the spool as it was (a full disk can refuse this): the old segment stays
            # active.
            fh.close()
            path.unlink(missing_ok=True)
            raise
        self._fh = fh
        with self._lock:
            self._sizes[segment] = 0
            self._active = segment
        self._written = 0
        self._opened_at = time.monotonic()

    @property
    def active_segment(self) -> int:
        return self._active

    def append(self, records: list[SpoolRecord]) -> None:
        """Write records to the active segment (not yet durable: call commit())."""
        data = b"".join(r.encode() for r in records)
        size = self.size_bytes
        # An empty spool takes any one turn, or a turn larger than the bound would be held
        # for ever.
        if size and size + len(data) > self.max_bytes:
            self.waiting_for_room = True
            raise SpoolFull(f"spool is at its bound of {self.max_bytes} bytes")
        try:
            # An unbuffered write may take only part of the data (a nearly full disk does
            # that) without raising; the next write then fails with ENOSPC.
            view = memoryview(data)
            while view:
                view = view[self._fh.write(view) :]
        except OSError as exc:
            self._undo_uncommitted()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.waiting_for_room = True
                raise SpoolFull(f"spool disk is full: {exc.strerror}") from exc
            raise
        self.waiting_for_room = False
        self._written += len(data)
        self._uncommitted.extend(records)

    def commit(self) -> Position:
        """Make everything appended durable (fsync) and visible to readers."""
        try:
            os.fsync(self._fh.fileno())
        except OSError as exc:
            self._undo_uncommitted()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(f"spool disk is full: {exc.strerror}") from exc
            raise
        with self._lock:
            start = Position(self._active, self._sizes[self._active])
            self._sizes[self._active] = self._written
            if self._uncommitted:
                self._remember(start, Position(self._active, self._written), self._uncommitted)
        self.committed_news += sum(1 for r in self._uncommitted
                                   if r.kind == ACCEPTED and r.msg_type != "telemetry")
        self._uncommitted = []
        return Position(self._active, self._written)

    def _remember(self, start: Position, end: Position, records: list[SpoolRecord]) -> None:
        self._recent[start] = (end, records)
        self._recent_order.append(start)
        self._recent_count += len(records)
        while self._recent_count > RECENT_RECORDS:
            _end, dropped = self._recent.pop(self._recent_order.popleft())
            self._recent_count -= len(dropped)

    def _undo_uncommitted(self) -> None:
        # A failed write may leave part of a frame behind; cut back to the committed size so
        # the next append starts on a frame boundary.
        committed = self._sizes[self._active]
        self._uncommitted = []
        try:
            self._fh.truncate(committed)
            self._fh.seek(committed)
        except OSError:
            pass
        self._written = committed

    def roll_if_due(self, now: float | None = None) -> bool:
        """Seal the active segment when it is old or large enough and has data."""
        now = time.monotonic() if now is None else now
        if self._written == 0 or self._written != self._sizes[self._active]:
            return False
        if (
            self._written < self.segment_max_bytes
            and now - self._opened_at < self.segment_max_age_s
        ):
            return False
        self.roll()
        return True

    def roll(self) -> None:
        """Seal the active segment (it must be committed) and open a new one. If the new
        one cannot be created (OSError), the active segment stays as it was."""
        sealed = self._fh
        self._open_segment()
        sealed.close()

    def close(self) -> None:
        self._fh.close()

    # --- reading (sink threads) ------------------------------------------------------------

    def segments(self) -> list[int]:
        with self._lock:
            return sorted(self._sizes)

    def is_sealed(self, segment: int) -> bool:
        return segment != self._active

    def committed_size(self, segment: int) -> int:
        with self._lock:
            return self._sizes.get(segment, 0)

    def start(self) -> Position:
        """The oldest position still in the spool."""
        segments = self.segments()
        return Position(segments[0], 0)

    def normalise(self, position: Position | None) -> Position:
        """A stored cursor made valid: before the oldest segment means its start; at the end
        of a sealed segment means the start of the next one."""
        segments = self.segments()
        if position is None or position.segment < segments[0]:
            return Position(segments[0], 0)
        if position.segment not in self._sizes:
            later = [s for s in segments if s > position.segment]
            return Position(later[0], 0) if later else Position(self._active, 0)
        return position

    def read(self, position: Position, max_records: int = READ_RECORDS,
             max_bytes: int = 8 << 20) -> tuple[list[SpoolRecord], Position]:
        """Committed records after `position`, within one segment, and the position after
        them. At the end of a sealed segment, moves on to the next segment."""
        position = self.normalise(position)
        recent = self._read_recent(position, max_records)
        if recent is not None:
            return recent
        end = self.committed_size(position.segment)
        if position.offset >= end:
            if self.is_sealed(position.segment):
                nxt = [s for s in self.segments() if s > position.segment]
                if nxt:
                    return self.read(Position(nxt[0], 0), max_records, max_bytes)
            return [], position
        path = self.directory / _segment_name(position.segment)
        with open(path, "rb") as fh:
            fh.seek(position.offset)
            data = fh.read(min(end - position.offset, max_bytes))
        records: list[SpoolRecord] = []
        at = 0
        while at + _FRAME.size <= len(data) and len(records) < max_records:
            length, _crc = _FRAME.unpack_from(data, at)
            if at + _FRAME.size + length > len(data):
                if at == 0:  # one record larger than max_bytes: read it whole
                    return self.read(position, max_records, length + _FRAME.size)
                break
            body = data[at + _FRAME.size : at + _FRAME.size + length]
            records.append(SpoolRecord.decode(body))
            at += _FRAME.size + length
        return records, Position(position.segment, position.offset + at)

    def _read_recent(self, position: Position, max_records: int) -> tuple[
            list[SpoolRecord], Position] | None:
        """What read() would return, from memory, when `position` starts a recent commit."""
        with self._lock:
            found = self._recent.get(position)
            if found is None:
                return None
            end, records = found
            records = list(records)
            while (nxt := self._recent.get(end)) is not None and (
                    len(records) + len(nxt[1]) <= max_records):
                end, more = nxt
                records.extend(more)
        return records, end

    def scan(self, segment: int, block_bytes: int = 1 << 20) -> Iterator[
            tuple[int, int, RecordHead]]:
        """(offset, length, head) of every committed frame of a segment, in order, read
        from its file a block at a time: memory stays at a block whatever the segment holds.
        `offset` and `length` cover the whole frame, as SegmentReader.frames() takes them; the head
        is read in place, without the payload (decoding whole records was most of the
        archive sink's index pass)."""
        end = self.committed_size(segment)
        with open(self.directory / _segment_name(segment), "rb") as fh:
            at, want = 0, block_bytes
            while at < end:
                fh.seek(at)
                data = fh.read(min(end - at, want))
                used = 0
                while used + _FRAME.size <= len(data):
                    length, _crc = _FRAME.unpack_from(data, used)
                    size = _FRAME.size + length
                    if used + size > len(data):
                        break
                    yield at + used, size, RecordHead.unpack(data, used + _FRAME.size)
                    used += size
                if used == 0:
                    if len(data) < _FRAME.size or len(data) == end - at:
                        return  # committed bytes are whole frames: not reached
                    want = _FRAME.size + _FRAME.unpack_from(data)[0]  # one frame > a block
                    continue
                at += used
                want = block_bytes
                data = b""  # one block at a time: let it go before the next is read

    def open_segment(self, segment: int) -> SegmentReader:
        """A segment opened once, for reads of the records at spans that scan() gave (the
        archive sink reads one object's records at a time: opening the file for each of
        5,000 objects a segment was a fifth of its time)."""
        return SegmentReader(self.directory / _segment_name(segment))

    # --- space ------------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values()) + (self._written - self._sizes[self._active])

    def oldest_segment_age_s(self) -> float:
        segments = self.segments()
        if not segments or self.size_bytes == 0:
            return 0.0
        return max(0.0, time.time() - segments[0] / 1000)

    def release(self, cursors: list[Position]) -> list[int]:
        """Delete sealed segments that every cursor has passed. Returns the deleted ids."""
        if not cursors:
            return []
        lowest = min(self.normalise(c) for c in cursors)
        deleted = []
        for segment in self.segments():
            sealed = self.is_sealed(segment)
            passed = segment < lowest.segment or (
                segment == lowest.segment and lowest.offset >= self.committed_size(segment)
            )
            if sealed and passed:
                (self.directory / _segment_name(segment)).unlink(missing_ok=True)
                with self._lock:
                    del self._sizes[segment]
                deleted.append(segment)
        return deleted

    # --- recovery ---------------------------------------------------------------------------

    @staticmethod
    def _recover(path: Path) -> int:
        """Length of the valid prefix of a segment; a torn or corrupt tail is cut off."""
        data = path.read_bytes()
        at = max((end for end, _body in valid_frames(data)), default=0)
        if at != len(data):
            with open(path, "r+b") as fh:
                fh.truncate(at)
                os.fsync(fh.fileno())
        return at
