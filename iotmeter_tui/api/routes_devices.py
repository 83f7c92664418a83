"""/api/v1/devices: the registry (list, create, read, change, delete) and each device's
configuration, through DeviceService (the CLI's `iotmeter device` uses it too). The service
records these changes in the audit log itself, with the caller as its actor."""

from __future__ import annotations

from typing import Any

from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from iotmeter_tui.api import models as m
from iotmeter_tui.api.problems import ApiProblem
from iotmeter_tui.api.routing import actor, api_route, ctx, out

bp = APIBlueprint("devices", __name__, url_prefix="/api/v1",
                  abp_tags=[Tag(name="devices", description="the device registry")])


def device_model(device: Any) -> m.Device:
    return m.Device.model_validate(device)


@api_route(bp, "get", "/devices", role="viewer", responses={200: m.DevicePage},
           summary="list devices: filter, sort, cursor pages")
def list_devices(query: m.DeviceListQuery) -> Response:
    page = ctx().devices.list(search=query.q, status=query.status, device_type=query.type,
                              order_by=query.sort, descending=query.order == "desc",
                              limit=query.limit, after=query.cursor)
    return out(m.DevicePage(items=[device_model(d) for d in page.devices], total=page.total,
                            next_cursor=page.next_after))


@api_route(bp, "post", "/devices", role="admin", action="device.create", json_body=True,
           responses={201: m.DeviceCreated}, summary="register a device")
def create_device(body: m.DeviceCreate) -> Response:
    created = ctx().devices.create(body.device_id, body.device_type, name=body.name,
                                   location=body.location, metadata=body.metadata,
                                   actor=actor())
    device = device_model(created.device)
    return out(m.DeviceCreated(**dict(device), password=created.password), 201,
               {"Location": f"/api/v1/devices/{created.device.device_id}"})


@api_route(bp, "get", "/devices/{device_id}", role="viewer", responses={200: m.Device},
           summary="one device")
def get_device(path: m.DevicePath) -> Response:
    return out(device_model(ctx().devices.require(path.device_id)))


@api_route(bp, "get", "/devices/{device_id}/quality", role="viewer",
           responses={200: m.DeviceQuality},
           summary="a device's data-quality score and its parts (gaps, duplicates, rejects, "
           "counter resets, clock skew, stuck fields)")
def get_quality(path: m.DevicePath) -> Response:
    ctx().devices.require(path.device_id)
    quality = ctx().stores.metadata.device_quality([path.device_id]).get(path.device_id)
    if quality is None:
        raise ApiProblem(404, f"device {path.device_id!r} has no data-quality score yet (the "
                         "collector scores a device once it receives its telemetry)",
                         field="device_id")
    return out(m.DeviceQuality.model_validate(quality))


@api_route(bp, "patch", "/devices/{device_id}", role="operator", action="device.update",
           json_body=True, responses={200: m.Device},
           summary="change a device's name, location or metadata")
def update_device(path: m.DevicePath, body: m.DevicePatch) -> Response:
    changes = body.model_dump(exclude_unset=True)
    device = ctx().devices.update(path.device_id, **changes, actor=actor())
    return out(device_model(device))


@api_route(bp, "delete", "/devices/{device_id}", role="admin", action="device.delete",
           responses={204: None}, summary="remove a device from the registry (its time "
           "series and archive stay)")
def delete_device(path: m.DevicePath) -> Response:
    ctx().devices.delete(path.device_id, actor=actor())
    return Response(status=204)


@api_route(bp, "get", "/devices/{device_id}/config", role="viewer",
           responses={200: m.DeviceConfig}, summary="a device's configuration")
def get_config(path: m.DevicePath) -> Response:
    return out(m.DeviceConfig(device_id=path.device_id,
                              values=ctx().devices.get_config(path.device_id)))


@api_route(bp, "put", "/devices/{device_id}/config", role="operator", action="device.config",
           json_body=True, responses={200: m.ConfigResult},
           summary="replace a device's configuration; what the device applies is pushed to "
           "it as a set_config command")
def replace_config(path: m.DevicePath, body: m.ConfigReplace) -> Response:
    change = ctx().devices.replace_config(path.device_id, body.values, actor=actor())
    return out(m.ConfigResult(device_id=change.device_id, values=change.config,
                              command_id=change.command_id, pushed=change.sent,
                              reason=change.reason))
