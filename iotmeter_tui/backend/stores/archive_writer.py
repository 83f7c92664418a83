"""Batches messages into archive objects (`ArchiveWriter`) and streams them back (`ArchiveReader`).

Key layout (times are UTC, from the earliest `received_ms` among the object's records)::

    {device_id}/{category}/{YYYY}/{MM}/{DD}/{HHMMSS}-{batch_id}.ndjson[.gz]
    _rejected/{reason}/{YYYY}/{MM}/{DD}/{HHMMSS}-{batch_id}.ndjson[.gz]

One batch gives one object per (device_id, category) and one per rejection reason, never one
per message. A key is a pure function of the group, the caller's `batch_id` and the group's
records, and the content is byte-identical for the same records (gzip with a fixed mtime), so
writing a batch again after a crash overwrites the same objects: redelivery adds no duplicate.

Accepted objects hold one payload per line exactly as received, except that CR and LF bytes
become spaces: valid JSON can hold them only as whitespace between tokens (inside strings they
must be escaped), so the message means the same and NDJSON stays one message per line.
Rejected objects hold one JSON object per line: received_ms, reason, detail, topic, device_id
and `payload` (the text) or `payload_b64` (base64, when the bytes are not UTF-8).

The reader selects objects, not lines: an object belongs to the second of its key's time, and a
range [start_ms, end_ms) returns the objects whose key time falls in it, at one-second
granularity. It lists only the date partitions the range touches.
"""

from __future__ import annotations

import base64
import calendar
import gzip
import heapq
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from itertools import chain
from typing import Any, NamedTuple, TypeVar, cast

from iotmeter_tui.backend.protocol import REJECTION_REASONS, Message, Rejection
from iotmeter_tui.backend.stores.archive import REJECTED_PREFIX, ArchiveStore

NDJSON = ".ndjson"
GZIP = ".gz"
DAY_MS = 86_400_000
# Key segments the writer builds from data: device ids, categories, reasons, batch ids.
_SEGMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_NEWLINES_TO_SPACES = bytes.maketrans(b"\r\n", b"  ")
# zlib's default level: most of level 9's ratio on JSON at a fraction of its CPU.
_GZIP_LEVEL = 6
# Past this many days a range is listed month by month, so a years-long query stays cheap.
_MAX_DAY_PARTITIONS = 92


# NamedTuples, not frozen dataclasses: the collector makes one per message, and a frozen
# dataclass takes about twice as long to build.
class ArchiveRecord(NamedTuple):
    """An accepted message as archived: its payload exactly as received, and when."""

    device_id: str
    category: str  # the msg_type
    received_ms: int  # the collector's clock, ms since the epoch (UTC)
    raw: bytes

    @classmethod
    def from_message(cls, message: Message, received_ms: int) -> ArchiveRecord:
        return cls(message.device_id, message.msg_type, received_ms, message.raw)


class RejectedRecord(NamedTuple):
    """A rejected message as archived under `_rejected/{reason}/`."""

    reason: str
    detail: str
    topic: str
    device_id: str | None
    received_ms: int
    raw: bytes

    @classmethod
    def from_rejection(cls, rejection: Rejection, received_ms: int) -> RejectedRecord:
        return cls(
            rejection.reason,
            rejection.detail,
            rejection.topic,
            rejection.device_id,
            received_ms,
            rejection.raw,
        )


_Record = TypeVar("_Record", ArchiveRecord, RejectedRecord)


class ArchiveWriter:
    """Writes a batch of records as one object per group (see the module docstring)."""

    def __init__(self, store: ArchiveStore, *, gzip: bool = True, max_workers: int = 8) -> None:
        """`max_workers` puts run at once: each object costs a round trip (S3) or an fsync
        (directory), which overlap well, and a batch holds one object per active device.
        A batch's puts are made durable together, by one `sync()` before it returns."""
        self._store = store
        self._gzip = gzip
        self._suffix = NDJSON + GZIP if gzip else NDJSON
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="archive-writer")
        # write_groups keeps the workers busy with this many objects queued, no more: a
        # process that exits waits for every put queued (the pool's threads are joined).
        self._max_pending = 4 * max_workers

    def write_batch(
        self,
        accepted: Iterable[ArchiveRecord],
        rejected: Iterable[RejectedRecord],
        batch_id: str,
    ) -> list[str]:
        """Write the batch and return the keys written, accepted groups first, each kind in
        the order its groups first appear.

        `batch_id` identifies the batch deterministically (e.g. its spool segment): the same
        batch_id must always come with the same records, so a retry overwrites, not adds.
        Raises ValueError on a batch_id or group name that is not key-safe, and the store's
        StoreError; on error some objects may be written, and writing the batch again is safe.
        """
        _check_segment("batch_id", batch_id)
        accepted_groups = _group_accepted(accepted)  # validates names before any put
        rejected_groups = _group_rejected(rejected)
        keys: list[str] = []
        puts: list[Future[None]] = []
        try:
            # Submitted as each is encoded: the pool compresses and puts them side by side.
            for key, body in chain(
                self._objects(accepted_groups, batch_id, _accepted_body),
                self._objects(rejected_groups, batch_id, _rejected_body),
            ):
                keys.append(key)
                puts.append(self._pool.submit(self._put, key, body))
        finally:
            # Every put finishes before we return or raise, so no write of this batch is still
            # in flight when the caller retries it.
            wait(puts)
        for put in puts:
            put.result()
        self._store.sync()
        return keys

    def write_groups(
        self,
        groups: Iterable[tuple[str, list[ArchiveRecord] | list[RejectedRecord]]],
        *,
        max_pending_bytes: int = 8 << 20,
    ) -> list[str]:
        """write_batch for a batch too large to hold at once. Each item is (batch_id, the
        records of one object: all the batch's records of one device and category, or of one
        rejection reason, in order), taken as the objects are written; an object is the one
        write_batch would write for those records and that batch_id. At most
        `max_pending_bytes` of objects (before compression), and four per worker, wait for
        their puts, so memory is one group's records and that, and stopping the groups (the
        iterable raising) leaves little to wait for. Raises as write_batch does, once the
        puts started are done (those not started are dropped); a group's name is checked when
        its turn comes, so some objects may be written then."""
        keys: list[str] = []
        pending: dict[Future[None], int] = {}
        held = 0
        try:
            for batch_id, records in groups:
                _check_segment("batch_id", batch_id)
                prefix = _group_prefix(records)
                if type(records[0]) is ArchiveRecord:
                    accepted = cast(list[ArchiveRecord], records)
                    key, body = self._object(prefix, accepted, batch_id, _accepted_body)
                else:
                    rejected = cast(list[RejectedRecord], records)
                    key, body = self._object(prefix, rejected, batch_id, _rejected_body)
                while pending and (held + len(body) > max_pending_bytes
                                   or len(pending) >= self._max_pending):
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for put in done:
                        held -= pending.pop(put)
                        put.result()
                keys.append(key)
                pending[self._pool.submit(self._put, key, body)] = len(body)
                held += len(body)
        except BaseException:
            # Puts not started are dropped: the caller writes the batch again anyway, and a
            # process stopping on this error would run every queued put before it exits.
            for put in pending:
                put.cancel()
            raise
        finally:
            wait(pending)
        for put in pending:
            put.result()
        self._store.sync()
        return keys

    def close(self) -> None:
        """Wait for puts in flight and stop the worker threads; the store stays open."""
        self._pool.shutdown(wait=True)

    def _put(self, key: str, body: bytes) -> None:
        # Compressed here, on the pool's threads: zlib lets other threads run while it works,
        # so objects compress side by side on every core instead of one after another on
        # the caller's thread (18 % of the archive sink's time at 5,000 meters).
        if self._gzip:
            # mtime=0: the same records always give the same bytes.
            body = gzip.compress(body, compresslevel=_GZIP_LEVEL, mtime=0)
        self._store.put(key, body, durable=False)

    def _objects(
        self,
        groups: dict[str, list[_Record]],
        batch_id: str,
        encode: Callable[[list[_Record]], bytes],
    ) -> Iterator[tuple[str, bytes]]:
        for prefix, records in groups.items():
            yield self._object(prefix, records, batch_id, encode)

    def _object(self, prefix: str, records: list[_Record], batch_id: str,
                encode: Callable[[list[_Record]], bytes]) -> tuple[str, bytes]:
        first_ms = min(record.received_ms for record in records)
        key = f"{prefix}{_time_path(first_ms)}-{batch_id}{self._suffix}"
        return key, encode(records)  # compressed by _put


class ArchiveReader:
    """Reads what ArchiveWriter wrote, listing only the partitions a time range touches."""

    def __init__(self, store: ArchiveStore) -> None:
        self._store = store

    def keys(
        self,
        device_id: str,
        category: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[str]:
        """Keys of the objects whose time is in [start_ms, end_ms), oldest first."""
        _check_segment("device_id", device_id)
        _check_segment("category", category)
        return self._keys(f"{device_id}/{category}/", start_ms, end_ms)

    def messages(
        self,
        device_id: str,
        category: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> Iterator[bytes]:
        """The archived payloads (one NDJSON line each, no newline) of the selected objects."""
        for key in self.keys(device_id, category, start_ms, end_ms):
            yield from self._lines(key)

    def rejected(
        self,
        reason: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Rejected lines as dicts, oldest object first. With no `reason`, those of every
        reason the protocol defines (one listing per reason, not of all of `_rejected/`)."""
        reasons = [reason] if reason is not None else sorted(REJECTION_REASONS)
        per_reason = []
        for name in reasons:
            _check_segment("reason", name)
            per_reason.append(self._keys(f"{REJECTED_PREFIX}/{name}/", start_ms, end_ms))
        for key in heapq.merge(*per_reason, key=_time_part):
            for line in self._lines(key):
                yield json.loads(line)

    def _keys(self, base: str, start_ms: int | None, end_ms: int | None) -> list[str]:
        if start_ms is not None and end_ms is not None and end_ms <= start_ms:
            return []
        low_s = None if start_ms is None else start_ms // 1000
        keys = []
        for prefix in _partition_prefixes(base, start_ms, end_ms):
            for key in self._store.list(prefix):
                key_s = _key_seconds(key)
                if key_s is None:
                    continue  # not written by ArchiveWriter
                if (low_s is None or key_s >= low_s) and (end_ms is None or key_s * 1000 < end_ms):
                    keys.append(key)
        return keys

    def _lines(self, key: str) -> Iterator[bytes]:
        try:
            data = self._store.get(key)
        except KeyError:
            return  # deleted (retention) between listing and reading
        if key.endswith(GZIP):
            data = gzip.decompress(data)
        for line in data.split(b"\n"):
            if line:
                yield line


# --- grouping and encoding --------------------------------------------------------------------


def _group_accepted(records: Iterable[ArchiveRecord]) -> dict[str, list[ArchiveRecord]]:
    groups: dict[str, list[ArchiveRecord]] = {}
    for record in records:
        prefix = f"{record.device_id}/{record.category}/"
        if prefix not in groups:
            _check_segment("device_id", record.device_id)
            _check_segment("category", record.category)
        groups.setdefault(prefix, []).append(record)
    return groups


def _group_rejected(records: Iterable[RejectedRecord]) -> dict[str, list[RejectedRecord]]:
    groups: dict[str, list[RejectedRecord]] = {}
    for record in records:
        prefix = f"{REJECTED_PREFIX}/{record.reason}/"
        if prefix not in groups:
            _check_segment("reason", record.reason)
        groups.setdefault(prefix, []).append(record)
    return groups


def _group_prefix(records: list[ArchiveRecord] | list[RejectedRecord]) -> str:
    """The key prefix of one group's records (checked: key-safe, and the same for all)."""
    groups: dict[str, Any] = (_group_accepted(records) if type(records[0]) is ArchiveRecord
                              else _group_rejected(records))  # type: ignore[arg-type]
    if len(groups) != 1:
        raise ValueError(f"one object's records span {len(groups)} groups")
    return next(iter(groups))


def _accepted_body(records: list[ArchiveRecord]) -> bytes:
    return b"".join(record.raw.translate(_NEWLINES_TO_SPACES) + b"\n" for record in records)


def _rejected_body(records: list[RejectedRecord]) -> bytes:
    return b"".join(_rejected_line(record) for record in records)


def _rejected_line(record: RejectedRecord) -> bytes:
    line: dict[str, Any] = {
        "received_ms": record.received_ms,
        "reason": record.reason,
        "detail": record.detail,
        "topic": record.topic,
        "device_id": record.device_id,
    }
    try:
        line["payload"] = record.raw.decode("utf-8")
    except UnicodeDecodeError:
        line["payload_b64"] = base64.b64encode(record.raw).decode("ascii")
    # ASCII JSON: control characters (no raw newline) and anything a topic or detail string may
    # hold that is not encodable UTF-8 come out as escapes, so encoding never fails.
    return json.dumps(line, separators=(",", ":")).encode("ascii") + b"\n"


# --- key time ---------------------------------------------------------------------------------


def _check_segment(what: str, value: str) -> None:
    if not _SEGMENT_RE.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not key-safe ({_SEGMENT_RE.pattern})")


def _time_path(ms: int) -> str:
    """'YYYY/MM/DD/HHMMSS' of a UTC instant in milliseconds."""
    return time.strftime("%Y/%m/%d/%H%M%S", time.gmtime(ms // 1000))


def _time_part(key: str) -> str:
    """The 'YYYY/MM/DD/HHMMSS-batch…' tail of a key, which sorts by time."""
    return "/".join(key.rsplit("/", 4)[1:])


def _key_seconds(key: str) -> int | None:
    """Seconds since the epoch encoded in a key's date partition and time prefix."""
    parts = key.rsplit("/", 4)
    if len(parts) != 5:
        return None
    year, month, day, name = parts[1:]
    clock = name[:6]
    if not (year + month + day + clock).isdigit() or name[6:7] != "-":
        return None
    fields = (int(year), int(month), int(day), int(clock[:2]), int(clock[2:4]), int(clock[4:]))
    return calendar.timegm((*fields, 0, 0, 0))


def _partition_prefixes(base: str, start_ms: int | None, end_ms: int | None) -> list[str]:
    """The list prefixes covering [start_ms, end_ms): one per day, one per month on long
    ranges, or the whole `base` when the range is open."""
    if start_ms is None or end_ms is None:
        return [base]
    first_day, last_day = start_ms // DAY_MS, (end_ms - 1) // DAY_MS
    days = [time.gmtime(day * 86_400) for day in range(first_day, last_day + 1)]
    if len(days) <= _MAX_DAY_PARTITIONS:
        return [f"{base}{time.strftime('%Y/%m/%d/', day)}" for day in days]
    months = dict.fromkeys(time.strftime("%Y/%m/", day) for day in days)
    return [f"{base}{month}" for month in months]
