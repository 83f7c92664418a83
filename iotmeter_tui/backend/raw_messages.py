"""A device's latest raw messages and the rejected messages, for the dashboard: what the
archive holds (backend/archive_reader.py) plus what the collector has received but not
archived yet, read from the spool's segment files under the spool directory.

The spool is read read-only, frame by frame, and a frame whose CRC fails (a tail being
written) ends a segment's reading, as the collector's own recovery does; no lock is taken,
so the collector is never slowed. A message both archived and still in the spool (segments
are removed only once every sink is past them) is shown once: the same bytes are the same
message. Payloads are returned as received; making them safe for a terminal is the screen's
job."""

from __future__ import annotations

import base64
import json
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from iotmeter_tui.backend.archive_reader import iter_raw, iter_rejected
from iotmeter_tui.backend.collector.spool import ACCEPTED, REJECTED, SpoolRecord, valid_frames
from iotmeter_tui.backend.stores.archive import ArchiveStore

SPOOL_READ_BUDGET: Final = 64 << 20


@dataclass(frozen=True, slots=True)
class RawMessage:
    ts: int | None  # the device's clock (from the message), None when unreadable
    received_ms: int | None  # known for spool records only (the archive keeps the line)
    msg_type: str
    payload: bytes
    source: str  # "archive" or "spool"


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    received_ms: int
    reason: str
    detail: str
    device_id: str
    topic: str
    payload: bytes
    source: str


def iter_spool(spool_root: Path, since_ms: int = 0,
               budget_bytes: int = SPOOL_READ_BUDGET) -> Iterator[SpoolRecord]:
    """The complete records in the spool segments under `spool_root` (each collector's own
    directory is below it), newest segment first. Read-only. Segments last written before
    `since_ms` are skipped (nothing in them was received later), and reading stops after
    `budget_bytes`: a spool grown large during a store outage must not be read whole every
    few seconds for a screen."""
    if not spool_root.is_dir():
        return
    segments = []
    for path in spool_root.rglob("*.spool"):
        try:
            modified_ms = path.stat().st_mtime_ns // 1_000_000
        except OSError:
            continue  # released by the collector meanwhile
        if modified_ms >= since_ms:
            segments.append(path)
    for path in sorted(segments, key=lambda p: p.name, reverse=True):
        if budget_bytes <= 0:
            return
        try:
            data = path.read_bytes()
        except OSError:
            continue
        budget_bytes -= len(data)
        for _end, body in valid_frames(data):  # the tail being written is not committed
            try:
                yield SpoolRecord.decode(body)
            except (struct.error, UnicodeDecodeError):
                break


def _ts(payload: bytes) -> int | None:
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    ts = value.get("ts") if isinstance(value, dict) else None
    return ts if type(ts) is int else None


def _msg_type(payload: bytes) -> str:
    try:
        value = json.loads(payload)
    except ValueError:
        return "?"
    kind = value.get("msg_type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else "?"


# Archive objects received this long before the window's start are read too (a device that
# buffered while offline); the archive reader's default (a day) is too much for a screen.
SLACK_MS: Final = 300_000


def latest_raw(archive: ArchiveStore, spool_root: Path | None, device_id: str, *,
               since_ms: int, limit: int = 200) -> list[RawMessage]:
    """The device's newest `limit` messages (by the device's `ts`) since `since_ms`, newest
    first, from the archive and the spool."""
    found: dict[bytes, RawMessage] = {}
    for line in iter_raw(archive, device_id, start_ms=since_ms, slack_ms=SLACK_MS):
        found.setdefault(line, RawMessage(_ts(line), None, _msg_type(line), line, "archive"))
    if spool_root is not None:
        for r in iter_spool(spool_root, since_ms):
            if r.kind == ACCEPTED and r.device_id == device_id and r.payload not in found \
                    and (r.ts >= since_ms or r.ts <= 0):
                found[r.payload] = RawMessage(r.ts if r.ts > 0 else _ts(r.payload),
                                              r.received_ms, r.msg_type, r.payload, "spool")
    newest = sorted(found.values(), key=lambda m: (m.ts or 0), reverse=True)
    return newest[:limit]


def latest_rejected(archive: ArchiveStore, spool_root: Path | None, *,
                    since_ms: int, reason: str | None = None, device_id: str | None = None,
                    limit: int = 500) -> list[RejectedMessage]:
    """Rejected messages received since `since_ms`, newest first, optionally of one reason
    and one device (the id the rejection names), from the archive and the spool."""
    newest: deque[RejectedMessage] = deque(maxlen=limit)
    seen: set[tuple[int, bytes]] = set()
    for record in iter_rejected(archive, reason=reason, device_id=device_id,
                                start_ms=since_ms, slack_ms=SLACK_MS):
        message = _from_archive(record)
        seen.add((message.received_ms, message.payload))
        newest.append(message)
    spooled = []
    if spool_root is not None:
        for r in iter_spool(spool_root, since_ms):
            if r.kind != REJECTED or r.received_ms < since_ms:
                continue
            if (reason is not None and r.reason != reason) or \
                    (device_id is not None and r.device_id != device_id):
                continue
            if (r.received_ms, r.payload) in seen:
                continue
            spooled.append(RejectedMessage(r.received_ms, r.reason, r.detail, r.device_id,
                                           r.topic, r.payload, "spool"))
    merged = sorted([*newest, *spooled], key=lambda m: m.received_ms, reverse=True)
    return merged[:limit]


def _from_archive(record: dict[str, Any]) -> RejectedMessage:
    payload = record.get("payload")
    if isinstance(payload, str):
        raw = payload.encode("utf-8", "surrogateescape")
    else:
        try:
            raw = base64.b64decode(str(record.get("payload_b64") or ""))
        except ValueError:
            raw = b""
    return RejectedMessage(int(record["received_ms"]), str(record.get("reason") or ""),
                           str(record.get("detail") or ""), str(record.get("device_id") or ""),
                           str(record.get("topic") or ""), raw, "archive")
