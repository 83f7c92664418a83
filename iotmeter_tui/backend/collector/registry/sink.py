"""The registry sink: one cursor, kept in the metadata store and moved in the same
transaction as the device rows and sequence state, so after a crash the state and the
position always agree. It routes each message to the part that handles it and decides when
a batch is written."""

from __future__ import annotations

import time

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.collector.alerts import AlertEngine
from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.collector.registry.alerting import AlertFeed, QualityFeed
from iotmeter_tui.backend.collector.registry.decoded import content
from iotmeter_tui.backend.collector.registry.devices import (
    DeviceChange,
    DeviceFold,
    KnownDevices,
)
from iotmeter_tui.backend.collector.registry.reports import DeviceReports
from iotmeter_tui.backend.collector.registry.sequence import Changed, SequenceLedger
from iotmeter_tui.backend.collector.registry.silence import SilenceWatch
from iotmeter_tui.backend.collector.seqtrack import SeqTracker
from iotmeter_tui.backend.collector.sinks import RecordSink
from iotmeter_tui.backend.collector.spool import ACCEPTED, Position, Spool, SpoolRecord
from iotmeter_tui.backend.stores.metadata import MetadataStore, SeqState


def _now_ms() -> int:
    return int(time.time() * 1000)


class RegistrySink(RecordSink):
    """Device registry, sequence tracking, alerts, command acks and OTA progress, each done
    by a part of its own (this package); this class keeps the cursor and the batch."""

    name = "registry"
    HOUSEKEEPING_S = 5.0
    # A write costs a row per device seen (registry and sequence state), whatever the batch
    # size: with 5,000 meters, writing as often as possible kept PostgreSQL's client busy
    # with the same rows over and over (bench/soak.py). So telemetry and heartbeat hellos
    # are written at most this often; news (a status, a command or OTA report, a hello that
    # changes the device's row) goes at once.
    MIN_WRITE_INTERVAL_S = 2.0
    # Nothing committed for this long while records wait: the load has stopped (or paused),
    # and waiting out the interval would only leave the registry behind for nothing.
    IDLE_S = 0.3
    # A batch read back from the spool file (the registry more than the spool's in-memory
    # tail behind) holds its records decoded: 100,000 of them are a 60-100 MiB step in the
    # 5,000-meter soak's RSS. Smaller batches cost more per record (a row per device each):
    # with 20,000 the registry fell further behind every minute, with 50,000 it stayed
    # 35-45 s behind (docs/performance.md, round seven).
    MAX_BATCH = 100_000

    def __init__(self, store: MetadataStore, cursor_name: str, tracker: SeqTracker,
                 alerts: AlertEngine, metrics: CollectorMetrics, *, collector: str = "",
                 shared: bool = False) -> None:
        self.store = store
        self.cursor_name = cursor_name
        self.metrics = metrics
        # With a shared subscription each collector sees part of every sequence, so its
        # local gaps are mostly other collectors' share: gap alerts and the gap metric then
        # come from nowhere rather than from noise.
        self.shared = shared
        self.sequence = SequenceLedger(tracker, collector)
        self.alerts = AlertFeed(alerts, metrics, self.name)
        self.quality = QualityFeed(store, alerts)
        self.silence = SilenceWatch(store, self.alerts, metrics)
        self._observed_end: Position | None = None
        self._next_housekeeping = 0.0
        self._next_write = 0.0
        self._news_written = 0  # spool.committed_news as of the last look for news
        self._looked_to: Position | None = None  # records up to here hold no news
        self._head = Position(-1, 0)  # the spool's committed end when last looked at
        self._head_since = 0.0
        self._behind = False
        self.known = KnownDevices()

    # --- the cursor and the batch ---------------------------------------------------------

    def load_cursor(self) -> Position | None:
        value = self.store.get_cursor(self.cursor_name)
        if not value:
            return None
        segment, offset = value.split(":")
        return Position(int(segment), int(offset))

    def save_cursor(self, position: Position) -> None:
        pass  # saved with the batch, in write()

    def restore(self, states: list[SeqState]) -> None:
        self.sequence.restore(states)

    def next_batch(self, spool: Spool, cursor: Position) -> tuple[list[SpoolRecord], Position]:
        # Counted before reading: news counted here is committed, so the read includes it.
        news = spool.committed_news
        now = time.monotonic()
        if (not self.draining and not self._behind and now < self._next_write
                and not self._idle(spool, cursor, now)):
            if news == self._news_written:
                return [], cursor
            self._news_written = news
            if not self._news_since(spool, cursor):
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

    def _idle(self, spool: Spool, cursor: Position, now: float) -> bool:
        """Whether records wait behind `cursor` while nothing new was committed for
        IDLE_S (under load, commits follow each other within milliseconds)."""
        active = spool.active_segment
        head = Position(active, spool.committed_size(active))
        if head != self._head:
            self._head, self._head_since = head, now
            return False
        return now - self._head_since >= self.IDLE_S and cursor < head

    def _news_since(self, spool: Spool, cursor: Position) -> bool:
        """Whether what was committed since the last look holds news. Only the new records
        are looked at (from the spool's in-memory tail, as a rule)."""
        position = cursor if self._looked_to is None or self._looked_to < cursor else (
            self._looked_to)
        while True:
            records, end = spool.read(position, max_records=self.MAX_BATCH)
            if not records:
                return False
            self._looked_to = position = end
            for r in records:
                if r.kind != ACCEPTED or r.msg_type == protocol.TELEMETRY:
                    continue
                if r.msg_type != protocol.HELLO or self.known.changed_by(r, content(r).data):
                    return True

    def write(self, records: list[SpoolRecord], end: Position) -> None:
        self._next_write = time.monotonic() + self.MIN_WRITE_INTERVAL_S
        # Sequence and quality must see each record once: a retried batch (same end) was
        # observed already when its first attempt failed after observing.
        if end != self._observed_end:
            self.quality.observe(records)
            self.sequence.observe(records)
        self._observed_end = end
        devices = DeviceFold()
        reports = DeviceReports(self.store, self.alerts)
        newest = 0
        changes = devices.changes
        telemetry = self.alerts.telemetry
        for r in records:
            if r.kind != ACCEPTED:
                continue
            at = r.received_ms
            if at > newest:
                newest = at
            if r.msg_type != protocol.TELEMETRY:
                self._route(r, devices, reports)
                continue
            # Telemetry is nearly every record, so its way is written out here rather than
            # in calls: DeviceFold.seen and DeviceFold.online.
            change = changes.get(r.device_id)
            if change is None:
                change = changes[r.device_id] = DeviceChange(at)
            elif at > change.last_seen:
                change.last_seen = at
            data = r.data
            if data is None:
                data = content(r).data
            telemetry(r, data)
            if change.status != "online":
                change.status, change.status_at = "online", at
        gaps = self.sequence.sweep(newest) if newest else 0
        # Before the cursor moves: applying them again after a crash is harmless.
        reports.store_all()
        changed = self.sequence.take_changed()
        try:
            self._gap_alerts(changed)
            self.alerts.flush(_now_ms())
            updates = devices.updates()
            self.store.apply_collector_batch(
                updates, self.sequence.states(changed),
                cursor=(self.cursor_name, f"{end.segment}:{end.offset}"),
            )
        except BaseException:
            self.sequence.give_back(changed)
            raise
        self.known.remember(updates)
        self.quality.save()
        if gaps and not self.shared:
            self.metrics.gaps.inc(gaps)

    def _route(self, r: SpoolRecord, devices: DeviceFold, reports: DeviceReports) -> None:
        """One accepted message other than telemetry (write() takes those) to the parts it
        concerns."""
        change = devices.seen(r)
        at = r.received_ms
        msg_type = r.msg_type
        data, status_boot = content(r)
        if msg_type == protocol.HELLO:
            devices.hello(change, r, data)
            self.alerts.hello(r, str(change.device_type), data)
            devices.online(change, at)
        elif msg_type == protocol.STATUS:
            state = str(data["state"])
            if state == "offline" and self.sequence.is_stale(r.device_id, status_boot):
                return
            devices.status(change, state, at)
            self.alerts.status(r.device_id, state, at)
        elif msg_type == protocol.COMMAND_ACK:
            reports.command_ack(r, data)
            devices.online(change, at)
        elif msg_type == protocol.OTA_STATUS:
            reports.ota_status(r, data)
            devices.online(change, at)

    def _gap_alerts(self, changed: Changed) -> None:
        if self.shared:
            return
        # Every device of the batch is here: one clock read for all, the calls bound once.
        now = _now_ms()
        is_current, alert, score = self.sequence.is_current, self.alerts.gaps, self.quality.gaps
        for device_id, boot, track in changed:
            if is_current(device_id, boot):
                alert(device_id, track.gap_count, now)
                score(device_id, track.gap_count, now)

    # --- between batches --------------------------------------------------------------------

    def housekeeping(self) -> None:
        # Silence detection and gap sweeps must run under sustained load too, not only when
        # the sink has caught up.
        now = time.monotonic()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + self.HOUSEKEEPING_S
        wall = _now_ms()
        gaps = self.sequence.sweep(wall)
        changed = self.sequence.take_changed()
        try:
            self.known.forget_status(self.silence.mark_silent(wall))
            self._gap_alerts(changed)
            self.alerts.flush(wall)
            if changed:
                self.store.apply_collector_batch([], self.sequence.states(changed))
        except BaseException:
            self.sequence.give_back(changed)
            raise
        if gaps and not self.shared:
            self.metrics.gaps.inc(gaps)
        self.silence.report_fleet(wall)

    def close(self) -> None:
        self.alerts.close()
