"""Device view (charts, window, panels, ping, command) and OTA (campaigns with per-target
progress, the upload-and-start dialog)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dash_helpers import drive, press, screen_text, wait_until

from iotmeter_tui.screens.device import DeviceScreen
from iotmeter_tui.screens.dialog import FormDialog
from iotmeter_tui.screens.ota import OtaScreen
from iotmeter_tui.widgets.live_chart import LiveChart
from iotmeter_tui.widgets.live_table import Bar, LiveTable


def test_device_view_shows_charts_values_and_panels(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        pilot.app.open_device("dc-0001")
        await press(pilot)
        screen = pilot.app.screen
        assert isinstance(screen, DeviceScreen)
        await wait_until(pilot, lambda: screen.loads >= 1, what="device loaded")
        await press(pilot)
        text = screen_text(pilot.app)
        assert "dc-0001" in text and "● online" in text and "boot 2" in text
        assert "window 5m" in text
        assert "voltage 764.8 V" in text and "current 1179.7 A" in text
        assert "power 902.2 kW" in text
        charts = list(screen.query(LiveChart))
        assert len(charts) == 3 and all(c._shown and c._shown[1] for c in charts)
        assert len(charts[0]._shown[1]) == 60  # a point every 5 s in the last 5 minutes
        assert "energy_import_kwh" in text  # values panel
        await press(pilot, "2")
        assert "report_temperature" in screen_text(pilot.app)
        await press(pilot, "3")
        assert "undervoltage" in screen_text(pilot.app)
        await press(pilot, "4")
        assert "pong" in screen_text(pilot.app)
        await press(pilot, "5")
        gaps = screen.query_one("#panel-gaps", LiveTable)
        assert [r.key for r in gaps.rows] == ["2", "1"]
        assert "118-123, 3001-3006" in screen_text(pilot.app)
        assert "quality 74" in screen_text(pilot.app)  # the summary line
        await press(pilot, "6")
        quality = screen.query_one("#panel-quality", LiveTable)
        assert [r.key for r in quality.rows][:3] == ["score", "received", "gaps"]
        text = screen_text(pilot.app)
        assert "counter resets" in text and "stuck fields" in text and "0.2s" in text
        await press(pilot, "tab")
        assert screen.panel == 0
        await press(pilot, "w")
        assert screen.window_min == 15 and "window 15m" in screen_text(pilot.app)
        assert len(charts[0]._shown[1]) == 121  # the whole ten minutes now

    drive(make_app(), scenario)


def test_device_ping_and_command(make_app: Any, dash_runtime: Any) -> None:
    async def scenario(pilot: Any) -> None:
        pilot.app.open_device("ac-0003")
        await press(pilot, "p")
        await wait_until(pilot, lambda: dash_runtime.commands.sent, what="ping")
        assert dash_runtime.commands.sent == [("ac-0003", "ping", {}, 10.0)]
        await press(pilot, "c")
        dialog = pilot.app.screen
        assert isinstance(dialog, FormDialog)
        assert dialog.values()["devices"] == "ac-0003"
        dialog.set_value("name", "reboot")
        await press(pilot, "ctrl+s")
        await wait_until(pilot, lambda: len(dash_runtime.commands.sent) == 2, what="reboot")
        assert dash_runtime.commands.sent[1][:2] == ("ac-0003", "reboot")

    drive(make_app(), scenario)


def test_unknown_device(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        pilot.app.open_device("zz-9999")
        await press(pilot)
        await wait_until(pilot, lambda: pilot.app.screen.loads >= 1, what="loaded")
        await press(pilot)
        text = screen_text(pilot.app)
        assert "zz-9999: not in the registry" in text and "no data" in text

    drive(make_app(), scenario)


def test_ota_campaigns_and_target_progress(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        screen = pilot.app.screen
        assert isinstance(screen, OtaScreen)
        campaigns = screen.query_one("#campaigns-table", LiveTable)
        targets = screen.query_one("#targets-table", LiveTable)
        assert [r.key for r in campaigns.rows] == ["ota-0002", "ota-0001"]
        running = campaigns.rows[0]
        assert running.cells[4] == "2/8 ✖1"
        assert running.cells[5] == Bar(37.5, "error")  # 3 of 8 finished, one failed
        bars = {r.key: r.cells[2] for r in targets.rows}
        assert bars["dc-0003"] == Bar(80.0, "accent") and bars["dc-0001"] == Bar(100.0, "ok")
        assert bars["dc-0005"] == Bar(60.0, "error")
        assert "sha256 mismatch" in screen_text(pilot.app)
        await press(pilot, "down")  # the finished campaign: its targets follow the cursor
        assert screen.selected == "ota-0001"
        await wait_until(pilot, lambda: len(targets.rows) == 4, what="targets of ota-0001")
        assert campaigns.rows[1].cells[5] == Bar(100.0, "ok")
        await press(pilot, "tab")
        assert targets.has_focus

    drive(make_app("ota"), scenario)


def test_upload_and_start_a_campaign(make_app: Any, dash_runtime: Any, tmp_path: Path) -> None:
    image = tmp_path / "fw-1.4.0.bin"
    image.write_bytes(b"\x7fELF firmware 1.4.0")

    async def scenario(pilot: Any) -> None:
        screen = pilot.app.screen
        await press(pilot, "u")
        dialog = pilot.app.screen
        assert isinstance(dialog, FormDialog)
        await press(pilot, "ctrl+s")
        assert "version: required" in screen_text(pilot.app)
        dialog.set_value("path", str(tmp_path / "missing.bin"))
        dialog.set_value("version", "1.4.0")
        await press(pilot, "ctrl+s")
        assert "is not a readable file" in screen_text(pilot.app)
        dialog.set_value("path", str(image))
        dialog.set_value("target", "power_meter_ac")
        dialog.set_value("batch", "3")
        await press(pilot, "ctrl+s")
        ota = dash_runtime.ota
        await wait_until(pilot, lambda: ota.started, what="campaign started")
        assert ota.uploads == [(image, "1.4.0")]
        assert ota.started[0] == {"version": "1.4.0", "device_ids": None,
                                  "device_type": "power_meter_ac", "all_devices": False,
                                  "batch_size": 3, "max_failures_pct": 20.0}
        await wait_until(pilot, lambda: screen.selected == "ota-t001", what="selected")
        targets = screen.query_one("#targets-table", LiveTable)
        await wait_until(pilot, lambda: len(targets.rows) == 12, what="12 AC targets")
        await press(pilot, "x")  # abort it
        await wait_until(pilot, lambda: ota.aborted == ["ota-t001"], what="aborted")
        await wait_until(pilot, lambda: screen.campaigns["ota-t001"].state == "aborting",
                         what="shown aborting")

    drive(make_app("ota"), scenario)


def test_campaign_for_listed_devices_without_upload(make_app: Any, dash_runtime: Any) -> None:
    async def scenario(pilot: Any) -> None:
        await press(pilot, "u")
        dialog = pilot.app.screen
        dialog.set_value("version", "1.3.0")
        dialog.set_value("target", "ids")
        await press(pilot, "ctrl+s")
        assert "list the device ids" in screen_text(pilot.app)
        dialog.set_value("devices", "dc-0011, dc-0012")
        await press(pilot, "ctrl+s")
        await wait_until(pilot, lambda: dash_runtime.ota.started, what="started")
        assert dash_runtime.ota.uploads == []
        assert dash_runtime.ota.started[0]["device_ids"] == ["dc-0011", "dc-0012"]

    drive(make_app("ota"), scenario)


def test_ota_without_service(make_app: Any, dash_stores: Any) -> None:
    from dash_dataset import FakeRuntime

    async def scenario(pilot: Any) -> None:
        assert "OTA service unavailable" in screen_text(pilot.app)
        await press(pilot, "u")
        assert isinstance(pilot.app.screen, OtaScreen)

    drive(make_app("ota", runtime=FakeRuntime(dash_stores, services=False)), scenario)
