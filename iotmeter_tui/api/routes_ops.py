"""Alerts (list, acknowledge, clear) on the metadata store's alert methods, and commands
through CommandService: the same calls the dashboard and `iotmeter command` make."""

from __future__ import annotations

import time

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from iotmeter_tui.api import models as m
from iotmeter_tui.api.problems import ApiProblem
from iotmeter_tui.api.routing import (
    api_route,
    caller,
    ctx,
    decode_cursor,
    note_target,
    out,
    page_of,
)
from iotmeter_tui.backend.control.commands import CommandError
from iotmeter_tui.backend.stores.metadata import COMMAND_FINAL_STATES

bp = APIBlueprint("ops", __name__, url_prefix="/api/v1")
ALERTS = [Tag(name="alerts", description="alarm lifecycle: active, acknowledged, cleared")]
COMMANDS = [Tag(name="commands", description="commands to devices")]

# Filters the store cannot apply (rule, severity) are applied to at most this many alerts.
ALERT_SCAN = 10_000


@api_route(bp, "get", "/alerts", role="viewer", responses={200: m.AlertPage}, tags=ALERTS,
           summary="alerts, newest first; filter by device, rule, severity, state")
def list_alerts(query: m.AlertQuery) -> Response:
    offset = decode_cursor(query.cursor)
    filtered = query.rule is not None or query.severity is not None
    fetch = ALERT_SCAN if filtered else offset + query.limit + 1
    alerts = ctx().stores.metadata.list_alerts(state=query.state, device_id=query.device,
                                               limit=fetch)
    if filtered:
        alerts = [a for a in alerts if (query.rule is None or a.rule == query.rule)
                  and (query.severity is None or a.severity == query.severity)]
    page, cursor = page_of(alerts[offset:], offset, query.limit)
    return out(m.AlertPage(items=[m.Alert.model_validate(a) for a in page], next_cursor=cursor))


def _alert_change(alert_id: int, verb: str) -> Response:
    metadata = ctx().stores.metadata
    now = int(time.time() * 1000)
    changed = (metadata.acknowledge_alert(alert_id, now) if verb == "ack"
               else metadata.clear_alert(alert_id, now))
    if not changed:
        wanted = "active" if verb == "ack" else "open"
        raise ApiProblem(409, f"alert {alert_id} is not {wanted} (or does not exist)",
                         field="alert_id")
    return Response(status=204)


@api_route(bp, "post", "/alerts/{alert_id}/ack", role="operator", action="alert.ack",
           responses={204: None}, tags=ALERTS,
           summary="acknowledge an active alert")
def ack_alert(path: m.AlertPath) -> Response:
    return _alert_change(path.alert_id, "ack")


@api_route(bp, "post", "/alerts/{alert_id}/clear", role="operator", action="alert.clear",
           responses={204: None}, tags=ALERTS,
           summary="clear an active or acknowledged alert")
def clear_alert(path: m.AlertPath) -> Response:
    return _alert_change(path.alert_id, "clear")


def _command(cmd: object) -> m.Command:
    return m.Command.model_validate(cmd)


@api_route(bp, "post", "/devices/{device_id}/commands", role="operator",
           action="command.send", json_body=True, responses={202: m.Command}, tags=COMMANDS,
           summary="send a command; 202 with its Location; ?wait=S waits for the outcome")
def send_command(path: m.DevicePath, query: m.CommandSendQuery,
                 body: m.CommandCreate) -> Response:
    service = ctx().commands
    if ctx().stores.metadata.get_device(path.device_id) is None:
        raise ApiProblem(404, f"no device {path.device_id!r}", field="device_id")
    try:
        cmd = service.send(path.device_id, body.name, body.params, body.timeout_s,
                           created_by=caller().name)
    except CommandError as exc:
        raise ApiProblem(422, str(exc), field="params") from None
    note_target(path.device_id, f"{cmd.id} {body.name}")
    if query.wait and cmd.state not in COMMAND_FINAL_STATES:
        cmd = service.wait(cmd.id, timeout_s=query.wait)
    return out(_command(cmd), 202, {"Location": f"/api/v1/commands/{cmd.id}"})


@api_route(bp, "get", "/commands", role="viewer", responses={200: m.CommandPage},
           tags=COMMANDS, summary="commands, newest first")
def list_commands(query: m.CommandQuery) -> Response:
    offset = decode_cursor(query.cursor)
    commands = ctx().commands.list(device_id=query.device, state=query.state,
                                   limit=offset + query.limit + 1)
    page, cursor = page_of(commands[offset:], offset, query.limit)
    return out(m.CommandPage(items=[_command(c) for c in page], next_cursor=cursor))


@api_route(bp, "get", "/commands/{command_id}", role="viewer", responses={200: m.Command},
           tags=COMMANDS, summary="one command")
def get_command(path: m.CommandPath) -> Response:
    cmd = ctx().commands.get(path.command_id)
    if cmd is None:
        raise ApiProblem(404, f"no command {path.command_id[:100]!r}", field="command_id")
    return out(_command(cmd))
