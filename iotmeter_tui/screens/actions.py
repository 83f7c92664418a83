"""Actions several views offer: send a command to the selected device(s), through the
runtime's control services (`ControlServices.commands`). A runtime that does not offer them
makes the views say "commands service unavailable" instead of failing; one that cannot open
them (a store down) says why."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from iotmeter_tui.screens.dialog import Field, FormDialog, parse_ids, parse_number
from iotmeter_tui.view.format import one_line

if TYPE_CHECKING:
    from iotmeter_tui.screens.base import DashboardScreen

UNAVAILABLE = "commands service unavailable"
COMMAND_NAMES = ("ping", "reboot", "set_interval", "set_config")
PARAM_HINTS = {
    "ping": "{}",
    "reboot": "{}",
    "set_interval": '{"interval_s": 1}',
    "set_config": '{"heartbeat_s": 30}',
}
DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class CommandRequest:
    device_ids: list[str]
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S


def parse_command(values: dict[str, str]) -> CommandRequest:
    ids = parse_ids(values["devices"])
    if not ids:
        raise ValueError("devices: give at least one device id")
    name = values["name"].strip()
    if not name:
        raise ValueError("command: choose one")
    text = values["params"].strip() or "{}"
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"params: not JSON ({exc.msg})") from None
    if not isinstance(params, dict):
        raise ValueError("params: must be a JSON object, e.g. {\"interval_s\": 1}")
    timeout = parse_number(values["timeout"], "timeout", minimum=1, maximum=86_400)
    return CommandRequest(ids, name, params, timeout)


def command_dialog(device_ids: list[str], name: str = "ping") -> FormDialog[CommandRequest]:
    return FormDialog(
        "Send a command",
        [
            Field("devices", "devices", " ".join(device_ids), placeholder="dc-0001 ac-0002"),
            Field("name", "command", name, choices=[(n, n) for n in COMMAND_NAMES]),
            Field("params", "params (JSON)", PARAM_HINTS.get(name, "{}")),
            Field("timeout", "timeout (s)", f"{DEFAULT_TIMEOUT_S:g}"),
        ],
        parse_command,
        submit_label="Send",
        note="set_interval {\"interval_s\": 0.5} · set_config {\"heartbeat_s\": 30}",
    )


def commands_offered(screen: DashboardScreen) -> bool:
    return screen.dash.control_offered


def open_command_dialog(screen: DashboardScreen, device_ids: list[str]) -> None:
    if not commands_offered(screen):
        screen.notify(UNAVAILABLE, severity="error")
        return

    def sent(request: CommandRequest | None) -> None:
        if request is not None:
            screen.run_worker(send_to_devices(screen, request.device_ids, request.name,
                                              request.params, request.timeout_s))

    screen.app.push_screen(command_dialog(device_ids), sent)


def _send_all(service: Any, ids: list[str], name: str, params: dict[str, Any],
              timeout_s: float) -> list[str]:
    failures = []
    for device_id in ids:
        try:
            service.send(device_id, name, params, timeout_s)
        except Exception as exc:
            failures.append(f"{device_id}: {one_line(str(exc), 80)}")
    return failures


async def send_to_devices(screen: DashboardScreen, ids: list[str], name: str,
                          params: dict[str, Any], timeout_s: float) -> None:
    if not commands_offered(screen):
        screen.notify(UNAVAILABLE, severity="error")
        return
    try:
        service = (await screen.dash.control()).commands
    except Exception as exc:
        screen.notify(f"{UNAVAILABLE}: {one_line(str(exc), 100)}", severity="error")
        return
    failures = await screen.io(_send_all, service, ids, name, params, timeout_s)
    sent = len(ids) - len(failures)
    if sent:
        target = ids[0] if len(ids) == 1 else f"{sent} devices"
        screen.notify(f"{name} → {target}", timeout=3)
    if failures:
        screen.notify(f"{name} failed: {'; '.join(failures[:3])}", severity="error")
    screen.reload()
