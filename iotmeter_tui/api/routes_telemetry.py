"""Telemetry from the time-series store: one device's fields over a range, raw or
downsampled, as JSON or CSV; and the latest values of many devices at once."""

from __future__ import annotations

import csv
import io
import time

from flask import Response, request
from flask_openapi3 import APIBlueprint, Tag

from iotmeter_tui.api import models as m
from iotmeter_tui.api.problems import ApiProblem
from iotmeter_tui.api.routing import api_route, ctx, out, parse_duration, parse_time
from iotmeter_tui.backend.protocol import is_valid_device_id
from iotmeter_tui.backend.stores.timeseries import check_field_names

bp = APIBlueprint("telemetry", __name__, url_prefix="/api/v1",
                  abp_tags=[Tag(name="telemetry", description="measurements")])

DEFAULT_RANGE_MS = 3_600_000
MAX_BUCKETS = 10_000
MAX_RAW_POINTS = 100_000
CSV_TYPE = "text/csv"
MAX_LATEST_DEVICES = 1000


def _wants_csv() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", CSV_TYPE])
    return best == CSV_TYPE


@api_route(bp, "get", "/devices/{device_id}/telemetry", role="viewer",
           responses={200: {"description": "the points (JSON, or CSV with Accept: text/csv)",
                            "content": {"application/json": {"schema": {
                                "$ref": "#/components/schemas/Telemetry"}},
                                "text/csv": {"schema": {"type": "string"}}}}},
           summary="a device's fields over a time range, raw or downsampled")
def telemetry(path: m.DevicePath, query: m.TelemetryQuery) -> Response:
    now = int(time.time() * 1000)
    end = parse_time("end", query.end, now)
    start = parse_time("start", query.start, end - DEFAULT_RANGE_MS)
    if start >= end:
        raise ApiProblem(422, "start must be before end", field="start")
    store = ctx().stores.timeseries
    if query.fields:
        try:
            fields = check_field_names(f.strip() for f in query.fields.split(",") if f.strip())
        except ValueError as exc:
            raise ApiProblem(422, f"fields: {exc}", field="fields") from None
    else:
        latest = store.latest([path.device_id]).get(path.device_id)
        fields = sorted(latest.fields) if latest is not None else []
    if ctx().stores.metadata.get_device(path.device_id) is None and not fields:
        raise ApiProblem(404, f"no device {path.device_id!r}", field="device_id")

    every_ms = None
    points: list[m.TelemetryPoint] = []
    if query.every:
        every_ms = parse_duration("every", query.every)
        buckets = -(-(end - start) // every_ms)
        if buckets > MAX_BUCKETS:
            raise ApiProblem(422, f"every: {buckets} buckets in this range; at most "
                             f"{MAX_BUCKETS} (a wider `every` or a shorter range)",
                             field="every")
        # Buckets exactly `every` wide: the range is stretched to a whole number of them.
        end = start + buckets * every_ms
        if fields:
            for bucket in store.history(path.device_id, fields, start, end, buckets,
                                        aggregates=[query.agg]):
                points.append(m.TelemetryPoint(ts=bucket.ts, values={
                    f: bucket.values.get(f, {}).get(query.agg) for f in fields}))
    elif fields:
        raw = store.points(path.device_id, start, end)
        if len(raw) > MAX_RAW_POINTS:
            raise ApiProblem(422, f"{len(raw)} points in this range; at most "
                             f"{MAX_RAW_POINTS} raw (downsample with `every`)", field="every")
        for point in raw:
            points.append(m.TelemetryPoint(ts=point.ts, values={
                f: point.fields.get(f) for f in fields}))
    result = m.Telemetry(device_id=path.device_id, start=start, end=end, every_ms=every_ms,
                         agg=query.agg if every_ms else None, fields=fields, points=points)
    if _wants_csv():
        return _csv(result)
    return out(result)


def _csv(result: m.Telemetry) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["ts", *result.fields])
    for point in result.points:
        writer.writerow([point.ts, *("" if point.values.get(f) is None else repr(point.values[f])
                                     for f in result.fields)])
    return Response(buffer.getvalue(), mimetype=CSV_TYPE)


@api_route(bp, "get", "/telemetry/latest", role="viewer", responses={200: m.LatestList},
           summary="the latest values of the given devices (repeat `device`) or of all")
def latest(query: m.LatestQuery) -> Response:
    ids = query.device or None
    if ids is not None:
        if len(ids) > MAX_LATEST_DEVICES:
            raise ApiProblem(422, f"device: at most {MAX_LATEST_DEVICES} ids in one call "
                             "(none: the whole fleet)", field="device")
        for device_id in ids:
            if not is_valid_device_id(device_id):
                raise ApiProblem(422, f"device: {device_id[:80]!r} is not a device id",
                                 field="device")
    values = ctx().stores.timeseries.latest(ids)
    return out(m.LatestList(items=[
        m.LatestValues(device_id=v.device_id, device_type=v.device_type, ts=v.ts,
                       values=dict(v.fields)) for _, v in sorted(values.items())]))
