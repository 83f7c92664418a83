"""The three sinks and the thread that feeds each from the spool.

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
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any, Generic, TypeVar

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.collector.alerts import AlertEngine
from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.collector.quality import QualityTracker
from iotmeter_tui.backend.collector.seqtrack import BootTrack, SeqTracker, Verdict
from iotmeter_tui.backend.collector.spool import (
    ACCEPTED,
    DUPLICATE,
    REJECTED,
    Position,
    Spool,
    SpoolRecord,
)
from iotmeter_tui.backend.control.ota_plan import target_state_for_report
from iotmeter_tui.backend.errors import PartialWriteError, StoreError
from iotmeter_tui.backend.stores.archive_writer import ArchiveRecord, ArchiveWriter, RejectedRecord
from iotmeter_tui.backend.stores.metadata import DeviceUpdate, MetadataStore, SeqState
from iotmeter_tui.backend.stores.timeseries import Point, TimeSeriesStore

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


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
# OTA reports after which the meter restarts on purpose: its offline is planned, not news.
PLANNED_REBOOT_STATES = frozenset({"installing", "rebooting"})


class Sink(ABC, Generic[R]):
    name: str
    draining = False  # set when the collector stops: take everything there is, now
    stop_by = float("inf")  # set with `draining`: the monotonic time the drain ends

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
        points = [
            # The values as parsed: every adapter stores them as floats, so a JSON 750 is
            # 750.0 there without a per-field conversion here.
            Point(r.device_id, r.device_type, r.ts, r.boot, r.seq, _data(r))
            for r in records
            if r.kind == ACCEPTED and r.msg_type == protocol.TELEMETRY
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
        self.writer.write_groups(self._groups(spool, records, end),
                                 max_pending_bytes=self.pending_bytes)

    def _groups(self, spool: Spool, objects: list[ArchiveObject], end: Position) -> Iterator[
            tuple[str, list[ArchiveRecord] | list[RejectedRecord]]]:
        for o in objects:
            # A segment of a large fleet takes longer than a stop's budget: past it, the
            # rest waits in the spool (the next start writes the segment again, overwriting).
            if self.draining and time.monotonic() > self.stop_by:
                raise StoreError(self.name, "stopping: the rest of the segment waits for the "
                                 "next start")
            yield self.batch_id(end.segment, o.part), self._records(spool, end.segment, o)

    @staticmethod
    def _records(spool: Spool, segment: int, o: ArchiveObject) -> list[
            ArchiveRecord] | list[RejectedRecord]:
        # Only what the archive keeps is held, not the spool records it is read from.
        frames = spool.read_frames(segment, zip(o.offsets, o.lengths, strict=True))
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


class _DeviceChange:
    """Everything one batch says about one device, folded into one registry update."""

    __slots__ = ("boot", "device_type", "fw_version", "heartbeat_s", "last_seen", "status",
                 "status_at")

    def __init__(self, last_seen: int) -> None:
        self.last_seen = last_seen
        self.device_type: str | None = None
        self.fw_version: str | None = None
        self.boot: int | None = None
        self.heartbeat_s: float | None = None
        self.status: str | None = None
        self.status_at: int | None = None

    def update(self, device_id: str) -> DeviceUpdate:
        return DeviceUpdate(device_id, self.last_seen, self.device_type, self.fw_version,
                            self.boot, self.heartbeat_s, self.status, self.status_at)


class RegistrySink(RecordSink):
    """Device registry, sequence tracking, alerts, command acks and OTA progress.

    Its cursor lives in the metadata store and moves in the same transaction as the registry
    and sequence state, so after a crash the state and the position always agree."""

    name = "registry"
    HOUSEKEEPING_S = 5.0
    # A write costs a row per device seen (registry and sequence state), whatever the batch
    # size: with 5,000 meters, writing as often as possible kept PostgreSQL's client busy
    # with the same rows over and over (bench/soak.py). So telemetry alone is written at most
    # this often; anything else (a hello, a status, a command or OTA report) goes at once.
    MIN_WRITE_INTERVAL_S = 2.0
    MAX_BATCH = 100_000

    def __init__(self, store: MetadataStore, cursor_name: str, tracker: SeqTracker,
                 alerts: AlertEngine, metrics: CollectorMetrics, *, collector: str = "",
                 shared: bool = False) -> None:
        self.store = store
        # Its own rows of device_seq_tracking. With a shared subscription each collector
        # sees part of every sequence, so its local gaps are mostly other collectors' share:
        # gap alerts and the gap metric then come from nowhere rather than from noise.
        self.collector = collector
        self.shared = shared
        self.cursor_name = cursor_name
        self.tracker = tracker
        self.alerts = alerts
        self.metrics = metrics
        self.current_boot: dict[str, int] = {}
        self.quality = QualityTracker()
        self._observed_end: Position | None = None
        self._next_housekeeping = 0.0
        self._next_write = 0.0
        self._news_written = 0  # spool.committed_news as of the last batch taken
        self._behind = False

    def next_batch(self, spool: Spool, cursor: Position) -> tuple[list[SpoolRecord], Position]:
        # Counted before reading: news counted here is committed, so the read includes it.
        news = spool.committed_news
        if (not self.draining and not self._behind and news == self._news_written
                and time.monotonic() < self._next_write):
            return [], cursor
        self._news_written = news
        # Everything committed, across segments (a read stops at a segment's end and after a
        # few MiB): one read per interval would leave a registry that fell behind, or one fed
        # short segments, behind for ever.
        records, end = spool.read(cursor, max_records=self.MAX_BATCH)
        while records and len(records) < self.MAX_BATCH:
            more, after = spool.read(end, max_records=self.MAX_BATCH - len(records))
            if not more:
                break
            records += more
            end = after
        # A full batch leaves more waiting: the next one goes at once (it is as large as a
        # batch gets, so this is no return to writing every device's row for a few records).
        self._behind = len(records) >= self.MAX_BATCH
        return records, end

    def load_cursor(self) -> Position | None:
        value = self.store.get_cursor(self.cursor_name)
        if not value:
            return None
        segment, offset = value.split(":")
        return Position(int(segment), int(offset))

    def save_cursor(self, position: Position) -> None:
        pass  # saved with the batch, in write()

    def restore(self, states: list[SeqState]) -> None:
        now = _now_ms()
        for s in states:
            self.tracker.restore(s.device_id, s.boot, BootTrack.restore(
                s.highest_seq, s.received, s.duplicates, s.gaps, now))
            self.current_boot[s.device_id] = max(s.boot, self.current_boot.get(s.device_id, -1))

    def write(self, records: list[SpoolRecord], end: Position) -> None:
        self._next_write = time.monotonic() + self.MIN_WRITE_INTERVAL_S
        # The tracker must see each record once: a retried batch (same end) was observed
        # already when its first attempt failed after observing.
        observe = end != self._observed_end
        self._observed_end = end
        changes: dict[str, _DeviceChange] = {}
        commands: list[tuple[str, dict[str, Any], int]] = []
        ota: list[tuple[str, dict[str, Any], int]] = []
        newest = 0
        if observe:
            for r in records:
                self.quality.observe(r)
                if r.kind != REJECTED and r.seq >= 0:
                    verdict = self.tracker.observe(r.device_id, r.boot, r.seq, r.received_ms)
                    if verdict is not Verdict.DUPLICATE:
                        self.current_boot[r.device_id] = max(
                            r.boot, self.current_boot.get(r.device_id, -1))
        for r in records:
            if r.kind != ACCEPTED:
                continue
            newest = max(newest, r.received_ms)
            change = changes.get(r.device_id)
            if change is None:
                change = changes[r.device_id] = _DeviceChange(r.received_ms)
            change.last_seen = max(change.last_seen, r.received_ms)
            self._fold(r, change, commands, ota)
        gaps = self.tracker.sweep(newest) if newest else 0
        self._flush(changes, commands, ota, end, gaps)

    def _fold(self, r: SpoolRecord, change: _DeviceChange,
              commands: list[tuple[str, dict[str, Any], int]],
              ota: list[tuple[str, dict[str, Any], int]]) -> None:
        data = _data(r)
        at = r.received_ms
        if r.msg_type == protocol.TELEMETRY:
            self._evaluate(self.alerts.on_telemetry, r, r.device_id, r.device_type, data, at,
                           r.ts)
            self._online(change, at)
        elif r.msg_type == protocol.HELLO:
            change.device_type = str(data["device_type"])
            change.fw_version = str(data["fw_version"])
            change.boot = r.boot
            change.heartbeat_s = float(data["heartbeat_s"])
            self._evaluate(self.alerts.on_hello, r, r.device_id, change.device_type, data, at)
            self._online(change, at)
        elif r.msg_type == protocol.STATUS:
            state = str(data["state"])
            # Sparkplug's rule: a death certificate from an earlier boot is stale. (The
            # protocol keeps no boot for a status, so it is read from the payload.)
            boot = json.loads(r.payload).get("boot") if state == "offline" else None
            if isinstance(boot, int) and boot < self.current_boot.get(r.device_id, -1):
                return
            change.status, change.status_at = state, at
            self.alerts.on_status(r.device_id, state, at)
        elif r.msg_type == protocol.COMMAND_ACK:
            commands.append((r.device_id, data, at))
            self._online(change, at)
            if data.get("result") == "accepted" and self._is_reboot(r.device_id,
                                                                    str(data["command_id"])):
                self.alerts.expect_reboot(r.device_id, "reboot command", at)
        elif r.msg_type == protocol.OTA_STATUS:
            ota.append((r.device_id, data, at))
            self._online(change, at)
            if data.get("state") in PLANNED_REBOOT_STATES:
                self.alerts.expect_reboot(r.device_id, "OTA install", at)

    def _is_reboot(self, device_id: str, command_id: str) -> bool:
        # One read per accepted command (operators' commands are rare next to telemetry).
        # Without it the reboot pages as an outage; the batch must not fail for it. Only the
        # device's own command counts: accepting another's reboot would silence its offline.
        try:
            command = self.store.get_command(command_id)
        except StoreError:
            return False
        return command is not None and command.name == "reboot" and (
            command.device_id == device_id)

    def _evaluate(self, rule: Callable[..., None], r: SpoolRecord, *args: Any) -> None:
        """Run the alert rules on one message. A rule that fails on some reading is a bug to
        log, not a reason to stop the registry: retrying the batch would fail the same way
        for ever, and status, commands and OTA would stop for the whole fleet."""
        try:
            rule(*args)
        except Exception:
            self.metrics.sink_failures.labels(self.name).inc()
            log.exception("alert rules failed on a message; its alerts are skipped", extra={
                "event": "alert_rule_failed", "device_id": r.device_id, "seq": r.seq})

    def _online(self, change: _DeviceChange, at: int) -> None:
        # Any message but a status says the device is connected now.
        if change.status != "online":
            change.status, change.status_at = "online", at

    def _flush(self, changes: dict[str, _DeviceChange],
               commands: list[tuple[str, dict[str, Any], int]],
               ota: list[tuple[str, dict[str, Any], int]], end: Position, gaps: int) -> None:
        # Command and OTA updates are guarded against going back from a final state, so
        # applying them again after a crash is harmless; they go before the cursor moves.
        for device_id, data, at in commands:
            result = str(data["result"])
            # Matched by device too: device B acknowledging A's command id changes nothing.
            self.store.update_command(str(data["command_id"]), state=result, at=at,
                                      result=result, detail=str(data.get("detail") or ""),
                                      device_id=device_id)
        for device_id, data, at in ota:
            # A reported "done" is not final yet: the next hello must show the new version.
            self.store.update_target(
                str(data["campaign_id"]), device_id,
                state=target_state_for_report(str(data["state"])), at=at,
                progress_pct=float(data.get("progress_pct", 0)),
                error=(str(data["error"]) if data.get("error") else None))
        changed = self.tracker.take_changed()
        try:
            self.alerts_for_gaps(changed)
            self.alerts.flush(_now_ms())
            self.store.apply_collector_batch(
                [c.update(d) for d, c in changes.items()],
                [self._state(d, b, t) for d, b, t in changed],
                cursor=(self.cursor_name, f"{end.segment}:{end.offset}"),
            )
            self._save_quality()
        except BaseException:
            # Not stored: mark them changed again so the retry writes them.
            self.tracker.mark_changed((d, b) for d, b, _ in changed)
            raise
        if gaps and not self.shared:
            self.metrics.gaps.inc(gaps)

    def alerts_for_gaps(self, changed: list[tuple[str, int, BootTrack]]) -> None:
        if self.shared:
            return
        for device_id, boot, track in changed:
            if boot == self.current_boot.get(device_id):
                self.alerts.on_gaps(device_id, track.gap_count, _now_ms())
                self.quality.gaps(device_id, track.gap_count, _now_ms())

    def close(self) -> None:
        # A clean stop keeps the last minute of learning too (flushes save once a minute).
        if self.alerts.anomaly is not None:
            self.alerts.anomaly.save(_now_ms(), force=True)

    def _save_quality(self) -> None:
        """Scores are advisory and rebuilt from memory on the next batch: a failed write is
        logged, never a reason to retry the registry batch."""
        anomaly = self.alerts.anomaly
        now = _now_ms()
        if anomaly is not None:
            for device_id, resets in anomaly.take_counter_resets().items():
                self.quality.counter_reset(device_id, now, resets)
        scores = self.quality.drain(now, anomaly.stuck_fields if anomaly else None)
        try:
            self.store.save_quality(scores)
        except StoreError as exc:
            log.warning("data-quality scores of %d devices not saved: %s", len(scores), exc)

    def _state(self, device_id: str, boot: int, track: BootTrack) -> SeqState:
        return SeqState(device_id, boot, track.highest, track.received, track.duplicates,
                        track.gap_count, track.ranges(), _now_ms(), self.collector)

    def housekeeping(self) -> None:
        # Silence detection and gap sweeps must run under sustained load too, not only when
        # the sink has caught up.
        now = time.monotonic()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + self.HOUSEKEEPING_S
        wall = _now_ms()
        gaps = self.tracker.sweep(wall)
        changed = self.tracker.take_changed()
        silent = self.store.mark_silent_offline(wall)
        for device_id in silent:
            self.alerts.on_status(device_id, "offline", wall)
        try:
            self.alerts_for_gaps(changed)
            self.alerts.flush(wall)
            if changed:
                self.store.apply_collector_batch([], [self._state(*c) for c in changed])
        except BaseException:
            self.tracker.mark_changed((d, b) for d, b, _ in changed)
            raise
        if gaps and not self.shared:
            self.metrics.gaps.inc(gaps)
        counts = self.store.device_counts_by_status()
        self.alerts.on_fleet_offline(counts.get("offline", 0), wall)
        self.metrics.devices_online.set(counts.get("online", 0))
        self.metrics.alerts_active.set(len(self.store.open_alerts()))


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
