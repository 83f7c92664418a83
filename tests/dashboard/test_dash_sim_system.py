"""Simulator controller keys; system health; a store that is down or a runtime that fails to
start shows as a status line, never a traceback."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from dash_dataset import DownStore, FakeRuntime, FakeSimulator
from dash_helpers import (
    drive,
    flat_text,
    press,
    reload_and_settle,
    screen_text,
    settle,
    wait_until,
)

from iotmeter_tui.app import IotmeterApp
from iotmeter_tui.backend.stores import Stores
from iotmeter_tui.screens.dialog import FormDialog
from iotmeter_tui.screens.fleet import FleetScreen
from iotmeter_tui.screens.simulator import SimulatorScreen


def test_simulator_figures_and_device_keys(make_app: Any, dash_runtime: Any) -> None:
    sim: FakeSimulator = dash_runtime.simulator

    async def scenario(pilot: Any) -> None:
        screen = pilot.app.screen
        assert isinstance(screen, SimulatorScreen)
        text = flat_text(pilot.app)
        assert "8 devices, 7 powered, 6 online" in text and "drop 2, dup 1" in text
        assert len(screen.table.rows) == 8
        await press(pilot, "b")  # reboot dc-0001
        await press(pilot, "down", "d")  # drop ac-0002's connection
        await press(pilot, "down", "x")  # remove dc-0003
        await press(pilot, "down", "o")  # ac-0004 is off: on
        await press(pilot, "up", "o")  # dc-0003 is on: off
        await press(pilot, "space", "space", "b")  # marked: dc-0003 and ac-0004
        await wait_until(pilot, lambda: len(sim.calls) == 6, what="six controller calls")
        assert sim.calls == [("reboot", ["dc-0001"]), ("drop", ["ac-0002"]),
                             ("remove", ["dc-0003"]), ("power_on", ["ac-0004"]),
                             ("power_off", ["dc-0003"]), ("reboot", ["ac-0004", "dc-0003"])]

    drive(make_app("simulator"), scenario)


def test_simulator_rate_faults_stop_and_start(make_app: Any, dash_runtime: Any) -> None:
    sim: FakeSimulator = dash_runtime.simulator

    async def scenario(pilot: Any) -> None:
        await press(pilot, "r")
        dialog = pilot.app.screen
        assert isinstance(dialog, FormDialog)
        dialog.set_value("rate", "0")
        await press(pilot, "enter")
        assert "rate must be at least 0.001" in screen_text(pilot.app)
        dialog.set_value("rate", "2.5")
        await press(pilot, "enter")
        await press(pilot, "f")
        pilot.app.screen.set_value("faults", "drop=2x")
        await press(pilot, "enter")
        assert "is not a number" in screen_text(pilot.app)
        pilot.app.screen.set_value("faults", "drop=0.01,dup=0.02")
        await press(pilot, "enter")
        await press(pilot, "s")  # running: stop
        await wait_until(pilot, lambda: not sim.running, what="stopped")
        assert sim.calls[:3] == [("set_rate", (2.5, None)),
                                 ("set_faults", "drop=0.01,dup=0.02"), ("stop", True)]
        await reload_and_settle(pilot)
        assert "simulator stopped" in screen_text(pilot.app)
        await press(pilot, "s")  # stopped: s asks how many devices to start with
        dialog = pilot.app.screen
        dialog.set_value("count", "24")
        dialog.set_value("kind", "dc")
        await press(pilot, "ctrl+s")
        await wait_until(pilot, lambda: dash_runtime.started_simulators, what="started")
        assert dash_runtime.started_simulators == [(24, "dc", 1.0)]

    drive(make_app("simulator"), scenario)


def test_simulator_absent(make_app: Any, dash_stores: Stores) -> None:
    runtime = FakeRuntime(dash_stores, simulator=None)

    async def scenario(pilot: Any) -> None:
        assert "simulator stopped" in screen_text(pilot.app)
        await press(pilot, "b")  # nothing to reboot: a warning, no crash
        await press(pilot, "a", "ctrl+s")
        await wait_until(pilot, lambda: runtime.started_simulators, what="started")
        assert runtime.started_simulators == [(10, "mixed", 1.0)]

    drive(make_app("simulator", runtime=runtime), scenario)


def test_system_shows_health_sinks_and_stores(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        text = screen_text(pilot.app)
        assert "broker connected" in text
        assert "1,234,567" in text and "1,234,560" in text  # received, acked
        assert "3.0 MiB" in text  # spool
        assert "timeseries: connection refused" in text and "5.0 MiB" in text
        assert "sqlite:///data/iotmeter.db" in text
        await press(pilot, "r")
        assert pilot.app.status.stores and all(s.ok for s in pilot.app.status.stores)

    drive(make_app("system"), scenario)


def test_system_without_collector_and_with_stale_health(make_app: Any, dash_runtime: Any) -> None:
    async def scenario(pilot: Any) -> None:
        dash_runtime.worker.snapshot = replace(dash_runtime.worker.snapshot, at=0.0,
                                               broker_connected=False,
                                               broker_error="connection refused")
        await pilot.app._poll_status()
        await settle(pilot)
        text = screen_text(pilot.app)
        assert "no broker" in text and "broker: connection refused" in text
        assert "health" in text and "s old" in text
        dash_runtime.worker = None
        await pilot.app._poll_status()
        await settle(pilot)
        assert "collector: not run by this dashboard" in screen_text(pilot.app)

    drive(make_app("system"), scenario)


def test_metadata_down_is_a_status_line(make_app: Any, dash_stores: Stores) -> None:
    down = DownStore("postgresql", "no connection to db:5432 (connection refused)")
    stores = Stores(down, dash_stores.timeseries, dash_stores.archive,  # type: ignore[arg-type]
                    dash_stores.urls)
    runtime = FakeRuntime(stores)

    async def scenario(pilot: Any) -> None:
        text = screen_text(pilot.app)
        assert "✖ postgresql: no connection to db:5432 (connection refused)" in text
        assert "registry unavailable" in text
        assert "Traceback" not in text
        assert [s.ok for s in pilot.app.status.stores] == [False, True, True]
        for view in ("alerts", "commands", "ota", "system"):
            await press(pilot, "colon", *view, "enter")
            assert "postgresql: no connection" in screen_text(pilot.app), view
        pilot.app.open_device("dc-0001")
        await press(pilot)
        await wait_until(pilot, lambda: pilot.app.screen.loads, what="device loaded")
        await press(pilot)
        assert "postgresql: no connection" in screen_text(pilot.app)

    drive(make_app(runtime=runtime), scenario)


def test_timeseries_down_keeps_the_registry(make_app: Any, dash_stores: Stores) -> None:
    down = DownStore("influxdb", "http://influx:8086: connection refused")
    stores = Stores(dash_stores.metadata, down, dash_stores.archive,  # type: ignore[arg-type]
                    dash_stores.urls)

    async def scenario(pilot: Any) -> None:
        screen = pilot.app.screen
        assert isinstance(screen, FleetScreen) and screen.table.total == 30
        text = screen_text(pilot.app)
        assert "✖ influxdb: http://influx:8086: connection refused" in text
        dc1 = next(line for line in text.splitlines() if line.startswith("dc-0001"))
        assert "● online" in dc1 and "—" in dc1

    drive(make_app(runtime=FakeRuntime(stores)), scenario)


class StartingRuntime(FakeRuntime):
    """A runtime whose start() blocks until released, then fails (or not)."""

    def __init__(self, stores: Stores, error: Exception | None) -> None:
        super().__init__(stores)
        self.release = threading.Event()
        self.error = error
        self.stopped = False
        self.worker = None

    def start(self) -> None:
        self.release.wait(10)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self.stopped = True


def test_start_up_progress_then_failure_is_a_status_line(dash_stores: Stores) -> None:
    from dash_dataset import frozen_now

    from iotmeter_tui.backend.broker import BrokerError

    runtime = StartingRuntime(dash_stores, BrokerError(
        "mosquitto not found: install it with `apt-get install mosquitto`"))
    app = IotmeterApp(runtime, now=frozen_now, refresh_s=0.1, start_runtime=True)

    async def scenario(pilot: Any) -> None:
        await wait_until(pilot, lambda: "starting" in screen_text(pilot.app), what="starting")
        assert app.screen.table.total == 30  # the stores are read while it starts
        runtime.release.set()
        await wait_until(pilot, lambda: "start-up failed: mosquitto not found" in
                         screen_text(pilot.app), what="failure line")
        assert "Traceback" not in screen_text(pilot.app)

    drive(app, scenario)
    app.shutdown_runtime()
    assert runtime.stopped


def test_start_up_success_clears_the_line(dash_stores: Stores) -> None:
    from dash_dataset import frozen_now

    runtime = StartingRuntime(dash_stores, None)
    runtime.release.set()
    app = IotmeterApp(runtime, now=frozen_now, refresh_s=0.1, start_runtime=True)

    async def scenario(pilot: Any) -> None:
        await wait_until(pilot, lambda: app.status.phase == "running", what="running")
        await press(pilot)
        assert "start" not in screen_text(pilot.app).split("\n")[-2]

    drive(app, scenario)
    lines: list[str] = []
    app.shutdown_runtime(say=lines.append)
    assert runtime.stopped and lines == ["iotmeter: stopping simulator, collector and broker …"]
