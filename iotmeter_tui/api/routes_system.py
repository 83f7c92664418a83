"""Fleet statistics and the audit log under /api/v1; /healthz, /readyz and /metrics outside
it (no key: probes and Prometheus call them)."""

from __future__ import annotations

import time

import orjson
from flask import Flask, Response
from flask_openapi3 import APIBlueprint, Tag

from iotmeter_tui.api import models as m
from iotmeter_tui.api.routing import api_route, ctx, decode_cursor, encode_cursor, out
from iotmeter_tui.backend.runtime import check_stores

bp = APIBlueprint("system", __name__, url_prefix="/api/v1",
                  abp_tags=[Tag(name="system", description="statistics and audit")])

RATE_WINDOW_MS = 60_000


def _stores_health() -> list[m.StoreHealth]:
    return [m.StoreHealth(name=s.name, ok=s.ok, detail=s.detail)
            for s in check_stores(ctx().stores)]


@api_route(bp, "get", "/stats", role="viewer", responses={200: m.Stats},
           summary="fleet counts by status and type, message rate, store health, open alerts")
def stats() -> Response:
    metadata = ctx().stores.metadata
    by_status_type = metadata.count_devices_by_status_and_type()
    by_status: dict[str, int] = {}
    by_type: dict[str, int] = {}
    for (status, device_type), count in by_status_type.items():
        by_status[status] = by_status.get(status, 0) + count
        by_type[device_type] = by_type.get(device_type, 0) + count
    now = int(time.time() * 1000)
    points = sum(ctx().stores.timeseries.counts(now - RATE_WINDOW_MS, now).values())
    return out(m.Stats(
        devices_total=sum(by_status.values()), devices_by_status=by_status,
        devices_by_type=by_type, telemetry_points_last_minute=points,
        telemetry_points_per_s=round(points / (RATE_WINDOW_MS / 1000), 3),
        open_alerts_by_severity=metadata.count_open_alerts_by_severity(),
        stores=_stores_health()))


@api_route(bp, "get", "/audit", role="admin", responses={200: m.AuditPage},
           summary="the audit log, newest first (admins only)")
def audit(query: m.AuditQuery) -> Response:
    # Keyset pages: the cursor is the id the next page starts below (entries only grow).
    before = decode_cursor(query.cursor, "b") if query.cursor else None
    fetch = min(query.limit + 1, m.MAX_PAGE)  # one more tells whether a next page exists
    entries = ctx().audit.list(limit=fetch, before_id=before, actor=query.actor,
                               action=query.action)
    page = entries[:query.limit]
    more = len(entries) > query.limit or (fetch == query.limit == len(entries))
    cursor = encode_cursor(page[-1].id, "b") if more and page else None
    return out(m.AuditPage(items=[m.AuditEntry.model_validate(e) for e in page],
                           next_cursor=cursor))


def register_plain(app: Flask) -> None:
    def healthz() -> Response:
        return out(m.Health(status="ok"))

    def readyz() -> Response:
        stores = _stores_health()
        down = [s for s in stores if not s.ok]
        if not down:
            return out(m.Health(status="ready", stores=stores))
        detail = "; ".join(f"{s.name} store down: {s.detail}" for s in down)
        body = {"type": "about:blank", "title": "Service Unavailable", "status": 503,
                "detail": detail, "instance": "/readyz", "field": down[0].name,
                "stores": [s.model_dump() for s in stores]}
        return Response(orjson.dumps(body), status=503, mimetype="application/problem+json")

    def metrics() -> Response:
        exposition = app.extensions["iotmeter_metrics"].exposition()
        return Response(exposition, mimetype="text/plain; version=0.0.4")

    app.add_url_rule("/healthz", "healthz", healthz)
    app.add_url_rule("/readyz", "readyz", readyz)
    app.add_url_rule("/metrics", "metrics", metrics)
