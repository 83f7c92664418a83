"""/api/v1/devices: the registry (list, create, read, change, delete) and each device's
configuration, through DeviceService (the CLI's `iotmeter device` uses it too)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

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

bp = APIBlueprint("devices", __name__, url_prefix="/api/v1",
                  abp_tags=[Tag(name="devices", description="the device registry")])


def device_model(device: Any, cls: type[m.Device] = m.Device, **extra: Any) -> m.Device:
    return cls(**asdict(device), **extra)


def _found(device_id: str) -> Any:
    device = ctx().devices.get(device_id)
    if device is None:
        raise ApiProblem(404, f"no device {device_id!r}", field="device_id")
    return device


@api_route(bp, "get", "/devices", role="viewer", responses={200: m.DevicePage},
           summary="list devices: filter, sort, cursor pages")
def list_devices(query: m.DeviceListQuery) -> Response:
    offset = decode_cursor(query.cursor)
    metadata = ctx().stores.metadata
    filters: dict[str, Any] = {"search": query.q, "status": query.status,
                               "device_type": query.type}
    devices = metadata.list_devices(**filters, order_by=query.sort,
                                    descending=query.order == "desc", offset=offset,
                                    limit=query.limit + 1)
    page, cursor = page_of(devices, offset, query.limit)
    return out(m.DevicePage(items=[device_model(d) for d in page],
                            total=metadata.count_devices(**filters), next_cursor=cursor))


@api_route(bp, "post", "/devices", role="admin", action="device.create", json_body=True,
           responses={201: m.DeviceCreated}, summary="register a device")
def create_device(body: m.DeviceCreate) -> Response:
    note_target(body.device_id)
    device, password = ctx().devices.create(
        body.device_id, body.device_type, name=body.name, location=body.location,
        metadata=body.metadata)
    return out(device_model(device, m.DeviceCreated, password=password), 201,
               {"Location": f"/api/v1/devices/{device.device_id}"})


@api_route(bp, "get", "/devices/{device_id}", role="viewer", responses={200: m.Device},
           summary="one device")
def get_device(path: m.DevicePath) -> Response:
    return out(device_model(_found(path.device_id)))


@api_route(bp, "patch", "/devices/{device_id}", role="operator", action="device.update",
           json_body=True, responses={200: m.Device},
           summary="change a device's name, location or metadata")
def update_device(path: m.DevicePath, body: m.DevicePatch) -> Response:
    changes = body.model_dump(exclude_unset=True)
    device = ctx().devices.update(path.device_id, **changes)
    if device is None:
        raise ApiProblem(404, f"no device {path.device_id!r}", field="device_id")
    return out(device_model(device))


@api_route(bp, "delete", "/devices/{device_id}", role="admin", action="device.delete",
           responses={204: None}, summary="remove a device from the registry (its time "
           "series and archive stay)")
def delete_device(path: m.DevicePath) -> Response:
    if not ctx().devices.delete(path.device_id):
        raise ApiProblem(404, f"no device {path.device_id!r}", field="device_id")
    return Response(status=204)


@api_route(bp, "get", "/devices/{device_id}/config", role="viewer",
           responses={200: m.DeviceConfig}, summary="a device's configuration")
def get_config(path: m.DevicePath) -> Response:
    _found(path.device_id)
    return out(m.DeviceConfig(device_id=path.device_id,
                              values=ctx().devices.get_config(path.device_id)))


@api_route(bp, "put", "/devices/{device_id}/config", role="operator", action="device.config",
           json_body=True, responses={200: m.ConfigResult},
           summary="replace a device's configuration; what the device applies is pushed to "
           "it as a set_config command")
def replace_config(path: m.DevicePath, body: m.ConfigReplace) -> Response:
    _found(path.device_id)
    result = ctx().devices.replace_config(path.device_id, body.values, actor=caller().name)
    command_id = getattr(result, "command_id", None)
    return out(m.ConfigResult(device_id=path.device_id,
                              values=ctx().devices.get_config(path.device_id),
                              command_id=command_id, pushed=command_id is not None,
                              note=getattr(result, "note", None)))
