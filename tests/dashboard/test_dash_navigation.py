"""Getting around: `:` jumps (full names, prefixes, aliases, device ids), errors in the prompt,
help, themes, quit; the global keys stay out of a dialog's way."""

from __future__ import annotations

from typing import Any

from dash_helpers import drive, press, screen_text

from iotmeter_tui.screens.alerts import AlertsScreen
from iotmeter_tui.screens.commands import CommandsScreen
from iotmeter_tui.screens.device import DeviceScreen
from iotmeter_tui.screens.dialog import FormDialog
from iotmeter_tui.screens.fleet import FleetScreen
from iotmeter_tui.screens.help import HelpScreen
from iotmeter_tui.screens.ota import OtaScreen
from iotmeter_tui.screens.simulator import SimulatorScreen
from iotmeter_tui.screens.system import SystemScreen


def keys(text: str) -> list[str]:
    return ["space" if c == " " else c for c in text]


JUMPS = [
    ("alerts", AlertsScreen),
    ("cmd", CommandsScreen),
    ("ota", OtaScreen),
    ("sim", SimulatorScreen),
    ("sys", SystemScreen),
    ("al", AlertsScreen),
    ("commands", CommandsScreen),
    ("fleet", FleetScreen),
]


def test_colon_jumps_to_every_view_by_name_prefix_or_alias(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        for typed, expected in JUMPS:
            await press(pilot, "colon", *keys(typed), "enter")
            screen = pilot.app.screen
            assert isinstance(screen, expected), typed
            assert screen.loads >= 1
            assert pilot.app.focused is not None and pilot.app.focused.id != "prompt-input"

    drive(make_app(), scenario)


def test_colon_device_opens_it_and_fleet_returns_to_the_list(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        await press(pilot, "colon", *keys("device dc-0007"), "enter")
        screen = pilot.app.screen
        assert isinstance(screen, DeviceScreen) and screen.device_id == "dc-0007"
        await press(pilot, "colon", *keys("fleet"), "enter")
        assert isinstance(pilot.app.screen, FleetScreen)
        assert len(pilot.app.screen_stack) == 1

    drive(make_app(), scenario)


def test_prompt_errors_stay_in_the_prompt(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        await press(pilot, "colon", *keys("bogus"), "enter")
        assert "unknown view 'bogus'" in screen_text(pilot.app)
        await press(pilot, "escape")
        await press(pilot, "colon", "s", "enter")  # simulator or system?
        assert "ambiguous" in screen_text(pilot.app)
        await press(pilot, "escape")
        await press(pilot, "colon", *keys("device"), "enter")
        assert "device needs an id" in screen_text(pilot.app)
        await press(pilot, "escape")
        assert isinstance(pilot.app.screen, FleetScreen)
        assert pilot.app.screen.table.has_focus

    drive(make_app(), scenario)


def test_help_lists_the_views_keys(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        await press(pilot, "question_mark")
        assert isinstance(pilot.app.screen, HelpScreen)
        text = screen_text(pilot.app)
        assert "reverse" in text and "ping" in text and "page down" in text
        await press(pilot, "escape")
        assert isinstance(pilot.app.screen, FleetScreen)
        await press(pilot, "colon", *keys("help"), "enter")
        assert isinstance(pilot.app.screen, HelpScreen)
        await press(pilot, "q")  # closes help, does not quit
        assert isinstance(pilot.app.screen, FleetScreen)
        assert pilot.app.is_running

    drive(make_app(), scenario)


def test_ctrl_t_cycles_themes(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        assert pilot.app.theme == "textual-dark"
        await press(pilot, "ctrl+t")
        assert pilot.app.theme == "textual-light"
        await press(pilot, "ctrl+t")
        assert pilot.app.theme == "ansi-dark"
        await press(pilot, "ctrl+t", "ctrl+t")
        assert pilot.app.theme == "textual-dark"

    drive(make_app(), scenario)


def test_q_quits(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        await press(pilot, "q")
        assert pilot.app.return_code == 0
        assert not pilot.app.is_running

    drive(make_app(), scenario)


def test_colon_quit_quits(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        await press(pilot, "colon", "q", "enter")
        assert not pilot.app.is_running

    drive(make_app(), scenario)


def test_global_keys_are_off_inside_a_dialog(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        await press(pilot, "c")
        dialog = pilot.app.screen
        assert isinstance(dialog, FormDialog)
        await press(pilot, "tab")  # to the command Select: keys there are not typed text
        await press(pilot, "q", "question_mark", "colon")
        assert pilot.app.screen is dialog and pilot.app.is_running
        await press(pilot, "escape")
        assert isinstance(pilot.app.screen, FleetScreen)

    drive(make_app(), scenario)


def test_the_clock_moves_under_a_dialog(dash_runtime: Any) -> None:
    """The status line keeps moving while a dialog is open (it once froze: it was only
    updated when the top screen was a view)."""
    from iotmeter_tui.app import IotmeterApp
    from iotmeter_tui.view.format import clock as shown

    clock = {"now": 1_795_740_000.0}
    first, later = shown(1_795_740_000_000), shown(1_795_740_007_000)

    async def scenario(pilot: Any) -> None:
        await press(pilot, "c")
        dialog = pilot.app.screen
        assert isinstance(dialog, FormDialog)
        fleet = pilot.app.screen_stack[-2]
        bar = fleet.query_one("#status-clock")
        assert first in str(bar.render())
        clock["now"] += 7
        await pilot.app._poll_status()
        await pilot.pause()
        assert pilot.app.screen is dialog
        assert later in str(bar.render())

    app = IotmeterApp(dash_runtime, now=lambda: clock["now"], refresh_s=30.0)
    drive(app, scenario)
