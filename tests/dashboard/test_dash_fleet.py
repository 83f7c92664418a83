"""Fleet view: rows from the registry with live values, sort, filter, status filter, marks,
opening a device, ping and the command dialog from the keyboard."""

from __future__ import annotations

from typing import Any

from dash_helpers import drive, press, screen_text, toasts, wait_until

from iotmeter_tui.screens.device import DeviceScreen
from iotmeter_tui.screens.fleet import FleetScreen
from iotmeter_tui.widgets.live_table import LiveTable


def fleet(pilot: Any) -> FleetScreen:
    screen = pilot.app.screen
    assert isinstance(screen, FleetScreen)
    return screen


def keys_of(table: LiveTable) -> list[str]:
    return [row.key for row in table.rows]


def test_fleet_lists_registry_with_live_values(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        table = fleet(pilot).table
        assert table.total == 30
        assert keys_of(table)[:3] == ["ac-0001", "ac-0002", "ac-0003"]
        text = screen_text(pilot.app)
        assert "Fleet 30" in text
        dc1 = next(line for line in text.splitlines() if line.startswith("dc-0001"))
        assert "● online" in dc1 and "1.2.0" in dc1 and "3s" in dc1
        assert "764.8" in dc1  # voltage_v of the latest point
        assert dc1.split()[-2:] == ["1", "74"]  # one open alert; its quality score
        new = next(line for line in text.splitlines() if line.startswith("new-0001"))
        assert "? unknown" in new and "—" in new
        assert new.rstrip().endswith("·")  # not scored yet

    drive(make_app(), scenario)


def test_sort_cycles_columns_and_reverses(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        screen = fleet(pilot)
        await press(pilot, "s")  # device_type
        assert screen.query_state.order_by == "device_type"
        order = keys_of(screen.table)
        assert order[0].startswith("ac-") and all(k.startswith("new-") for k in order[-3:])
        await press(pilot, "s")  # connection_status
        assert screen.query_state.order_by == "connection_status"
        assert screen.table.sort_key == "connection_status"
        await press(pilot, "s", "s")  # fw_version, last_seen
        assert screen.query_state.order_by == "last_seen"
        oldest_first = keys_of(screen.table)
        assert oldest_first[0] == "dc-0005"  # silent for two hours
        await press(pilot, "S")
        assert screen.query_state.descending
        assert keys_of(screen.table)[0] == "ac-0001"  # 2 s ago: the freshest
        assert "SEEN▼" in screen_text(pilot.app)
        await press(pilot, "s")  # quality: the worst meters first, unscored ones last
        assert screen.query_state.order_by == "quality"
        order = keys_of(screen.table)
        assert order[:2] == ["dc-0001", "ac-0012"]
        assert order[-3:] == ["new-0001", "new-0002", "new-0003"]
        assert "QUAL▲" in screen_text(pilot.app)
        await press(pilot, "s")  # wraps to device_id, ascending
        assert screen.query_state.order_by == "device_id"
        assert not screen.query_state.descending

    drive(make_app(), scenario)


def test_slash_filters_in_the_store_and_escape_clears(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        screen = fleet(pilot)
        await press(pilot, "slash", "d", "c", "-", "0", "0", "1")
        assert screen.query_state.search == "dc-001"
        assert keys_of(screen.table) == [f"dc-{i:04d}" for i in range(10, 16)]
        assert "/dc-001" in screen_text(pilot.app)
        await press(pilot, "enter")  # keep the filter, back to the table
        assert screen.table.has_focus
        assert screen.table.total == 6
        await press(pilot, "slash", "escape")  # escape clears it
        assert screen.query_state.search is None
        assert screen.table.total == 30
        await press(pilot, "slash", "z", "z", "z")
        assert screen.table.total == 0
        assert "no devices match the filter" in screen_text(pilot.app)

    drive(make_app(), scenario)


def test_status_filter_cycles(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        screen = fleet(pilot)
        await press(pilot, "o")
        assert screen.query_state.status == "online"
        assert screen.table.total == 30 - 3 - 2 - 3
        await press(pilot, "o")
        assert screen.query_state.status == "offline"
        assert set(keys_of(screen.table)) == {"dc-0005", "dc-0010", "dc-0015", "ac-0006",
                                               "ac-0012"}
        await press(pilot, "o")
        assert screen.table.total == 3  # unknown
        await press(pilot, "o")
        assert screen.query_state.status is None and screen.table.total == 30

    drive(make_app(), scenario)


def test_cursor_enter_opens_device_and_escape_returns(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        await press(pilot, "down", "down", "enter")
        device = pilot.app.screen
        assert isinstance(device, DeviceScreen) and device.device_id == "ac-0003"
        await press(pilot, "escape")
        assert isinstance(pilot.app.screen, FleetScreen)
        assert fleet(pilot).table.cursor == 2

    drive(make_app(), scenario)


def test_ping_the_cursor_device(make_app: Any, dash_runtime: Any) -> None:
    async def scenario(pilot: Any) -> None:
        await press(pilot, "j", "p")
        await wait_until(pilot, lambda: dash_runtime.commands.sent, what="ping sent")
        assert dash_runtime.commands.sent == [("ac-0002", "ping", {}, 10.0)]

    drive(make_app(), scenario)


def test_marks_then_command_dialog_sends_to_each(make_app: Any, dash_runtime: Any) -> None:
    async def scenario(pilot: Any) -> None:
        screen = fleet(pilot)
        await press(pilot, "space", "space")  # marks ac-0001, ac-0002 (the cursor moves on)
        assert screen.table.marked == {"ac-0001", "ac-0002"}
        assert "*ac-0001" in screen_text(pilot.app)
        await press(pilot, "c")
        dialog = pilot.app.screen
        assert dialog.values()["devices"] == "ac-0001 ac-0002"
        dialog.set_value("name", "set_interval")
        dialog.set_value("params", '{"interval_s": 0.5}')
        await press(pilot, "ctrl+s")
        await wait_until(pilot, lambda: len(dash_runtime.commands.sent) == 2, what="2 sent")
        assert dash_runtime.commands.sent == [
            ("ac-0001", "set_interval", {"interval_s": 0.5}, 30.0),
            ("ac-0002", "set_interval", {"interval_s": 0.5}, 30.0),
        ]

    drive(make_app(), scenario)


def test_command_dialog_validates_and_cancels(make_app: Any, dash_runtime: Any) -> None:
    async def scenario(pilot: Any) -> None:
        await press(pilot, "c")
        dialog = pilot.app.screen
        dialog.set_value("params", "{not json")
        await press(pilot, "ctrl+s")
        assert dialog is pilot.app.screen  # still open, saying why
        assert "params: not JSON" in screen_text(pilot.app)
        dialog.set_value("params", "[1]")
        await press(pilot, "ctrl+s")
        assert "must be a JSON object" in screen_text(pilot.app)
        await press(pilot, "escape")
        assert isinstance(pilot.app.screen, FleetScreen)
        assert dash_runtime.commands.sent == []

    drive(make_app(), scenario)


def test_control_not_open_yet_is_opened_off_the_ui_thread(make_app: Any,
                                                         dash_stores: Any) -> None:
    """The runtime's start has not opened its control services (a store was down then, or
    it is still starting): the first ping opens them on an I/O thread, then uses them."""
    from dash_dataset import FakeRuntime

    runtime = FakeRuntime(dash_stores, control_open=False)

    async def scenario(pilot: Any) -> None:
        assert runtime.control is None and runtime.opened_on == []  # looking opens nothing
        await press(pilot, "j", "p")
        await wait_until(pilot, lambda: runtime.commands.sent, what="ping sent")
        assert runtime.commands.sent == [("ac-0002", "ping", {}, 10.0)]
        assert len(runtime.opened_on) == 1 and runtime.opened_on[0].startswith("iotmeter-io")
        await press(pilot, "p")
        await wait_until(pilot, lambda: len(runtime.commands.sent) == 2, what="second ping")
        assert len(runtime.opened_on) == 1  # opened once, then used as it is

    drive(make_app(runtime=runtime), scenario)


def test_control_that_cannot_open_is_a_status(make_app: Any, dash_stores: Any) -> None:
    from dash_dataset import FakeRuntime

    from iotmeter_tui.backend.errors import StoreUnavailable

    runtime = FakeRuntime(dash_stores, control_open=False)

    def refuse() -> Any:
        raise StoreUnavailable("metadata", "connection refused")

    runtime.open_control = refuse  # type: ignore[method-assign]

    async def scenario(pilot: Any) -> None:
        await press(pilot, "j", "p")
        await wait_until(pilot, lambda: "connection refused" in " ".join(toasts(pilot.app)),
                         what="the reason shown")
        assert "commands service unavailable" in " ".join(toasts(pilot.app))
        assert runtime.commands.sent == []

    drive(make_app(runtime=runtime), scenario)


def test_without_commands_service_says_so(make_app: Any, dash_stores: Any) -> None:
    from dash_dataset import FakeRuntime

    runtime = FakeRuntime(dash_stores, services=False)

    async def scenario(pilot: Any) -> None:
        await press(pilot, "p")
        assert "commands service unavailable" in toasts(pilot.app)
        await press(pilot, "c")
        assert isinstance(pilot.app.screen, FleetScreen)  # no dialog without a service

    drive(make_app(runtime=runtime), scenario)
