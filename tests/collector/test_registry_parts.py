"""The registry sink's parts one by one (collector/registry/): each against a real SQLite
metadata store where it touches one, else on plain values."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.collector.alerts import AlertEngine
from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.collector.registry import RegistrySink
from iotmeter_tui.backend.collector.registry.alerting import AlertFeed, QualityFeed
from iotmeter_tui.backend.collector.registry.decoded import content
from iotmeter_tui.backend.collector.registry.devices import DeviceFold, KnownDevices
from iotmeter_tui.backend.collector.registry.reports import DeviceReports
from iotmeter_tui.backend.collector.registry.sequence import SequenceLedger
from iotmeter_tui.backend.collector.registry.silence import SilenceWatch
from iotmeter_tui.backend.collector.seqtrack import SeqTracker
from iotmeter_tui.backend.collector.spool import Spool, SpoolRecord
from iotmeter_tui.backend.stores.factory import open_metadata
from iotmeter_tui.backend.stores.metadata import (
    Command,
    DeviceUpdate,
    MetadataStore,
    SeqState,
)

HELLO = {"device_type": "power_meter_dc", "fw_version": "1.0.0", "heartbeat_s": 30.0,
         "uptime_s": 0}


def now_ms() -> int:
    return int(time.time() * 1000)


def message(msg_type: str, data: dict[str, Any], *, device_id: str = "dc-0001", boot: int = 1,
            seq: int | None = 0, at: int = 1_000, parsed: bool = False,
            status_boot: int | None = None) -> SpoolRecord:
    """An accepted record; `parsed`: as the pipeline hands it (data attached)."""
    is_status = msg_type == protocol.STATUS
    payload = protocol.encode_device_message(
        device_id, msg_type, data, ts=at, boot=status_boot if is_status else boot,
        seq=None if is_status else seq)
    return SpoolRecord.accepted(
        received_ms=at, device_id=device_id, msg_type=msg_type, device_type="power_meter_dc",
        boot=None if is_status else boot, seq=None if is_status else seq, ts=at,
        payload=payload, data=data if parsed else None)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    metadata = open_metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    yield metadata
    metadata.close()


# --- decoded ------------------------------------------------------------------------------

def test_content_takes_the_pipelines_data_without_parsing_the_payload() -> None:
    record = message(protocol.TELEMETRY, {"voltage_v": 750.0}, parsed=True)
    record.payload = b"not json: parsing it would fail"
    assert content(record).data == {"voltage_v": 750.0}
    online = message(protocol.STATUS, {"state": "online"}, parsed=True)
    online.payload = b"not json either"
    assert content(online) == ({"state": "online"}, None)


def test_content_parses_a_record_read_back_once_with_a_last_wills_boot() -> None:
    assert content(message(protocol.HELLO, HELLO)).data == HELLO
    offline = content(message(protocol.STATUS, {"state": "offline"}, status_boot=4))
    assert offline == ({"state": "offline"}, 4)
    # In memory too: the pipeline keeps no boot for a status, so an offline is parsed once.
    assert content(message(protocol.STATUS, {"state": "offline"}, status_boot=4,
                           parsed=True)).status_boot == 4
    assert content(message(protocol.STATUS, {"state": "offline"})).status_boot is None


# --- devices -------------------------------------------------------------------------------

def test_a_batch_folds_into_one_update_per_device() -> None:
    fold = DeviceFold()
    for at, device_id in ((1_000, "a"), (3_000, "a"), (2_000, "a"), (1_500, "b")):
        fold.online(fold.seen(message(protocol.TELEMETRY, {}, device_id=device_id, at=at)), at)
    hello = message(protocol.HELLO, HELLO, device_id="b", boot=3, at=2_500)
    fold.hello(fold.seen(hello), hello, HELLO)
    fold.status(fold.seen(message(protocol.STATUS, {}, device_id="a", at=3_500)), "offline",
                3_500)
    assert sorted(fold.updates(), key=lambda u: u.device_id) == [
        DeviceUpdate("a", 3_500, None, None, None, None, "offline", 3_500),
        DeviceUpdate("b", 2_500, "power_meter_dc", "1.0.0", 3, 30.0, "online", 1_500),
    ]


def test_a_heartbeat_hello_is_news_only_when_it_changes_the_device() -> None:
    known = KnownDevices()
    hello = message(protocol.HELLO, HELLO, boot=2)
    assert known.changed_by(hello, HELLO)  # never stored
    known.remember([DeviceUpdate("dc-0001", 1, "power_meter_dc", "1.0.0", 2, 30.0, "online", 1)])
    assert not known.changed_by(hello, HELLO)  # a heartbeat
    assert known.changed_by(hello, dict(HELLO, fw_version="1.1.0"))  # new firmware
    assert known.changed_by(message(protocol.HELLO, HELLO, boot=3), HELLO)  # restarted
    known.remember([DeviceUpdate("dc-0001", 2, None, None, None, None, "offline", 2)])
    assert known.changed_by(hello, HELLO)  # back from offline
    known.remember([DeviceUpdate("dc-0001", 3, None, None, None, None, "online", 3)])
    known.forget_status(["dc-0001"])  # marked silent in the store meanwhile
    assert known.changed_by(hello, HELLO)


# --- sequence ------------------------------------------------------------------------------

def test_the_ledger_tracks_the_current_boot_and_hands_back_unstored_states() -> None:
    ledger = SequenceLedger(SeqTracker(5_000), "c1")
    ledger.restore([SeqState("dc-0001", 2, 9, 10, 0, 0, (), 1, "c1")])
    ledger.observe([message(protocol.TELEMETRY, {}, boot=2, seq=10),
                    message(protocol.TELEMETRY, {}, boot=2, seq=10),  # a duplicate
                    message(protocol.TELEMETRY, {}, boot=3, seq=0)])
    assert ledger.is_current("dc-0001", 3) and not ledger.is_current("dc-0001", 2)
    assert ledger.is_stale("dc-0001", 2) and not ledger.is_stale("dc-0001", 3)
    assert not ledger.is_stale("dc-0001", None)  # a Last Will without a boot
    changed = ledger.take_changed()
    states = {(s.boot, s.highest_seq, s.received, s.duplicates, s.collector)
              for s in ledger.states(changed)}
    assert states == {(2, 10, 11, 1, "c1"), (3, 0, 1, 0, "c1")}
    assert ledger.take_changed() == []
    ledger.give_back(changed)  # the write failed
    assert {(d, b) for d, b, _ in ledger.take_changed()} == {("dc-0001", 2), ("dc-0001", 3)}


# --- alerting -------------------------------------------------------------------------------

class Failing(AlertEngine):
    def on_telemetry(self, *args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("a bug in a rule")


def test_a_failing_rule_is_counted_and_logged_not_raised(
        store: MetadataStore, caplog: pytest.LogCaptureFixture) -> None:
    metrics = CollectorMetrics()
    feed = AlertFeed(Failing(store), metrics, "registry")
    feed.telemetry(message(protocol.TELEMETRY, {"voltage_v": 750.0}, seq=7), {})
    assert metrics.sample("iotmeter_sink_failures_total", {"sink": "registry"}) == 1
    assert "alert rules failed on a message" in caplog.text


def test_quality_is_scored_from_the_records_and_stored(store: MetadataStore) -> None:
    feed = QualityFeed(store, AlertEngine(store))
    at = now_ms()
    feed.observe([message(protocol.TELEMETRY, {}, seq=s, at=at) for s in range(4)])
    feed.gaps("dc-0001", 0, at)
    feed.gaps("dc-0001", 1, at)  # one seq declared lost
    feed.save()
    quality = store.device_quality()["dc-0001"]
    assert (round(quality.received), round(quality.gaps)) == (4, 1)
    assert quality.score == pytest.approx(80.0, abs=0.1)


# --- reports --------------------------------------------------------------------------------

def test_reports_store_acks_and_ota_progress_and_announce_planned_reboots(
        store: MetadataStore) -> None:
    at = now_ms()
    store.create_command(Command("cmd-1", "dc-0001", "reboot", {}, "sent", at, at, None))
    engine = AlertEngine(store, planned_reboot_ms=60_000)
    reports = DeviceReports(store, AlertFeed(engine, CollectorMetrics(), "registry"))
    reports.command_ack(message(protocol.COMMAND_ACK, {}, at=at),
                        {"command_id": "cmd-1", "result": "accepted", "detail": "going down"})
    reports.ota_status(message(protocol.OTA_STATUS, {}, device_id="dc-0002", at=at),
                       {"campaign_id": "c-9", "fw_version": "2.0", "state": "installing",
                        "progress_pct": 100, "error": None})
    assert store.get_command("cmd-1").state == "sent"  # type: ignore[union-attr]
    reports.store_all()
    command = store.get_command("cmd-1")
    assert command is not None and (command.state, command.detail) == ("accepted", "going down")
    # Both meters announced their restart: going offline now pages nobody.
    engine.on_status("dc-0001", "offline", at + 1)
    engine.on_status("dc-0002", "offline", at + 1)
    engine.flush(at + 2)
    assert store.open_alerts() == []


# --- silence ---------------------------------------------------------------------------------

def test_the_silence_watch_marks_quiet_devices_offline_and_reports_the_fleet(
        store: MetadataStore) -> None:
    at = now_ms()
    store.apply_collector_batch([
        DeviceUpdate("quiet", at - 10_000, "power_meter_dc", "1.0", 1, 1.0, "online", at - 10_000),
        DeviceUpdate("talking", at, "power_meter_dc", "1.0", 1, 30.0, "online", at),
    ], [])
    metrics = CollectorMetrics()
    engine = AlertEngine(store)
    watch = SilenceWatch(store, AlertFeed(engine, metrics, "registry"), metrics)
    assert watch.mark_silent(at) == ["quiet"]
    engine.flush(at)
    [alert] = store.open_alerts()
    assert (alert.device_id, alert.rule) == ("quiet", "offline")
    watch.report_fleet(at)
    assert metrics.sample("iotmeter_devices_online") == 1
    assert metrics.sample("iotmeter_alerts_active") == 1


# --- the sink: when news goes at once -----------------------------------------------------------

def test_a_heartbeat_hello_waits_for_the_interval_a_changed_one_does_not(
        tmp_path: Path, store: MetadataStore) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    sink = RegistrySink(store, "test/registry", SeqTracker(5_000), AlertEngine(store),
                        CollectorMetrics())
    cursor = spool.start()

    def commit(record: SpoolRecord) -> None:
        spool.append([record])
        spool.commit()

    commit(message(protocol.HELLO, HELLO, seq=0, at=now_ms()))
    batch, cursor = sink.next_batch(spool, cursor)  # a device never stored: at once
    assert [r.seq for r in batch] == [0]
    sink.write(batch, cursor)
    commit(message(protocol.HELLO, HELLO, seq=1, at=now_ms()))  # its heartbeat
    commit(message(protocol.TELEMETRY, {"voltage_v": 750.0}, seq=2, at=now_ms()))
    assert sink.next_batch(spool, cursor) == ([], cursor)
    commit(message(protocol.HELLO, dict(HELLO, fw_version="1.1.0"), seq=3, at=now_ms()))
    batch, end = sink.next_batch(spool, cursor)  # new firmware: at once, with what waited
    assert [r.seq for r in batch] == [1, 2, 3]
    sink.write(batch, end)
    device = store.get_device("dc-0001")
    assert device is not None and device.fw_version == "1.1.0"
    commit(message(protocol.HELLO, dict(HELLO, fw_version="1.1.0"), seq=4, at=now_ms()))
    assert sink.next_batch(spool, end) == ([], end)
    sink.draining = True  # the collector stops: everything now
    assert [r.seq for r in sink.next_batch(spool, end)[0]] == [4]


def test_records_left_waiting_when_the_load_stops_go_without_waiting_out_the_interval(
        tmp_path: Path, store: MetadataStore) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    sink = RegistrySink(store, "test/registry", SeqTracker(5_000), AlertEngine(store),
                        CollectorMetrics())
    sink.IDLE_S = 0.2
    cursor = spool.start()
    spool.append([message(protocol.TELEMETRY, {"voltage_v": 750.0}, seq=0, at=now_ms())])
    spool.commit()
    batch, cursor = sink.next_batch(spool, cursor)
    sink.write(batch, cursor)  # the interval starts (2 s)
    spool.append([message(protocol.TELEMETRY, {"voltage_v": 750.0}, seq=1, at=now_ms())])
    spool.commit()
    assert sink.next_batch(spool, cursor) == ([], cursor)  # just committed: load goes on
    time.sleep(0.25)  # nothing more committed: the load has stopped
    batch, end = sink.next_batch(spool, cursor)
    assert [r.seq for r in batch] == [1]
    sink.write(batch, end)
    assert sink.next_batch(spool, end) == ([], end)  # nothing waits any more
