"""Firmware images and OTA campaigns through OtaService (what `iotmeter ota` and the
dashboard use): upload, start, follow, abort. The collector's dispatcher rolls them out."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import Response, request
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
    read_body,
)
from iotmeter_tui.backend.control.ota import CampaignStatus, OtaError
from iotmeter_tui.backend.protocol import is_valid_label

bp = APIBlueprint("ota", __name__, url_prefix="/api/v1")
OTA = [Tag(name="ota", description="firmware images and update campaigns")]

FIRMWARE_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file", "version"],
        "properties": {"file": {"type": "string", "format": "binary"},
                       "version": {"type": "string", "pattern": m.LABEL},
                       "signature": {"type": "string", "pattern": m.SIGNATURE}}}}}}}


def _firmware(fw: Any) -> m.Firmware:
    return m.Firmware(version=fw.version, size=fw.size, sha256=fw.sha256,
                      uploaded_at=fw.uploaded_at, signature=fw.signature)


@api_route(bp, "post", "/firmware", role="operator", action="firmware.upload",
           max_body="api_max_firmware_bytes", responses={201: m.Firmware}, tags=OTA,
           openapi_extensions=FIRMWARE_BODY,
           summary="upload an image: multipart (file, version, signature) or a raw body with "
           "?version=&signature=")
def upload_firmware(query: m.FirmwareQuery) -> Response:
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        version = request.form.get("version") or query.version
        signature = request.form.get("signature") or query.signature
        if upload is None:
            raise ApiProblem(422, "file: the multipart body has no 'file' part", field="file")
        image = upload.read()
    elif request.mimetype == "application/octet-stream":
        version, signature = query.version, query.signature
        image = read_body()
    else:
        raise ApiProblem(415, "send the image as application/octet-stream (with ?version=) "
                         "or multipart/form-data", field="Content-Type")
    if not version or not is_valid_label(version):
        raise ApiProblem(422, "version: a firmware version is needed (letters, digits, "
                         "'_.+-', at most 64)", field="version")
    note_target(version)
    try:
        fw = ctx().ota.upload_bytes(image, version, signature)
    except OtaError as exc:
        status = 409 if "already exists" in str(exc) else 422
        raise ApiProblem(status, str(exc), field="version" if status == 409 else "file") \
            from None
    return out(_firmware(fw), 201)


def _campaign(c: Any) -> dict[str, Any]:
    data = asdict(c)
    data.setdefault("created_by", None)
    return data


def _detail(status: CampaignStatus) -> m.CampaignDetail:
    return m.CampaignDetail(**_campaign(status.campaign), tally=asdict(status.tally),
                            targets=[m.OtaTarget(**{k: v for k, v in asdict(t).items()
                                                    if k != "campaign_id"})
                                     for t in status.targets])


@api_route(bp, "get", "/ota/campaigns", role="viewer", responses={200: m.CampaignPage},
           tags=OTA, summary="campaigns, newest first")
def list_campaigns(query: m.CampaignQuery) -> Response:
    offset = decode_cursor(query.cursor)
    campaigns = ctx().ota.list_campaigns(offset + query.limit + 1)
    page, cursor = page_of(campaigns[offset:], offset, query.limit)
    return out(m.CampaignPage(items=[m.Campaign(**_campaign(c)) for c in page],
                              next_cursor=cursor))


@api_route(bp, "post", "/ota/campaigns", role="operator", action="ota.start", json_body=True,
           responses={201: m.CampaignDetail}, tags=OTA,
           summary="start a campaign: devices, a type or all; batch size; failure threshold")
def start_campaign(body: m.CampaignCreate) -> Response:
    chosen = sum((body.devices is not None, body.type is not None, body.all))
    if chosen != 1:
        raise ApiProblem(422, "choose exactly one of devices, type, all", field="devices")
    if body.batch_size is not None and body.batch_pct is not None:
        raise ApiProblem(422, "give batch_size or batch_pct, not both", field="batch_pct")
    service = ctx().ota
    try:
        campaign = service.start_campaign(
            body.version, device_ids=body.devices, device_type=body.type,
            all_devices=body.all, batch_size=body.batch_size, batch_pct=body.batch_pct,
            max_failures_pct=body.max_failures_pct, target_timeout_s=body.target_timeout_s,
            created_by=caller().name)
    except OtaError as exc:
        text = str(exc)
        # A device still updating in another campaign is a conflict; the rest is bad input.
        status = 409 if "still updating" in text else 422
        raise ApiProblem(status, text, field="version" if "firmware" in text else "devices") \
            from None
    note_target(campaign.id, f"{body.version} {campaign.selector}"[:500])
    return out(_detail(service.status(campaign.id)), 201,
               {"Location": f"/api/v1/ota/campaigns/{campaign.id}"})


def _status(campaign_id: str) -> CampaignStatus:
    try:
        return ctx().ota.status(campaign_id)
    except OtaError:
        raise ApiProblem(404, f"no campaign {campaign_id[:100]!r}", field="campaign_id") \
            from None


@api_route(bp, "get", "/ota/campaigns/{campaign_id}", role="viewer",
           responses={200: m.CampaignDetail}, tags=OTA,
           summary="a campaign's progress: its targets and their tally")
def get_campaign(path: m.CampaignPath) -> Response:
    return out(_detail(_status(path.campaign_id)))


@api_route(bp, "post", "/ota/campaigns/{campaign_id}/abort", role="operator",
           action="ota.abort", responses={200: m.CampaignDetail}, tags=OTA,
           summary="stop offering; devices mid-update are still followed")
def abort_campaign(path: m.CampaignPath) -> Response:
    _status(path.campaign_id)
    try:
        ctx().ota.abort(path.campaign_id, f"aborted by {caller().name} (API)")
    except OtaError as exc:
        raise ApiProblem(409, str(exc), field="campaign_id") from None
    return out(_detail(_status(path.campaign_id)))
