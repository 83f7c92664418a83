"""Alerts (state filters, acknowledge, clear, open the device) and the commands queue (states,
open-only, filter, new command dialog, resend, open the device)."""

from __future__ import annotations

from typing import Any

from dash_dataset import NOW_MS
from dash_helpers import drive, press, reload_and_settle, screen_text, wait_until

from iotmeter_tui.screens.alerts import AlertsScreen
from iotmeter_tui.screens.commands import CommandsScreen
from iotmeter_tui.screens.device import DeviceScreen
from iotmeter_tui.screens.dialog import FormDialog


def devices_in(screen: Any) -> list[str]:
    return [row.cells[1] for row in screen.table.rows]


def test_alert_state_filters(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        screen = pilot.app.screen
        assert isinstance(screen, AlertsScreen)
        assert screen.table.total == 6
        await press(pilot, "1")
        assert sorted(devices_in(screen)) == ["dc-0001", "dc-0003", "dc-0005"]
        assert "Alerts · active" in screen_text(pilot.app)
        await press(pilot, "2")
        assert sorted(devices_in(screen)) == ["ac-0002", "ac-0006"]
        await press(pilot, "3")
        assert devices_in(screen) == ["dc-0007"]
        await press(pilot, "0")
        assert screen.table.total == 6
        await press(pilot, "slash", "o", "f", "f", "enter")  # rule 'offline'
        assert sorted(devices_in(screen)) == ["ac-0006", "dc-0005"]

    drive(make_app("alerts"), scenario)


def test_acknowledge_and_clear_from_the_keyboard(make_app: Any, dash_stores: Any) -> None:
    md = dash_stores.metadata

    async def scenario(pilot: Any) -> None:
        screen = pilot.app.screen
        await press(pilot, "1")  # active: dc-0003 (newest), dc-0001, dc-0005
        assert devices_in(screen)[0] == "dc-0003"
        await press(pilot, "a")
        await wait_until(pilot, lambda: "dc-0003" not in devices_in(screen), what="acked")
        acked = [a for a in md.list_alerts(state="acknowledged") if a.device_id == "dc-0003"]
        assert acked and acked[0].acknowledged_at == NOW_MS
        # Mark two and clear both at once.
        await press(pilot, "space", "space", "x")
        await wait_until(pilot, lambda: devices_in(screen) == [], what="cleared")
        cleared = {a.device_id for a in md.list_alerts(state="cleared")}
        assert {"dc-0001", "dc-0005", "dc-0007"} <= cleared
        await press(pilot, "2")
        await press(pilot, "x")  # an acknowledged alert can be cleared too
        await wait_until(pilot, lambda: len(devices_in(screen)) == 2, what="one cleared")

    drive(make_app("alerts"), scenario)


def test_enter_on_an_alert_opens_its_device(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        await press(pilot, "down", "enter")
        screen = pilot.app.screen
        assert isinstance(screen, DeviceScreen) and screen.device_id == "dc-0003"
        await press(pilot, "3")  # the device's alerts panel
        assert "overcurrent" in screen_text(pilot.app)

    drive(make_app("alerts"), scenario)


def test_commands_queue_shows_states(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        screen = pilot.app.screen
        assert isinstance(screen, CommandsScreen)
        states = {row.key: row.cells[4][0] for row in screen.table.rows}
        assert states == {"cmd-0001": "done", "cmd-0002": "done", "cmd-0003": "accepted",
                          "cmd-0004": "timed_out", "cmd-0005": "rejected",
                          "cmd-0006": "queued"}
        text = screen_text(pilot.app)
        assert "pong" in text and "heartbeat_s must be 5..3600" in text
        await press(pilot, "o")
        assert [row.key for row in screen.table.rows] == ["cmd-0006", "cmd-0003"]
        await press(pilot, "o", "slash", "p", "i", "n", "g", "enter")
        assert {row.key for row in screen.table.rows} == {"cmd-0001", "cmd-0004", "cmd-0006"}

    drive(make_app("commands"), scenario)


def test_commands_update_as_states_change(make_app: Any, dash_stores: Any) -> None:
    md = dash_stores.metadata

    async def scenario(pilot: Any) -> None:
        screen = pilot.app.screen
        md.update_command("cmd-0006", state="sent", at=NOW_MS + 100, sent=True)
        md.update_command("cmd-0006", state="done", at=NOW_MS + 200, result="done",
                          detail="pong")
        await reload_and_settle(pilot)
        row = next(r for r in screen.table.rows if r.key == "cmd-0006")
        assert row.cells[4] == ("done", "ok") and row.cells[7] == "pong"

    drive(make_app("commands"), scenario)


def test_new_command_and_resend(make_app: Any, dash_runtime: Any) -> None:
    async def scenario(pilot: Any) -> None:
        screen = pilot.app.screen
        await press(pilot, "n")  # offers the highlighted command's device
        dialog = pilot.app.screen
        assert isinstance(dialog, FormDialog)
        assert dialog.values()["devices"] == "dc-0009"
        await press(pilot, "enter")  # enter in a field submits
        await wait_until(pilot, lambda: dash_runtime.commands.sent, what="sent")
        assert dash_runtime.commands.sent[0][:2] == ("dc-0009", "ping")
        await wait_until(pilot, lambda: "cmd-t001" in {r.key for r in screen.table.rows},
                         what="new command listed")
        await press(pilot, "G", "r")  # resend the oldest: dc-0005's ping
        await wait_until(pilot, lambda: len(dash_runtime.commands.sent) == 2, what="resent")
        assert dash_runtime.commands.sent[1] == ("dc-0005", "ping", {}, 30.0)
        await press(pilot, "enter")
        assert isinstance(pilot.app.screen, DeviceScreen)

    drive(make_app("commands"), scenario)


def test_commands_view_without_service(make_app: Any, dash_stores: Any) -> None:
    from dash_dataset import FakeRuntime

    async def scenario(pilot: Any) -> None:
        text = screen_text(pilot.app)
        assert "commands service unavailable" in text
        assert "cmd-0001" not in text or "pong" in text  # the queue still shows
        await press(pilot, "n")
        assert isinstance(pilot.app.screen, CommandsScreen)

    drive(make_app("commands", runtime=FakeRuntime(dash_stores, services=False)), scenario)


def test_a_devices_control_characters_never_reach_the_terminal(make_app: Any,
                                                               dash_stores: Any) -> None:
    """Issue 15 item 11: a command's detail (the device's own words) went to the terminal raw.
    Every table cell goes through safe_text: escape sequences, C1 controls and bidi overrides
    become U+FFFD in what is drawn."""
    md = dash_stores.metadata
    hostile = "pwn\x1b]0;owned\x07\x1b[2J\u009b31m\u202eexe"

    async def scenario(pilot: Any) -> None:
        screen = pilot.app.screen
        md.update_command("cmd-0006", state="sent", at=NOW_MS + 100, sent=True)
        md.update_command("cmd-0006", state="failed", at=NOW_MS + 200, result="failed",
                          detail=hostile)
        await reload_and_settle(pilot)
        row = next(r for r in screen.table.rows if r.key == "cmd-0006")
        assert row.cells[7] == hostile  # the data as stored...
        text = screen_text(pilot.app)
        assert "pwn\ufffd" in text  # ...drawn filtered
        for bad in ("\x1b", "\x07", "\u009b", "\u202e"):
            assert bad not in text

    drive(make_app("commands"), scenario)
