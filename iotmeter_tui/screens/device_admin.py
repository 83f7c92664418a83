"""Devices from the keyboard: add, edit (name, location, metadata), delete (confirmed by
typing the id) and a device's configuration, through `ControlServices.devices` (the
same service as `iotmeter device ...` and the REST API). Changes are audited with the OS user
as the actor. A runtime without the service says so instead of failing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.audit import Actor, cli_actor
from iotmeter_tui.backend.devices import validate_config
from iotmeter_tui.backend.errors import InvalidRequest, IotmeterError
from iotmeter_tui.screens.dialog import Field, FormDialog
from iotmeter_tui.view.format import one_line

if TYPE_CHECKING:
    from iotmeter_tui.backend.devices import ConfigChange
    from iotmeter_tui.backend.stores.metadata import Device
    from iotmeter_tui.screens.base import DashboardScreen

UNAVAILABLE = "device service unavailable"
DASHBOARD_ROLE = "dashboard"
DEVICE_TYPES = (("unknown (until its hello)", "unknown"), ("DC meter", "power_meter_dc"),
                ("AC meter", "power_meter_ac"))


def dashboard_actor() -> Actor:
    """Who changes devices from the dashboard: the OS user running it."""
    return Actor(cli_actor(), DASHBOARD_ROLE)


@dataclass(frozen=True, slots=True)
class DeviceForm:
    device_id: str
    device_type: str = "unknown"
    name: str | None = None
    location: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _metadata(text: str) -> dict[str, Any]:
    text = text.strip() or "{}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"metadata: not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ValueError('metadata: a JSON object, e.g. {"substation": "North"}')
    return value


def parse_device(values: dict[str, str]) -> DeviceForm:
    device_id = values["device_id"].strip()
    if not protocol.is_valid_device_id(device_id):
        raise ValueError(f"id: {device_id!r} is not a device id ({protocol.DEVICE_ID_PATTERN})")
    return DeviceForm(device_id, values.get("device_type") or "unknown",
                      values["name"].strip() or None, values["location"].strip() or None,
                      _metadata(values["metadata"]))


def device_dialog(device: Device | None = None) -> FormDialog[DeviceForm]:
    """Add (no device) or edit a device's name, location and metadata."""
    fields = [Field("device_id", "id", device.device_id if device else "",
                    placeholder="dc-0042")]
    if device is None:
        fields.append(Field("device_type", "type", "unknown", choices=DEVICE_TYPES))
    fields += [
        Field("name", "name", (device.name or "") if device else "",
              placeholder="Feeder 3, north portal"),
        Field("location", "location", (device.location or "") if device else "",
              placeholder="Substation North"),
        Field("metadata", "metadata (JSON)",
              json.dumps(device.metadata) if device and device.metadata else "{}"),
    ]
    parse = parse_device
    if device is not None:
        def parse(values: dict[str, str]) -> DeviceForm:  # the id is not editable
            return parse_device({**values, "device_id": device.device_id})

    return FormDialog("Edit device" if device else "Add a device", fields, parse,
                      submit_label="Save" if device else "Add",
                      note="name and location: what operators call it and where it is")


def parse_config(values: dict[str, str]) -> dict[str, Any]:
    text = values["config"].strip() or "{}"
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"config: not JSON ({exc.msg})") from None
    try:
        return validate_config(config)
    except InvalidRequest as exc:
        raise ValueError(str(exc)) from None


def config_dialog(device_id: str, config: dict[str, Any]) -> FormDialog[dict[str, Any]]:
    return FormDialog(
        f"Configuration of {device_id}",
        [Field("config", "config (JSON)", json.dumps(config, sort_keys=True))],
        parse_config, submit_label="Save",
        note="sent to the meter (set_config): interval_s, heartbeat_s, report_temperature · "
             "alert limits: nominal_v, max_current_a, frequency_band_pct, gap_threshold · "
             "notes: x_<name>")


def parse_confirm(device_id: str) -> Any:
    def parse(values: dict[str, str]) -> str:
        if values["confirm"].strip() != device_id:
            raise ValueError(f"type {device_id} to delete it")
        return device_id

    return parse


def delete_dialog(device_id: str) -> FormDialog[str]:
    return FormDialog(
        f"Delete {device_id}?", [Field("confirm", "type its id", "")],
        parse_confirm(device_id), submit_label="Delete",
        note="Removes it from the registry: its open commands fail, its alerts are cleared; "
             "its telemetry and archive stay. A meter that speaks again is registered anew.")


def config_outcome(change: ConfigChange) -> str:
    """What the screen says after a config save: which command went, or why none did."""
    if change.command_id:
        keys = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(change.sent.items()))
        return f"config of {change.device_id} saved; sent set_config {change.command_id} ({keys})"
    return f"config of {change.device_id} saved; no command sent: {change.reason}"


# --- actions ----------------------------------------------------------------------------------

async def _service(screen: DashboardScreen) -> Any | None:
    if not screen.dash.control_offered:
        screen.notify(UNAVAILABLE, severity="error")
        return None
    try:
        return (await screen.dash.control()).devices
    except Exception as exc:
        screen.notify(f"{UNAVAILABLE}: {one_line(str(exc), 100)}", severity="error")
        return None


async def _call(screen: DashboardScreen, what: str, fn: Any, *args: Any) -> Any | None:
    try:
        return await screen.io(fn, *args)
    except IotmeterError as exc:
        screen.notify(f"{what}: {one_line(str(exc), 160)}", severity="error", timeout=8)
        return None


def add_device(screen: DashboardScreen) -> None:
    async def save(form: DeviceForm) -> None:
        service = await _service(screen)
        if service is None:
            return

        def create() -> Any:
            return service.create(form.device_id, form.device_type, name=form.name,
                                  location=form.location, metadata=form.metadata,
                                  actor=dashboard_actor())

        created = await _call(screen, f"add {form.device_id}", create)
        if created is not None:
            screen.notify(f"{form.device_id} added to the registry", timeout=4)
            if created.password:
                screen.notify(f"{form.device_id} broker password (shown once): "
                              f"{created.password}", timeout=60)
            screen.reload()

    screen.app.push_screen(device_dialog(), lambda form: _then(screen, save, form))


def edit_device(screen: DashboardScreen, device_id: str) -> None:
    async def open_dialog() -> None:
        service = await _service(screen)
        if service is None:
            return
        device = await _call(screen, device_id, service.require, device_id)
        if device is None:
            return

        async def save(form: DeviceForm) -> None:
            def update() -> Any:
                return service.update(device_id, name=form.name, location=form.location,
                                      metadata=form.metadata, actor=dashboard_actor())

            if await _call(screen, f"edit {device_id}", update) is not None:
                screen.notify(f"{device_id} saved", timeout=4)
                screen.reload()

        screen.app.push_screen(device_dialog(device), lambda form: _then(screen, save, form))

    screen.run_worker(open_dialog(), group="device-admin")


def delete_device(screen: DashboardScreen, device_id: str, after: Any = None) -> None:
    async def delete(confirmed: str) -> None:
        service = await _service(screen)
        if service is None:
            return

        def remove() -> Any:
            return service.delete(confirmed, actor=dashboard_actor())

        done = await _call(screen, f"delete {confirmed}", remove)
        if done is not None:
            screen.notify(f"{confirmed} deleted: {done.commands_failed} open command(s) "
                          f"failed, {done.alerts_cleared} alert(s) cleared", timeout=6)
            if after is not None:
                after()
            screen.reload()

    screen.app.push_screen(delete_dialog(device_id), lambda ok: _then(screen, delete, ok))


def edit_config(screen: DashboardScreen, device_id: str) -> None:
    async def open_dialog() -> None:
        service = await _service(screen)
        if service is None:
            return
        config = await _call(screen, device_id, service.get_config, device_id)
        if config is None:
            return

        async def save(values: dict[str, Any]) -> None:
            def replace() -> Any:
                return service.replace_config(device_id, values, actor=dashboard_actor())

            change = await _call(screen, f"config of {device_id}", replace)
            if change is not None:
                outcome = config_outcome(change)
                screen.notify(outcome, timeout=10)
                screen.reload()

        screen.app.push_screen(config_dialog(device_id, config),
                               lambda values: _then(screen, save, values))

    screen.run_worker(open_dialog(), group="device-admin")


def _then(screen: DashboardScreen, action: Any, result: Any) -> None:
    """A dialog's answer: None is cancel; anything else runs `action` in a worker."""
    if result is not None:
        screen.run_worker(action(result), group="device-admin")
