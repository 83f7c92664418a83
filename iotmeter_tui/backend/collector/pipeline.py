"""Intake -> validate -> dedup -> spool -> acknowledge, on one thread.

Each turn drains what has arrived, decides every message (accept, reject with a reason, or drop
as a duplicate), appends the records to the spool, commits them with one fsync (group commit)
and only then acknowledges the whole turn to the broker. When the spool cannot take a turn
(full bound or full disk) the turn is held and retried: nothing is acknowledged, so the broker
keeps the messages — back-pressure, never loss.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.collector.intake import Delivery, Inbox
from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.collector.seqtrack import SeqTracker, Verdict
from iotmeter_tui.backend.collector.spool import (
    DUPLICATE,
    REJECTED,
    Spool,
    SpoolFull,
    SpoolRecord,
)

log = logging.getLogger(__name__)

MAX_TURN = 5_000  # messages per group commit; bounds the latency one fsync adds
# Device types with a field budget of their own; telemetry of further types (a type is a label
# any device may claim in its hello) shares one more budget, so the stores' field names stay
# bounded at (FIELD_BUDGET_TYPES + 1) x IOTMETER_FIELD_BUDGET whatever devices claim.
FIELD_BUDGET_TYPES = 8
_OTHER_TYPES = "*"


class DeviceDirectory:
    """What the pipeline knows of the registry: each device's type, and which devices exist
    (for IOTMETER_AUTO_REGISTER=false). Seeded from the metadata store, kept current from the
    hello messages the pipeline itself sees."""

    def __init__(self, types: dict[str, str] | None = None) -> None:
        self.types: dict[str, str] = dict(types or {})

    def type_of(self, device_id: str) -> str:
        return self.types.get(device_id, "unknown")

    def merge(self, types: dict[str, str]) -> None:
        for device_id, device_type in types.items():
            if self.types.get(device_id, "unknown") == "unknown" or device_type != "unknown":
                self.types[device_id] = device_type


class Decider:
    """The pure part of a turn: turns messages into spool records, counting as it goes."""

    def __init__(self, tracker: SeqTracker, directory: DeviceDirectory,
                 metrics: CollectorMetrics, *, auto_register: bool,
                 field_budget: int = 64) -> None:
        self.tracker = tracker
        self.directory = directory
        self.metrics = metrics
        self.auto_register = auto_register
        # Telemetry field names admitted per device type: learned since
        # this collector started; a name beyond the budget is a field_budget rejection.
        self.field_budget = field_budget
        self._fields_by_type: dict[str, set[str]] = {}
        # Counted per message in plain Python and handed to Prometheus once per turn
        # (publish_counts): its counters take a lock per increment.
        self._accepted: Counter[str] = Counter()
        # Every type's series exists from the start, at zero.
        self._accepted_total = {t: metrics.accepted.labels(t) for t in protocol.MSG_TYPES}
        self._rejected_by_reason: Counter[str] = Counter()
        self._duplicates = 0
        self.duplicates_total = 0  # since the start, for the health snapshot
        self._lags: list[float] = []
        # Last status (ts, payload) per device: a retained status the broker sends again is
        # the same message, not a new one.
        self.last_status: dict[str, bytes] = {}

    def decide(self, topic: str, payload: bytes, received_ms: int) -> SpoolRecord | None:
        """A record to spool: the message, its rejection, or a duplicate's marker. None for a
        status message seen already (a retained one sent again)."""
        result = protocol.decode(topic, payload)
        if isinstance(result, protocol.Rejection):
            # result.raw: the payload, or only its head when it is too large.
            return self._rejected(topic, result.raw, received_ms, result.reason, result.detail,
                                  result.device_id)
        msg = result
        if not self.auto_register and msg.device_id not in self.directory.types:
            return self._rejected(topic, payload, received_ms, "unknown_device",
                                  f"{msg.device_id} is not registered", msg.device_id)
        if msg.msg_type == protocol.TELEMETRY:
            # Before dedup: a refused message is not received, its seq stays missing.
            known = self._fields_by_type.get(self.directory.type_of(msg.device_id))
            if known is None or not known.issuperset(msg.data):  # set op at C speed
                problem = self._admit_fields(msg.device_id, msg.data)
                if problem is not None:
                    return self._rejected(topic, payload, received_ms, "field_budget", problem,
                                          msg.device_id)
        if msg.seq is not None and msg.boot is not None:
            verdict = self.tracker.observe(msg.device_id, msg.boot, msg.seq, received_ms)
            if verdict is Verdict.DUPLICATE:
                self._duplicates += 1
                return SpoolRecord.duplicate(received_ms=received_ms, device_id=msg.device_id,
                                             msg_type=msg.msg_type, boot=msg.boot,
                                             seq=msg.seq, ts=msg.ts)
        elif msg.msg_type == protocol.STATUS:
            if self.last_status.get(msg.device_id) == msg.raw:
                self._duplicates += 1
                return None
            self.last_status[msg.device_id] = msg.raw
        if msg.msg_type == protocol.HELLO:
            self.directory.types[msg.device_id] = str(msg.data["device_type"])
        elif msg.msg_type == protocol.TELEMETRY:
            self._lags.append(max(0.0, (received_ms - msg.ts) / 1000))
        self._accepted[msg.msg_type] += 1
        return SpoolRecord.accepted(
            received_ms=received_ms, device_id=msg.device_id, msg_type=msg.msg_type,
            device_type=self.directory.type_of(msg.device_id), boot=msg.boot, seq=msg.seq,
            ts=msg.ts, payload=payload, data=msg.data)

    def _admit_fields(self, device_id: str, data: dict[str, object]) -> str | None:
        """Admit `data`'s new field names into its device type's budget, all or none; why
        not, or None."""
        device_type = self.directory.type_of(device_id)
        group = device_type
        if group not in self._fields_by_type and len(self._fields_by_type) >= FIELD_BUDGET_TYPES:
            group = _OTHER_TYPES
        known = self._fields_by_type.setdefault(group, set())
        new = [name for name in data if name not in known]
        if len(known) + len(new) > self.field_budget:
            shared = " (shared by further types)" if group == _OTHER_TYPES else ""
            return (f"{len(new)} new field name(s) such as {new[0]!r} would take type "
                    f"{device_type!r} past its budget of {self.field_budget} names{shared}")
        known.update(new)
        return None

    def decide_oversized(self, topic: str, prefix: bytes, size: int,
                         received_ms: int) -> SpoolRecord:
        """The rejection of a message the intake skipped for its size: its head only."""
        rejection = protocol.too_large(topic, prefix, size)
        return self._rejected(topic, rejection.raw, received_ms, rejection.reason,
                              rejection.detail, rejection.device_id)

    def _rejected(self, topic: str, payload: bytes, received_ms: int, reason: str, detail: str,
                  device_id: str | None) -> SpoolRecord:
        self._rejected_by_reason[reason] += 1
        return SpoolRecord.rejected(received_ms=received_ms, topic=topic, reason=reason,
                                    detail=detail, payload=payload, device_id=device_id)

    def publish_counts(self) -> None:
        """Add what was counted since the last call to the Prometheus metrics."""
        m = self.metrics
        for msg_type, n in self._accepted.items():
            self._accepted_total[msg_type].inc(n)
        for reason, n in self._rejected_by_reason.items():
            m.rejected.labels(reason).inc(n)
        if self._duplicates:
            m.duplicates.inc(self._duplicates)
            self.duplicates_total += self._duplicates
        m.lag.observe_many(self._lags)
        self._accepted.clear()
        self._rejected_by_reason.clear()
        self._duplicates = 0
        self._lags = []

    def replay(self, record: SpoolRecord) -> None:
        """Learn from a record spooled before a restart, so its redelivery is a duplicate."""
        if record.kind == REJECTED:
            return
        if record.seq >= 0:
            self.tracker.observe(record.device_id, record.boot, record.seq, record.received_ms)
        if record.kind == DUPLICATE:
            return
        if record.msg_type == protocol.STATUS:
            self.last_status[record.device_id] = record.payload
        if record.msg_type == protocol.HELLO:
            result = protocol.decode(
                protocol.device_topic(record.device_id, record.msg_type), record.payload)
            if isinstance(result, protocol.Message):
                self.directory.types[record.device_id] = str(result.data["device_type"])


class Pipeline(threading.Thread):
    """The thread that owns the spool's write side."""

    def __init__(
        self,
        inbox: Inbox,
        decider: Decider,
        spool: Spool,
        ack: Callable[[list[Delivery]], None],
        metrics: CollectorMetrics,
        *,
        on_commit: Callable[[], None] = lambda: None,
        retry_s: float = 1.0,
    ) -> None:
        super().__init__(name="iotmeter-pipeline", daemon=True)
        self.inbox = inbox
        self.decider = decider
        self.spool = spool
        self.ack = ack
        self.metrics = metrics
        self.on_commit = on_commit
        self.retry_s = retry_s
        self.stopping = threading.Event()
        self.idle = threading.Event()  # set when the inbox is empty and nothing is held
        self.full_since: float | None = None
        # Plain counts beside the Prometheus ones, for the health snapshot (another thread
        # reads them; an int attribute is read whole).
        self.received = 0
        self.acked = 0

    def run(self) -> None:
        while True:
            deliveries = self._take()
            if not deliveries:
                self.idle.set()
                self.spool.roll_if_due()
                if self.stopping.is_set():
                    return
                continue
            self.idle.clear()
            self._turn(deliveries)

    def _take(self) -> list[Delivery]:
        try:
            first = self.inbox.get(timeout=0.05)
        except queue.Empty:
            return []
        deliveries = [first]
        count = first.count
        while count < MAX_TURN:
            try:
                more = self.inbox.get_nowait()
            except queue.Empty:
                break
            deliveries.append(more)
            count += more.count
        return deliveries

    def _seal_for_release(self) -> None:
        """Seal the active segment if it holds data: only sealed segments are taken by the
        archive and released, so a spool full inside its active segment would never free."""
        if self.spool.committed_size(self.spool.active_segment) == 0:
            return
        try:
            self.spool.roll()
        except OSError as exc:  # a full disk may refuse even a new empty file
            log.warning("spool segment not sealed, will retry", extra={
                "event": "spool_roll_failed", "error": str(exc)})

    def _turn(self, deliveries: list[Delivery]) -> None:
        count = sum(d.count for d in deliveries)
        self.metrics.received.inc(count)
        self.received += count
        decide = self.decider.decide
        records = [r for d in deliveries for p in d.publishes
                   if (r := decide(p.topic, p.payload, d.received_ms)) is not None]
        for d in deliveries:
            if d.oversized:
                records += [self.decider.decide_oversized(o.topic, o.prefix, o.size,
                                                          d.received_ms) for o in d.oversized]
        self.decider.publish_counts()
        while True:
            try:
                if records:
                    self.spool.append(records)
                    self.spool.commit()
                break
            except SpoolFull as exc:
                if self.stopping.is_set():
                    return  # unacknowledged: the broker sends them again after the restart
                # Held, not dropped: the broker redelivers nothing we have not acknowledged,
                # and the sinks free space as they take segments.
                if self.full_since is None:
                    self.full_since = time.monotonic()
                    self.metrics.spool_full.set(1)
                    log.error("spool full: holding acknowledgements",
                              extra={"event": "spool_full", "detail": str(exc)})
                self._seal_for_release()
                time.sleep(self.retry_s)
        if self.full_since is not None:
            log.warning("spool has room again", extra={
                "event": "spool_resumed", "held_s": round(time.monotonic() - self.full_since, 1)})
            self.full_since = None
            self.metrics.spool_full.set(0)
        self.ack(deliveries)
        self.metrics.acked.inc(count)
        self.acked += count
        self.on_commit()
        self.spool.roll_if_due()
