"""Remapped keys (IOTMETER_KEYMAP): a remapped key does what the old one did, the old one no
longer does, and the footer and the help screen show the keys in force; an id that names no
binding is one notice line."""

from __future__ import annotations

import re
from typing import Any

from dash_dataset import frozen_now
from dash_helpers import drive, press, screen_text

from iotmeter_tui.app import IotmeterApp
from iotmeter_tui.screens.fleet import FleetScreen
from iotmeter_tui.screens.help import HelpScreen


def footer_text(app: Any) -> str:
    return screen_text(app).splitlines()[-1]


def test_a_remapped_key_works_and_shows_in_the_footer_and_help(dash_runtime: Any) -> None:
    keymap = {"fleet.sort": "z", "app.quit": "ctrl+x", "app.help": "f1"}

    async def scenario(pilot: Any) -> None:
        fleet = pilot.app.screen
        assert isinstance(fleet, FleetScreen)
        footer = footer_text(pilot.app)
        assert "z sort" in footer and "s sort" not in footer
        assert "^x quit" in footer and "q quit" not in footer
        await press(pilot, "s")
        assert fleet.query_state.order_by == "device_id", "the old key does nothing"
        await press(pilot, "z")
        assert fleet.query_state.order_by == "device_type"
        await press(pilot, "q")
        assert pilot.app.is_running
        await press(pilot, "f1")
        assert isinstance(pilot.app.screen, HelpScreen)
        shown = screen_text(pilot.app)
        assert re.search(r"│\s+z\s+sort\s", shown), shown
        assert re.search(r"│\s+ctrl\+x\s+quit and stop", shown)
        assert re.search(r"│\s+f1\s+this help", shown)
        await press(pilot, "escape")
        await press(pilot, "ctrl+x")
        assert not pilot.app.is_running

    app = IotmeterApp(dash_runtime, now=frozen_now, refresh_s=30.0, keymap=keymap)
    drive(app, scenario)


def test_a_keymap_id_that_names_no_binding_is_a_notice(dash_runtime: Any) -> None:
    async def scenario(pilot: Any) -> None:
        text = " ".join(screen_text(pilot.app).split())
        assert "IOTMETER_KEYMAP: no binding 'fleet.sortt'" in text
        await press(pilot, "o")  # the valid entry is applied all the same
        assert pilot.app.screen.query_state.status is None
        await press(pilot, "y")
        assert pilot.app.screen.query_state.status == "online"

    app = IotmeterApp(dash_runtime, now=frozen_now, refresh_s=30.0,
                      keymap={"fleet.sortt": "z", "fleet.status_filter": "y"})
    drive(app, scenario)


def test_every_binding_id_is_documented() -> None:
    from pathlib import Path

    from iotmeter_tui.app import KEYMAP_OWNERS
    from iotmeter_tui.keymap import known_bindings

    docs = (Path(__file__).parents[2] / "docs" / "dashboard.md").read_text(encoding="utf-8")
    missing = [i for i in known_bindings(KEYMAP_OWNERS) if f"| `{i}` |" not in docs]
    assert missing == []
