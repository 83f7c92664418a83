"""Issue 16, finding 1: a second start on the same IOTMETER_HOME used to show two dozen dead
meters (the demo fleet only started on an empty registry). On the embedded defaults every
start brings the demo fleet back: the same ids, each meter one boot further, live values."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dash_helpers import flat_text, wait_until

from iotmeter_tui.app import IotmeterApp
from iotmeter_tui.backend.config import load_settings
from iotmeter_tui.backend.runtime import Runtime
from iotmeter_tui.screens.fleet import SILENT_FLEET_HINT, FleetScreen

DEMO_FLEET = 24


def live_rows(screen: FleetScreen) -> int:
    return sum(1 for row in screen.table.rows
               if row.cells[5] != "—" and "online" in str(row.cells[2]))


def run_once(home: Path, simulate: str = "auto") -> tuple[dict[str, int], str]:
    """Start the dashboard on `home`, wait for live meters (or, without a simulator, for the
    fleet view's first answer), quit. Returns each simulated meter's boot and the screen."""
    settings = load_settings(env={"IOTMETER_HOME": str(home),
                                  "IOTMETER_FIRMWARE_LISTEN": "127.0.0.1:0"})
    runtime = Runtime(settings, simulate=simulate)
    app = IotmeterApp(runtime, start_runtime=True)
    boots: dict[str, int] = {}
    shown = ""

    async def scenario() -> None:
        nonlocal shown
        async with app.run_test(size=(120, 40)) as pilot:
            fleet = app.screen
            assert isinstance(fleet, FleetScreen)
            if simulate == "no":
                await wait_until(pilot, lambda: app.starter is not None
                                 and app.starter.done.is_set(), timeout_s=30, what="started")
                await wait_until(pilot, lambda: SILENT_FLEET_HINT in fleet.notices(),
                                 timeout_s=30, what="the hint to start a fleet")
                # The notice line takes the hint at once and paints it on a later refresh.
                await wait_until(pilot, lambda: "no meter is online" in flat_text(app),
                                 timeout_s=10, what="the hint on the screen")
            else:
                await wait_until(pilot, lambda: live_rows(fleet) >= DEMO_FLEET, timeout_s=60,
                                 what="every demo meter online with values")
                assert runtime.simulator is not None
                boots.update({d.device_id: d.boot for d in runtime.simulator.devices()})
            shown = flat_text(app)

    try:
        asyncio.run(scenario())
    finally:
        app.shutdown_runtime()
    return boots, shown


def test_two_starts_on_one_home_both_show_live_meters(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first, _ = run_once(home)
    assert len(first) == DEMO_FLEET
    second, shown = run_once(home)
    assert sorted(second) == sorted(first), "the same meters come back"
    assert all(second[d] == first[d] + 1 for d in first), "one power cycle further"
    assert SILENT_FLEET_HINT not in shown
    # Turned off: the dead fleet is explained, with how to start one.
    _, shown = run_once(home, simulate="no")
    assert "no meter is online" in shown and ":sim" in shown
