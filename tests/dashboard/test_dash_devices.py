"""Devices from the keyboard through the real DeviceService: add, edit name/location/metadata,
delete with confirmation, and a device's configuration validated and pushed as set_config,
the screen saying which command went. Every change is audited with the OS user."""

from __future__ import annotations

from typing import Any

from dash_helpers import drive, flat_text, press, settle, toasts, wait_until

from iotmeter_tui.backend.audit import cli_actor
from iotmeter_tui.screens.device import DeviceScreen
from iotmeter_tui.screens.dialog import FormDialog
from iotmeter_tui.screens.fleet import FleetScreen


async def dialog(pilot: Any, *keys: str) -> FormDialog[Any]:
    await press(pilot, *keys)
    screen = pilot.app.screen
    assert isinstance(screen, FormDialog), type(screen)
    return screen


def error_of(screen: FormDialog[Any]) -> str:
    return str(screen.query_one("#dialog-error").render())


def test_add_edit_and_delete_a_device(make_app: Any, dash_runtime: Any) -> None:
    md = dash_runtime.stores.metadata

    async def scenario(pilot: Any) -> None:
        form = await dialog(pilot, "a")
        form.set_value("device_id", "bad id!")
        await press(pilot, "ctrl+s")
        assert "is not a device id" in error_of(form) and pilot.app.screen is form
        form.set_value("device_id", "dc-0099")
        form.set_value("device_type", "power_meter_dc")
        form.set_value("name", "Feeder 9")
        form.set_value("location", "Substation North")
        form.set_value("metadata", "[1]")
        await press(pilot, "ctrl+s")
        assert "metadata: a JSON object" in error_of(form)
        form.set_value("metadata", '{"portal": "north"}')
        await press(pilot, "ctrl+s")
        await wait_until(pilot, lambda: md.get_device("dc-0099") is not None, what="added")
        device = md.get_device("dc-0099")
        assert (device.device_type, device.name, device.location, device.metadata) == (
            "power_meter_dc", "Feeder 9", "Substation North", {"portal": "north"})
        await settle(pilot)
        assert any("dc-0099 added" in t for t in toasts(pilot.app))

        # Adding it again is refused, the reason on screen.
        form = await dialog(pilot, "a")
        form.set_value("device_id", "dc-0099")
        await press(pilot, "ctrl+s")
        await wait_until(pilot, lambda: any("add dc-0099" in t for t in toasts(pilot.app)),
                         what="the refusal")

        # Edit from the device page: the summary shows the new location.
        pilot.app.open_device("dc-0099")
        await settle(pilot)
        form = await dialog(pilot, "n")
        assert form.values()["name"] == "Feeder 9"
        form.set_value("location", "Depot East")
        await press(pilot, "ctrl+s")
        await wait_until(pilot, lambda: md.get_device("dc-0099").location == "Depot East",
                         what="edited")
        screen = pilot.app.screen
        assert isinstance(screen, DeviceScreen)
        screen.reload()
        await settle(pilot)
        assert "at Depot East" in flat_text(pilot.app)

        # Delete: the id must be typed; then the page closes and the meter is gone.
        form = await dialog(pilot, "x")
        form.set_value("confirm", "dc-009")
        await press(pilot, "ctrl+s")
        assert "type dc-0099 to delete it" in error_of(form)
        form.set_value("confirm", "dc-0099")
        await press(pilot, "ctrl+s")
        await wait_until(pilot, lambda: md.get_device("dc-0099") is None, what="deleted")
        await settle(pilot)
        assert isinstance(pilot.app.screen, FleetScreen)

        entries = md.list_audit(limit=10)
        actions = [(e.action, e.target, e.result) for e in reversed(entries)]
        assert actions == [("device.create", "dc-0099", "ok"),
                           ("device.create", "dc-0099", "conflict"),
                           ("device.update", "dc-0099", "ok"),
                           ("device.delete", "dc-0099", "ok")]
        assert {(e.actor, e.role) for e in entries} == {(cli_actor(), "dashboard")}

    drive(make_app(), scenario)


def test_a_devices_config_is_validated_and_pushed(make_app: Any, dash_runtime: Any) -> None:
    md = dash_runtime.stores.metadata

    async def scenario(pilot: Any) -> None:
        pilot.app.open_device("dc-0001")
        await settle(pilot)
        form = await wait_for_dialog(pilot, "s")
        assert '"heartbeat_s": 30' in form.values()["config"]
        form.set_value("config", '{"heartbeat": 15}')
        await press(pilot, "ctrl+s")
        assert "'heartbeat' is not a known key" in error_of(form)
        form.set_value("config", '{"heartbeat_s": 0}')
        await press(pilot, "ctrl+s")
        assert "config heartbeat_s: 0 is not between" in error_of(form)
        form.set_value("config", '{"heartbeat_s": 15, "interval_s": 1.0, '
                                 '"max_current_a": 2000, "x_note": "new CT"}')
        await press(pilot, "ctrl+s")
        await wait_until(pilot, lambda: dash_runtime.commands.sent, what="set_config sent")
        assert dash_runtime.commands.sent == [("dc-0001", "set_config", {"heartbeat_s": 15},
                                               30.0)]
        await wait_until(pilot, lambda: any("sent set_config cmd-t001 (heartbeat_s=15)" in t
                                            for t in toasts(pilot.app)), what="the outcome")
        assert md.get_config("dc-0001")["max_current_a"] == 2000
        # Only a threshold changed: stored, and the screen says no command went and why.
        form = await wait_for_dialog(pilot, "s")
        form.set_value("config", '{"heartbeat_s": 15, "interval_s": 1.0, '
                                 '"max_current_a": 2500}')
        await press(pilot, "ctrl+s")
        await wait_until(pilot, lambda: any("no command sent: no device-applied key changed"
                                            in t for t in toasts(pilot.app)), what="outcome")
        assert len(dash_runtime.commands.sent) == 1

    drive(make_app(), scenario)


async def wait_for_dialog(pilot: Any, key: str) -> FormDialog[Any]:
    await pilot.press(key)
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, FormDialog), what="dialog")
    await settle(pilot)
    return pilot.app.screen
