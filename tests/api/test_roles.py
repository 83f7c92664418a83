"""The role matrix: every endpoint by no key, a revoked key, viewer, operator, admin. Below the
endpoint's role: 403; no or a revoked key: 401; at or above: answered (never 401/403/5xx).
Every refusal is problem+json and counted; every changing request lands in the audit log."""

from __future__ import annotations

import time
from typing import Any

import pytest

from iotmeter_tui.api.routing import ROUTES
from iotmeter_tui.backend.control.commands import CommandService
from iotmeter_tui.backend.control.ota import OtaService
from iotmeter_tui.backend.stores.metadata import API_KEY_ROLES, DeviceQuality
from testsupport.api import LiveApi

CALLERS = (None, "revoked", *API_KEY_ROLES)


def _fixtures(api: LiveApi) -> dict[str, Any]:
    metadata = api.stores.metadata
    for device_id in ("dc-1", "dc-del"):
        metadata.create_device(device_id, "power_meter_dc")
    alert, _ = metadata.raise_alert("dc-1", "overvoltage", "critical", 950.0, "too high",
                                    int(time.time() * 1000))
    metadata.save_quality([DeviceQuality("dc-1", 97.5, 100.0, 2.5, 0.0, 0.0, 0.0, 0, 120,
                                          int(time.time() * 1000))])
    cmd = CommandService(metadata).send("dc-1", "ping")
    ota = OtaService(metadata, api.stores.archive)
    ota.upload_bytes(b"\x7fELF image", "1.0")
    campaign = ota.start_campaign("1.0", device_ids=["dc-1"])
    return {"alert": alert.id, "command": cmd.id, "campaign": campaign.id}


def _matrix(ids: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(method, path, least role, request kwargs) for every endpoint under /api/v1."""
    raw = {"data": b"image-2", "headers": {"Content-Type": "application/octet-stream"}}
    return [
        ("GET", "/api/v1/devices", "viewer", {}),
        ("POST", "/api/v1/devices", "admin", {"json": {"device_id": "dc-new"}}),
        ("GET", "/api/v1/devices/dc-1", "viewer", {}),
        ("PATCH", "/api/v1/devices/dc-1", "operator", {"json": {"name": "Substation 1"}}),
        ("DELETE", "/api/v1/devices/dc-del", "admin", {}),
        ("GET", "/api/v1/devices/dc-1/config", "viewer", {}),
        ("PUT", "/api/v1/devices/dc-1/config", "operator", {"json": {"values": {}}}),
        ("GET", "/api/v1/devices/dc-1/quality", "viewer", {}),
        ("GET", "/api/v1/devices/dc-1/telemetry", "viewer", {}),
        ("GET", "/api/v1/telemetry/latest", "viewer", {}),
        ("GET", "/api/v1/devices/dc-1/raw", "viewer", {}),
        ("GET", "/api/v1/rejected", "viewer", {}),
        ("GET", "/api/v1/alerts", "viewer", {}),
        ("POST", f"/api/v1/alerts/{ids['alert']}/ack", "operator", {}),
        ("POST", f"/api/v1/alerts/{ids['alert']}/clear", "operator", {}),
        ("POST", "/api/v1/devices/dc-1/commands", "operator", {"json": {"name": "ping"}}),
        ("GET", "/api/v1/commands", "viewer", {}),
        ("GET", f"/api/v1/commands/{ids['command']}", "viewer", {}),
        ("POST", "/api/v1/firmware?version=2.0", "operator", raw),
        ("GET", "/api/v1/ota/campaigns", "viewer", {}),
        ("POST", "/api/v1/ota/campaigns", "operator", {"json": {"version": "1.0",
                                                               "devices": ["dc-1"]}}),
        ("GET", f"/api/v1/ota/campaigns/{ids['campaign']}", "viewer", {}),
        ("POST", f"/api/v1/ota/campaigns/{ids['campaign']}/abort", "operator", {}),
        ("GET", "/api/v1/stats", "viewer", {}),
        ("GET", "/api/v1/audit", "admin", {}),
    ]


def test_every_route_is_in_the_matrix() -> None:
    ids = {"alert": 1, "command": "c", "campaign": "k"}
    covered = set()
    for method, path, _, _ in _matrix(ids):
        path = path.split("?")[0]
        for rule, rule_method in ROUTES:
            pattern = rule.replace("<device_id>", "dc-1").replace("<alert_id>", "1")
            pattern = pattern.replace("<command_id>", "c").replace("<campaign_id>", "k")
            if rule_method == method and pattern == path.replace("dc-del", "dc-1"):
                covered.add((rule, rule_method))
    assert covered == set(ROUTES)


def test_role_matrix(api: LiveApi) -> None:
    ids = _fixtures(api)
    outcomes = []
    for method, path, least, kwargs in _matrix(ids):
        for who in CALLERS:
            response = api.call(method, path, key=who, **kwargs)
            outcomes.append((method, path, who, response.status_code))
            if who in (None, "revoked"):
                expected = 401
            elif API_KEY_ROLES.index(who) < API_KEY_ROLES.index(least):
                expected = 403
            else:
                assert response.status_code not in (401, 403), (method, path, who)
                assert response.status_code < 500, (method, path, who, response.text)
                continue
            assert response.status_code == expected, (method, path, who, response.text)
            assert response.headers["Content-Type"] == "application/problem+json"
            problem = response.json()
            assert problem["status"] == expected and problem["detail"]
            if expected == 401:
                assert response.headers["WWW-Authenticate"].startswith("Bearer")

    # What an allowed caller got: the first allowed call of each changing endpoint succeeds.
    firsts: dict[tuple[str, str], int] = {}
    for method, path, who, status in outcomes:
        if who in API_KEY_ROLES and status not in (401, 403):
            firsts.setdefault((method, path), status)
    assert firsts[("POST", "/api/v1/devices")] == 201
    assert firsts[("DELETE", "/api/v1/devices/dc-del")] == 204
    assert firsts[("POST", "/api/v1/devices/dc-1/commands")] == 202
    assert firsts[("POST", f"/api/v1/alerts/{ids['alert']}/ack")] == 204
    assert firsts[("POST", "/api/v1/firmware?version=2.0")] == 201
    assert all(status == 200 for (method, _), status in firsts.items() if method == "GET")

    metrics = api.call("GET", "/metrics", key=None).text
    # Routes are URL rules, never ids: the label set stays bounded whatever the fleet.
    assert "dc-1" not in metrics and ids["command"] not in metrics
    assert ('iotmeter_api_request_duration_seconds_count{method="GET",'
            'route="/api/v1/devices/<device_id>"}') in metrics
    assert "iotmeter_api_requests_in_flight 1.0" in metrics  # the scrape itself
    for reason in ("missing", "revoked", "forbidden"):
        line = next(x for x in metrics.splitlines()
                    if x.startswith(f'iotmeter_api_auth_failures_total{{reason="{reason}"}}'))
        assert float(line.split()[-1]) > 0, reason

    entries = api.call("GET", "/api/v1/audit?limit=1000").json()["items"]
    paged, cursor = [], ""
    while cursor is not None:
        page = api.call("GET", f"/api/v1/audit?limit=7&cursor={cursor}").json()
        paged += page["items"]
        cursor = page["next_cursor"]
    assert paged == entries and len(entries) > 7
    seen = {(e["actor"], e["action"], e["result"]) for e in entries}
    assert ("test-viewer", "device.create", "denied") in seen
    assert ("test-admin", "device.create", "ok") in seen
    assert ("test-operator", "command.send", "ok") in seen
    assert ("test-operator", "alert.ack", "ok") in seen
    assert ("test-operator", "firmware.upload", "ok") in seen
    assert ("test-admin", "device.delete", "ok") in seen
    assert all(e["request_id"] for e in entries)
    # Reads are not audited.
    assert not any(e["action"].startswith("GET") for e in entries)


def test_head_needs_a_key_like_get(api: LiveApi) -> None:
    api.stores.metadata.create_device("dc-1", "power_meter_dc")
    assert api.call("HEAD", "/api/v1/devices/dc-1", key=None).status_code == 401
    assert api.call("HEAD", "/api/v1/audit", key="viewer").status_code == 403
    assert api.call("HEAD", "/api/v1/devices/dc-1", key="viewer").status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json",
                                  "/api/v1/docs/"])
def test_probes_and_documents_need_no_key(api: LiveApi, path: str) -> None:
    response = api.call("GET", path, key=None)
    assert response.status_code == 200, response.text


def test_docs_page_is_served_from_the_package(api: LiveApi) -> None:
    page = api.call("GET", "/api/v1/docs/swagger", key=None)
    assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
    assert "://" not in page.text.split("<body>")[0]  # no CDN: assets are local
    asset = api.call("GET", "/api/v1/docs/swagger/js/swagger-ui-bundle.js", key=None)
    assert asset.status_code == 200 and len(asset.content) > 100_000
    linked = api.call("GET", "/api/v1/docs/openapi.json", key=None).json()
    assert linked == api.call("GET", "/api/v1/openapi.json", key=None).json()
    assert linked["openapi"].startswith("3.1")
