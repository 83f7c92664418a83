"""End to end on the embedded defaults: the dashboard starts a private mosquitto, the collector
worker process and the demo fleet of simulated meters; from the keyboard we watch live meters,
ping one until the command is done, and run an OTA campaign until it completes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from dash_helpers import press, screen_text, settle, wait_until

from iotmeter_tui.app import IotmeterApp
from iotmeter_tui.backend.config import load_settings
from iotmeter_tui.backend.runtime import Runtime
from iotmeter_tui.screens.commands import CommandsScreen
from iotmeter_tui.screens.dialog import FormDialog
from iotmeter_tui.screens.fleet import FleetScreen
from iotmeter_tui.screens.ota import OtaScreen
from iotmeter_tui.widgets.live_table import LiveTable

DEMO_FLEET = 24


def live_rows(screen: FleetScreen) -> int:
    """Rows showing a measured voltage."""
    return sum(1 for row in screen.table.rows if row.cells[5] != "—")


def test_dashboard_on_embedded_defaults(tmp_path: Path) -> None:
    settings = load_settings(env={
        "IOTMETER_HOME": str(tmp_path / "home"),
        "IOTMETER_FIRMWARE_LISTEN": "127.0.0.1:0",  # never clash with another run's port
    })
    runtime = Runtime(settings)
    app = IotmeterApp(runtime, start_runtime=True)
    image = tmp_path / "meter-9.9.9.bin"
    image.write_bytes(bytes(range(256)) * 64)

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            fleet = app.screen
            assert isinstance(fleet, FleetScreen)
            # Live meters within seconds.
            await wait_until(pilot, lambda: fleet.table.total >= DEMO_FLEET, timeout_s=30,
                             what="the demo fleet in the registry")
            await wait_until(pilot, lambda: live_rows(fleet) >= DEMO_FLEET - 2, timeout_s=30,
                             what="live values")
            assert "● online" in screen_text(app)
            assert app.starter is not None and app.starter.error is None

            # Ping the highlighted meter from the keyboard; watch the command get done.
            await press(pilot, "down", "down")
            row = fleet.table.cursor_row
            assert row is not None
            await press(pilot, "p")
            await press(pilot, "colon", *"commands", "enter")
            commands = app.screen
            assert isinstance(commands, CommandsScreen)

            def ping_state() -> str | None:
                for cmd in commands.commands.values():
                    if cmd.device_id == row.key and cmd.name == "ping":
                        return cmd.state
                return None

            await wait_until(pilot, lambda: ping_state() == "done", timeout_s=30,
                             what=f"the ping of {row.key} done")
            assert "pong" in screen_text(app)

            # Upload firmware and start a campaign from the dialog; watch it complete.
            await press(pilot, "colon", *"ota", "enter")
            ota = app.screen
            assert isinstance(ota, OtaScreen)
            await press(pilot, "u")
            dialog = app.screen
            assert isinstance(dialog, FormDialog)
            dialog.set_value("path", str(image))
            await press(pilot, "tab", *"9.9.9")  # the version field, typed
            dialog.set_value("batch", str(DEMO_FLEET))
            await press(pilot, "ctrl+s")
            await wait_until(pilot, lambda: ota.selected is not None
                             and ota.campaigns.get(ota.selected) is not None, timeout_s=15,
                             what="the campaign listed")
            campaign_id = ota.selected
            assert ota.campaigns[campaign_id].fw_version == "9.9.9"
            targets = ota.query_one("#targets-table", LiveTable)
            await wait_until(pilot, lambda: len(targets.rows) >= DEMO_FLEET, timeout_s=15,
                             what="a progress bar per target")
            await wait_until(pilot, lambda: ota.campaigns[campaign_id].state == "completed",
                             timeout_s=90, what="the campaign completed")
            await settle(pilot)
            assert all(r.cells[1] == ("done", "ok") for r in targets.rows)
            assert f"{DEMO_FLEET}/{DEMO_FLEET}" in screen_text(app)
            # Issue 16: the campaign's 24 planned reboots used to raise 24 major alerts.
            alerts = await app.run_io(runtime.stores.metadata.open_alerts)
            assert [a for a in alerts if a.rule in ("offline", "offline_group")] == []

    started = time.monotonic()
    try:
        asyncio.run(scenario())
    finally:
        app.shutdown_runtime()
    # q quits and stops everything the app started.
    assert runtime.worker is not None and not runtime.worker.alive
    assert runtime.simulator is not None and not runtime.simulator.running
    assert time.monotonic() - started < 150
