"""The raw archive as NDJSON streams: a device's messages exactly as received, and the
rejected messages with their reasons. Streamed object by object from svc's readers, never
loaded whole; the first line is read before the answer starts, so a store that is down is a
503 problem, not a broken 200."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
from flask import Response
from flask_openapi3 import APIBlueprint, Tag

from iotmeter_tui.api import models as m
from iotmeter_tui.api.problems import ApiProblem
from iotmeter_tui.api.routing import api_route, ctx, parse_time
from iotmeter_tui.backend.archive_reader import iter_raw, iter_rejected
from iotmeter_tui.backend.protocol import MAX_TS_MS, is_valid_device_id

log = logging.getLogger(__name__)

bp = APIBlueprint("archive", __name__, url_prefix="/api/v1",
                  abp_tags=[Tag(name="archive", description="raw messages as received")])

NDJSON = "application/x-ndjson"
NDJSON_RESPONSE = {200: {"description": "one JSON object per line", "content": {
    NDJSON: {"schema": {"type": "string"}}}}}


def _range(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    start_ms = parse_time("start", start, 0) if start else None
    end_ms = parse_time("end", end, MAX_TS_MS) if end else None
    if start_ms is not None and end_ms is not None and start_ms >= end_ms:
        raise ApiProblem(422, "start must be before end", field="start")
    return start_ms, end_ms


def _stream(lines: Iterator[bytes], field: str) -> Response:
    try:
        first = next(lines, None)  # store errors surface here, as problems
    except ValueError as exc:  # the reader refuses a name that cannot be in a key
        raise ApiProblem(422, f"{field}: {exc}", field=field) from None

    def body() -> Iterator[bytes]:
        try:
            if first is not None:
                yield first
            yield from lines
        except Exception:
            # Mid-stream the status is sent: the client sees a truncated body, the log why.
            log.exception("archive stream broken off")

    return Response(body(), mimetype=NDJSON)


def _lines(raw: Iterator[bytes]) -> Iterator[bytes]:
    for line in raw:
        yield line if line.endswith(b"\n") else line + b"\n"


@api_route(bp, "get", "/devices/{device_id}/raw", role="viewer", responses=NDJSON_RESPONSE,
           summary="a device's raw messages by category and time range (NDJSON stream)")
def raw(path: m.DevicePath, query: m.RawQuery) -> Response:
    start_ms, end_ms = _range(query.start, query.end)
    return _stream(_lines(iter_raw(ctx().stores.archive, path.device_id,
                                   category=query.category, start_ms=start_ms,
                                   end_ms=end_ms)), "category")


@api_route(bp, "get", "/rejected", role="viewer", responses=NDJSON_RESPONSE,
           summary="rejected messages with their reasons (NDJSON stream)")
def rejected(query: m.RejectedQuery) -> Response:
    if query.device is not None and not is_valid_device_id(query.device):
        raise ApiProblem(422, f"device: {query.device[:80]!r} is not a device id",
                         field="device")
    start_ms, end_ms = _range(query.start, query.end)
    entries = iter_rejected(ctx().stores.archive, reason=query.reason, device_id=query.device,
                            start_ms=start_ms, end_ms=end_ms)
    return _stream((orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE, default=str)
                    for entry in entries), "reason")
