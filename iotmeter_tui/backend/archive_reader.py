"""Streaming reads of the raw archive for operators and the API: a device's messages exactly
as received, and the rejected ones with why they were refused.

Objects are listed by key (stores/archive_writer.py: `{device_id}/{category}/YYYY/MM/DD/
HHMMSS-batch.ndjson[.gz]`, `_rejected/{reason}/...`), read one at a time and decompressed as a
stream, so memory stays at one object whatever the range.

Times. A key's time is when the collector *received* the object's first message; a raw line
carries only the device's own `ts`. `iter_raw` filters lines by `ts` and uses key times only
to skip objects far outside the range: objects received up to `slack_ms` (default one day)
before the start or after the end are read too, which covers devices that buffered while
offline or whose clocks drift. A message delivered later than that, or from a clock off by
more, is found with a wider slack or with no range. `iter_rejected` filters on each line's
`received_ms` (the collector's clock), so its range is exact.
"""

from __future__ import annotations

import gzip
import heapq
import io
import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Final

from iotmeter_tui.backend.protocol import MSG_TYPES, REJECTION_REASONS
from iotmeter_tui.backend.stores.archive import REJECTED_PREFIX, ArchiveStore
from iotmeter_tui.backend.stores.archive_writer import (
    GZIP,
    _check_segment,
    _key_seconds,
    _partition_prefixes,
    _time_part,
)

DEFAULT_SLACK_MS: Final = 86_400_000
# What the reader tells about what it could not read: (object key, why).
OnSkip = Callable[[str, str], None]


def _ignore(key: str, why: str) -> None:
    """The default OnSkip: the caller did not ask to hear about unreadable objects."""


def _keys(archive: ArchiveStore, base: str, start_ms: int | None, end_ms: int | None,
          slack_ms: int) -> Iterator[str]:
    """Keys under `base` whose time is in [start - slack, end + slack), oldest first."""
    low = None if start_ms is None else start_ms - slack_ms
    high = None if end_ms is None else end_ms + slack_ms
    if low is not None and high is not None and high <= low:
        return
    for prefix in _partition_prefixes(base, low, high):
        for key in archive.list(prefix):
            seconds = _key_seconds(key)
            if seconds is None:
                continue  # not written by ArchiveWriter
            if (low is None or seconds * 1000 >= low - 999) and (high is None or
                                                                  seconds * 1000 < high):
                yield key


def _lines(archive: ArchiveStore, key: str, on_skip: OnSkip) -> Iterator[bytes]:
    """The non-empty lines of one object. Objects are batches (kilobytes to a few MB), so
    one is decompressed whole, twice as fast as line by line; a damaged one is read again
    as a stream, to keep the lines before the damage."""
    try:
        data = archive.get(key)
    except KeyError:
        return  # removed (retention) between listing and reading
    if key.endswith(GZIP):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            yield from _salvage(key, data, on_skip)
            return
    for line in data.split(b"\n"):
        line = line.rstrip(b"\r")
        if line:
            yield line


def _salvage(key: str, data: bytes, on_skip: OnSkip) -> Iterator[bytes]:
    """The complete lines of a damaged gzip object up to the damage, then a report."""
    stream = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
    try:
        for line in stream:
            if line.endswith(b"\n") and line.rstrip(b"\r\n"):
                yield line.rstrip(b"\r\n")
    except (OSError, EOFError, zlib.error) as exc:
        on_skip(key, f"unreadable from this line on: {exc}")
        return
    on_skip(key, "unreadable: the object ends early")


def _ts(line: bytes) -> int | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    ts = value.get("ts") if isinstance(value, dict) else None
    return ts if type(ts) is int else None


def iter_raw(
    archive: ArchiveStore,
    device_id: str,
    *,
    category: str | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    slack_ms: int = DEFAULT_SLACK_MS,
    on_skip: OnSkip = _ignore,
) -> Iterator[bytes]:
    """The archived messages of a device (one category, or all), one NDJSON line each
    without its newline, exactly as received; with a range, those whose `ts` is in
    [start_ms, end_ms). Order: by object (receive time, then batch), then as written; the
    same archive always gives the same order. A line without a readable `ts` is left out
    when a range is given (reported to `on_skip`). ValueError for an id or category that
    cannot be in a key."""
    _check_segment("device_id", device_id)
    categories = [category] if category is not None else sorted(MSG_TYPES)
    per_category = []
    for name in categories:
        _check_segment("category", name)
        per_category.append(_keys(archive, f"{device_id}/{name}/", start_ms, end_ms, slack_ms))
    ranged = start_ms is not None or end_ms is not None
    for key in heapq.merge(*per_category, key=_order):
        for line in _lines(archive, key, on_skip):
            if not ranged:
                yield line
                continue
            ts = _ts(line)
            if ts is None:
                on_skip(key, "a line without a readable ts left out of a time range")
            elif (start_ms is None or ts >= start_ms) and (end_ms is None or ts < end_ms):
                yield line


def iter_rejected(
    archive: ArchiveStore,
    *,
    reason: str | None = None,
    device_id: str | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    slack_ms: int = 3_600_000,
    on_skip: OnSkip = _ignore,
) -> Iterator[dict[str, Any]]:
    """Rejected messages as the writer stored them: `received_ms`, `reason`, `detail`,
    `topic`, `device_id` and `payload` (text) or `payload_b64`. Filtered by reason, by the
    device id the rejection names, and by `received_ms` in [start_ms, end_ms); oldest object
    first. A line that is not such an object is reported to `on_skip` and left out.
    `slack_ms` bounds how long one written object can span (a batch: seconds)."""
    reasons = [reason] if reason is not None else sorted(REJECTION_REASONS)
    per_reason = []
    for name in reasons:
        _check_segment("reason", name)
        per_reason.append(_keys(archive, f"{REJECTED_PREFIX}/{name}/", start_ms, end_ms,
                                slack_ms))
    for key in heapq.merge(*per_reason, key=_order):
        for line in _lines(archive, key, on_skip):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or type(record.get("received_ms")) is not int:
                on_skip(key, "a line that is not a rejected-message record")
                continue
            at = record["received_ms"]
            if device_id is not None and record.get("device_id") != device_id:
                continue
            if (start_ms is None or at >= start_ms) and (end_ms is None or at < end_ms):
                yield record


def _order(key: str) -> tuple[str, str]:
    """Time first, then the whole key: stable when objects of two categories share a time."""
    return _time_part(key), key
