"""Raw messages as sent (`r` on a device page) from the archive and from the collector's
spool (what is not archived yet), and the rejected messages with reasons, filtered by reason
and device; bytes a meter sends never reach the terminal as control characters."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dash_dataset import NOW_MS
from dash_helpers import drive, press, screen_text, settle

from iotmeter_tui.backend.collector.spool import ACCEPTED, REJECTED, Spool, SpoolRecord
from iotmeter_tui.backend.stores.archive_writer import ArchiveRecord, ArchiveWriter, RejectedRecord
from iotmeter_tui.screens.raw import MessageScreen, RawScreen, RejectedScreen

HOSTILE = b'{"v": 2, "note": "\x1b]0;owned\x07\x1b[2J"}'


def telemetry_line(seq: int, ts: int) -> bytes:
    return (b'{"v":2,"device_id":"dc-0001","msg_type":"telemetry","boot":2,"seq":%d,'
            b'"ts":%d,"data":{"voltage_v":750.%d}}' % (seq, ts, seq))


def fill(runtime: Any, tmp_path: Path) -> None:
    """Three telemetry messages and two rejections archived; two more telemetry messages
    (one also archived: shown once) and one rejection only in the spool."""
    writer = ArchiveWriter(runtime.stores.archive)
    accepted = [ArchiveRecord("dc-0001", "telemetry", NOW_MS - 60_000 + n * 1000,
                              telemetry_line(n, NOW_MS - 60_000 + n * 1000)) for n in range(3)]
    rejected = [RejectedRecord("not_json", "Expecting value", "iot/dc-0002/telemetry",
                               "dc-0002", NOW_MS - 50_000, HOSTILE),
                RejectedRecord("bad_version", "v is 1", "iot/ac-0001/telemetry", "ac-0001",
                               NOW_MS - 40_000, b'{"v": 1}')]
    writer.write_batch(accepted, rejected, batch_id="test-1")
    writer.close()
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir / "iotmeter-collector", max_bytes=1 << 20)
    spool.start()
    records = [SpoolRecord(ACCEPTED, NOW_MS - 58_000 + n * 1000, "dc-0001", "telemetry",
                           "power_meter_dc", 2, n, NOW_MS - 60_000 + n * 1000, "", "", "",
                           telemetry_line(n, NOW_MS - 60_000 + n * 1000)) for n in (2, 3, 4)]
    records.append(SpoolRecord(REJECTED, NOW_MS - 30_000, "dc-0002", "", "", -1, -1, 0,
                               "iot/dc-0002/telemetry", "not_json", "Expecting value",
                               b"\x00\xff{"))
    spool.append(records)
    spool.commit()
    spool.close()
    runtime.settings = SimpleNamespace(spool_dir=spool_dir, home=tmp_path)


def test_raw_messages_of_a_device_from_archive_and_spool(make_app: Any, dash_runtime: Any,
                                                         tmp_path: Path) -> None:
    fill(dash_runtime, tmp_path)

    async def scenario(pilot: Any) -> None:
        pilot.app.open_device("dc-0001")
        await settle(pilot)
        await press(pilot, "r")
        raw = pilot.app.screen
        assert isinstance(raw, RawScreen)
        rows = raw.table.rows
        assert [r.cells[3] for r in rows] == [
            telemetry_line(n, NOW_MS - 60_000 + n * 1000).decode() for n in (4, 3, 2, 1, 0)]
        assert [r.cells[2][0] for r in rows] == ["spool", "spool", "archive", "archive",
                                                 "archive"]
        assert '"seq":4' in screen_text(pilot.app)
        await press(pilot, "enter")  # the newest in full: the table cuts it at its width
        full = pilot.app.screen
        assert isinstance(full, MessageScreen)
        assert full.text.endswith('"data":{"voltage_v":750.4}}')
        assert "750.4" in screen_text(pilot.app)
        await press(pilot, "escape")
        assert isinstance(pilot.app.screen, RawScreen)
        await press(pilot, "escape")
        assert pilot.app.screen.__class__.__name__ == "DeviceScreen"

    drive(make_app(), scenario)


def test_rejected_messages_filtered_by_reason_and_device(make_app: Any, dash_runtime: Any,
                                                         tmp_path: Path) -> None:
    fill(dash_runtime, tmp_path)

    async def scenario(pilot: Any) -> None:
        await press(pilot, "colon", *"rejected", "enter")
        screen = pilot.app.screen
        assert isinstance(screen, RejectedScreen)
        assert [(r.cells[1][0], r.cells[2]) for r in screen.table.rows] == [
            ("not_json", "dc-0002"), ("bad_version", "ac-0001"), ("not_json", "dc-0002")]
        text = screen_text(pilot.app)
        assert "\x1b" not in text and "\x07" not in text and "\x00" not in text
        assert "\\x1b]0;owned\\x07" in text  # shown, escaped
        assert "\\x00\\xff{" in text
        # By reason: r walks through them (the first is bad_device_id, …).
        while screen.reason != "not_json":
            await press(pilot, "r")
        assert [r.cells[1][0] for r in screen.table.rows] == ["not_json", "not_json"]
        assert "not_json" in screen_text(pilot.app).splitlines()[0]
        # By device: / as you type.
        await press(pilot, "r")
        while screen.reason is not None:
            await press(pilot, "r")
        await press(pilot, "slash", *"ac-", "enter")
        assert [r.cells[2] for r in screen.table.rows] == ["ac-0001"]
        await press(pilot, "enter")
        assert getattr(pilot.app.screen, "device_id", None) == "ac-0001"

    drive(make_app(), scenario)
