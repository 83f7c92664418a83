"""The registry sink against a real SQLite metadata store: a batch that fails to store is
retried without counting anything twice."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.collector.alerts import AlertEngine
from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.collector.registry import RegistrySink
from iotmeter_tui.backend.collector.seqtrack import SeqTracker
from iotmeter_tui.backend.collector.spool import (
    ACCEPTED,
    DUPLICATE,
    Position,
    Spool,
    SpoolRecord,
)
from iotmeter_tui.backend.errors import StoreUnavailable
from iotmeter_tui.backend.stores.factory import open_metadata
from iotmeter_tui.backend.stores.metadata import Command, MetadataStore
from testsupport.fleet import hello, telemetry


class FailsOnce:
    """The real store, whose first collector batch fails as an outage would."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self.failed = False

    def apply_collector_batch(self, *args: Any, **kwargs: Any) -> None:
        if not self.failed:
            self.failed = True
            raise StoreUnavailable("sqlite", "database is locked")
        self._store.apply_collector_batch(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def record(seq: int, kind: int = ACCEPTED, received_ms: int | None = None) -> SpoolRecord:
    """Received at `received_ms` (1,000 + seq by default: long ago)."""
    _topic, payload = telemetry("dc-0001", 1, seq)
    at = 1_000 + seq if received_ms is None else received_ms
    if kind == DUPLICATE:
        return SpoolRecord.duplicate(received_ms=at, device_id="dc-0001", msg_type="telemetry",
                                     boot=1, seq=seq, ts=1_000 + seq)
    return SpoolRecord.accepted(received_ms=at, device_id="dc-0001", msg_type="telemetry",
                                device_type="power_meter_dc", boot=1, seq=seq, ts=1_000 + seq,
                                payload=payload)


def now_ms() -> int:
    return int(time.time() * 1000)


def test_a_retried_batch_is_counted_once(tmp_path: Path) -> None:
    store = open_metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    flaky = FailsOnce(store)
    sink = RegistrySink(flaky, "test/registry", SeqTracker(5_000),  # type: ignore[arg-type]
                        AlertEngine(store), CollectorMetrics())
    batch = [record(0), record(1), record(1, DUPLICATE), record(3)]
    end = Position(1, 400)
    with pytest.raises(StoreUnavailable):
        sink.write(batch, end)
    assert flaky.failed
    assert store.get_cursor("test/registry") is None  # nothing stored, cursor not moved
    sink.write(batch, end)  # the runner retries the very same batch
    (state,) = store.load_seq_states(["dc-0001"])
    assert (state.highest_seq, state.received, state.duplicates) == (3, 3, 1)
    assert state.gaps == ((2, 2),)
    assert store.get_cursor("test/registry") == "1:400"
    device = store.get_device("dc-0001")
    assert device is not None and device.connection_status == "online"
    store.close()


class BrokenRule(AlertEngine):
    """The real engine with a bug planted in one reading's evaluation."""

    def on_telemetry(self, device_id: str, device_type: str, data: Any, at: int,
                     ts: int | None = None) -> None:
        if data.get("seq_marker") == 1:
            raise ValueError("math domain error")
        super().on_telemetry(device_id, device_type, data, at, ts)


def test_an_alert_rule_that_fails_does_not_stop_the_registry(tmp_path: Path) -> None:
    store = open_metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    metrics = CollectorMetrics()
    sink = RegistrySink(store, "test/registry", SeqTracker(5_000), BrokenRule(store), metrics)
    sink.write([record(0), record(1), record(2)], Position(1, 300))
    # Stored and moved on: retrying would fail the same way for ever.
    assert store.get_cursor("test/registry") == "1:300"
    (state,) = store.load_seq_states(["dc-0001"])
    assert (state.highest_seq, state.received) == (2, 3)
    assert metrics.sample("iotmeter_sink_failures_total", {"sink": "registry"}) == 1
    store.close()


def test_telemetry_alone_waits_for_the_write_interval_news_does_not(tmp_path: Path) -> None:
    store = open_metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    sink = RegistrySink(store, "test/registry", SeqTracker(5_000), AlertEngine(store),
                        CollectorMetrics())
    cursor = spool.start()
    spool.append([record(0, received_ms=now_ms())])
    spool.commit()
    batch, cursor = sink.next_batch(spool, cursor)
    sink.write(batch, cursor)  # the first write starts the interval
    spool.append([record(1, received_ms=now_ms())])
    spool.commit()
    assert sink.next_batch(spool, cursor) == ([], cursor)  # telemetry only: it waits
    _topic, payload = hello("dc-0001", 1, 2)
    spool.append([SpoolRecord.accepted(received_ms=now_ms(), device_id="dc-0001",
                                       msg_type=protocol.HELLO, device_type="power_meter_dc",
                                       boot=1, seq=2, ts=1_002, payload=payload)])
    spool.commit()
    batch, end = sink.next_batch(spool, cursor)  # news: at once, with what waited before it
    assert [r.seq for r in batch] == [1, 2]
    sink.write(batch, end)
    spool.append([record(3, received_ms=now_ms())])
    spool.commit()
    assert sink.next_batch(spool, end)[0] == []
    sink.draining = True  # the collector stops: everything now
    assert [r.seq for r in sink.next_batch(spool, end)[0]] == [3]
    store.close()


def test_a_batch_takes_everything_committed_across_segments(tmp_path: Path) -> None:
    """A read stops at a segment's end, so a registry behind by many segments (after an
    outage, or with segments sealed early) would catch up one segment per write interval, and
    never: a batch goes on into the following segments."""
    store = open_metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    sink = RegistrySink(store, "test/registry", SeqTracker(5_000), AlertEngine(store),
                        CollectorMetrics())
    cursor = spool.start()
    for seq in range(5):  # five sealed segments, then the active one
        spool.append([record(seq, received_ms=now_ms())])
        spool.commit()
        spool.roll()
    spool.append([record(5, received_ms=now_ms())])
    spool.commit()
    batch, cursor = sink.next_batch(spool, cursor)
    assert [r.seq for r in batch] == [0, 1, 2, 3, 4, 5]
    assert cursor == Position(spool.active_segment, spool.committed_size(spool.active_segment))
    sink.write(batch, cursor)
    spool.append([record(6, received_ms=now_ms())])
    spool.commit()
    assert sink.next_batch(spool, cursor) == ([], cursor)  # telemetry only: the interval
    store.close()


def test_a_full_batch_is_followed_at_once(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch cut at MAX_BATCH leaves more committed behind it: the next one does not wait
    for the write interval (it is as large as a batch gets, so writing it at once costs no
    more per record)."""
    monkeypatch.setattr(RegistrySink, "MAX_BATCH", 3)
    store = open_metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    sink = RegistrySink(store, "test/registry", SeqTracker(5_000), AlertEngine(store),
                        CollectorMetrics())
    cursor = spool.start()
    for seq in range(7):  # (a read from memory takes whole commits)
        spool.append([record(seq, received_ms=now_ms())])
        spool.commit()
    taken = []
    for _ in range(3):
        batch, cursor = sink.next_batch(spool, cursor)
        sink.write(batch, cursor)
        taken.append([r.seq for r in batch])
    assert taken == [[0, 1, 2], [3, 4, 5], [6]]
    spool.append([record(7, received_ms=now_ms())])
    spool.commit()
    assert sink.next_batch(spool, cursor) == ([], cursor)  # not full: the interval again
    store.close()


def _message(device_id: str, msg_type: str, data: dict[str, Any], boot: int, seq: int,
             at: int) -> SpoolRecord:
    payload = protocol.encode_device_message(device_id, msg_type, data, ts=at, boot=boot,
                                             seq=seq)
    return SpoolRecord.accepted(received_ms=at, device_id=device_id, msg_type=msg_type,
                                device_type="power_meter_dc", boot=boot, seq=seq, ts=at,
                                payload=payload)


def test_planned_reboots_do_not_page_and_one_that_does_not_return_does(tmp_path: Path) -> None:
    """Issue 16, finding 2, through the registry sink: an OTA install and an accepted reboot
    command announce the offline that follows; a meter that comes back raises nothing, one
    that stays away past the bound raises one offline alert."""
    from iotmeter_tui.backend.stores.metadata import Command

    store = open_metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    engine = AlertEngine(store, planned_reboot_ms=60_000, group_min=5, group_window_ms=10_000)
    sink = RegistrySink(store, "test/registry", SeqTracker(5_000), engine, CollectorMetrics())
    t = now_ms()
    store.create_command(Command("cmd-1", "dc-0003", "reboot", {}, "sent", t, t, None))
    hello_data = {"device_type": "power_meter_dc", "fw_version": "1.0.0", "heartbeat_s": 30.0,
                  "uptime_s": 0}
    ota = {"campaign_id": "c-1", "fw_version": "1.1.0", "progress_pct": 100, "error": None}
    first = []
    for n in (1, 2):
        device = f"dc-000{n}"
        first += [_message(device, protocol.HELLO, hello_data, 1, 0, t),
                  _message(device, protocol.OTA_STATUS, dict(ota, state="installing"), 1, 1,
                           t + 1),
                  _message(device, protocol.STATUS, {"state": "offline"}, 1, -1, t + 2)]
    first += [_message("dc-0003", protocol.HELLO, hello_data, 1, 0, t),
              _message("dc-0003", protocol.COMMAND_ACK,
                       {"command_id": "cmd-1", "result": "accepted", "detail": "rebooting"},
                       1, 1, t + 1),
              _message("dc-0003", protocol.STATUS, {"state": "offline"}, 1, -1, t + 2)]
    sink.write(first, Position(1, 100))
    # dc-0001 and dc-0003 come back with a new boot; dc-0002 does not.
    sink.write([_message(d, protocol.HELLO, hello_data, 2, 0, t + 20_000)
                for d in ("dc-0001", "dc-0003")], Position(1, 200))
    engine.flush(t + 59_000)
    assert store.open_alerts() == []
    engine.flush(t + 61_000)
    [alert] = store.open_alerts()
    assert (alert.device_id, alert.rule) == ("dc-0002", "offline")
    assert "planned reboot (OTA install)" in alert.message


def _ack_record(device_id: str, seq: int, command_id: str) -> SpoolRecord:
    payload = protocol.encode_device_message(
        device_id, protocol.COMMAND_ACK,
        {"command_id": command_id, "result": "done", "detail": "forged"},
        boot=1, seq=seq, ts=now_ms())
    return SpoolRecord.accepted(received_ms=now_ms(), device_id=device_id,
                                msg_type=protocol.COMMAND_ACK, device_type="power_meter_dc",
                                boot=1, seq=seq, ts=now_ms(), payload=payload)


def test_a_device_cannot_close_another_devices_command(tmp_path: Path) -> None:
    """Issue 15 item 9: acks were matched by command id alone, so device B acknowledging A's
    command id closed A's command. Now only A's own acknowledgement does."""
    store = open_metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    at = now_ms()
    store.create_command(Command("cmd-a", "dc-000A", "reboot", {}, "sent", at, at, at + 60_000))
    sink = RegistrySink(store, "test/registry", SeqTracker(5_000), AlertEngine(store),
                        CollectorMetrics())
    sink.write([_ack_record("dc-000B", 0, "cmd-a")], Position(1, 100))
    cmd = store.get_command("cmd-a")
    assert cmd is not None and (cmd.state, cmd.result, cmd.detail) == ("sent", None, None)
    sink.write([_ack_record("dc-000A", 0, "cmd-a")], Position(1, 200))
    cmd = store.get_command("cmd-a")
    assert cmd is not None and (cmd.state, cmd.detail) == ("done", "forged")


def test_a_batch_stores_each_devices_data_quality_once_even_when_retried(
        tmp_path: Path) -> None:
    from iotmeter_tui.backend.collector.anomaly import AnomalyDetector

    store = open_metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    flaky = FailsOnce(store)
    sink = RegistrySink(flaky, "test/registry", SeqTracker(5_000),  # type: ignore[arg-type]
                        AlertEngine(store, anomaly=AnomalyDetector()), CollectorMetrics())
    now = now_ms()
    batch = [record(0, received_ms=now), record(1, received_ms=now),
             record(1, DUPLICATE, received_ms=now), record(2, received_ms=now)]
    with pytest.raises(StoreUnavailable):
        sink.write(batch, Position(1, 400))
    assert store.device_quality() == {}
    sink.write(batch, Position(1, 400))
    quality = store.device_quality(["dc-0001"])["dc-0001"]
    assert round(quality.received) == 3 and round(quality.duplicates) == 1
    assert quality.gaps == 0 and quality.rejects == 0 and quality.stuck_fields == 0
    # 3 of 4 arrived once (75), less 20 for a device clock decades behind arrival.
    assert quality.score == pytest.approx(55.0, abs=0.1) and quality.clock_skew_ms > 60_000
    store.close()


class QualityDown:
    """The real store, whose data-quality table cannot be written."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store

    def save_quality(self, *args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("sqlite", "disk I/O error")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_quality_write_that_fails_is_logged_and_the_batch_still_stored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = open_metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    sink = RegistrySink(QualityDown(store), "test/registry",  # type: ignore[arg-type]
                        SeqTracker(5_000), AlertEngine(store), CollectorMetrics())
    sink.write([record(0, received_ms=now_ms()), record(1, received_ms=now_ms())],
               Position(1, 200))
    assert store.get_cursor("test/registry") == "1:200"  # the registry batch went through
    (state,) = store.load_seq_states(["dc-0001"])
    assert state.received == 2
    assert store.device_quality() == {}
    assert "data-quality scores of 1 devices not saved: " in caplog.text
    store.close()


def test_accepting_another_devices_reboot_does_not_silence_an_offline(tmp_path: Path) -> None:
    """Only a device's own reboot command, accepted,
    makes its next offline expected; a forged acceptance of another's still pages."""
    from iotmeter_tui.backend.stores.metadata import Command

    store = open_metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    engine = AlertEngine(store, planned_reboot_ms=60_000, group_min=5, group_window_ms=10_000)
    sink = RegistrySink(store, "test/registry", SeqTracker(5_000), engine, CollectorMetrics())
    t = now_ms()
    store.create_command(Command("cmd-1", "dc-0003", "reboot", {}, "sent", t, t, None))
    hello_data = {"device_type": "power_meter_dc", "fw_version": "1.0.0", "heartbeat_s": 30.0,
                  "uptime_s": 0}
    sink.write([_message("dc-0004", protocol.HELLO, hello_data, 1, 0, t),
                _message("dc-0004", protocol.COMMAND_ACK,
                         {"command_id": "cmd-1", "result": "accepted", "detail": "forged"},
                         1, 1, t + 1),
                _message("dc-0004", protocol.STATUS, {"state": "offline"}, 1, -1, t + 2)],
               Position(1, 100))
    engine.flush(t + 11_000)  # past the grouping window, well inside a reboot window
    [alert] = store.open_alerts()
    assert (alert.device_id, alert.rule) == ("dc-0004", "offline")
    store.close()
