"""One error shape: every refusal is RFC 9457 problem+json naming the field at fault, never a
traceback. Also the request id, CORS (preflight included), the rate limit and the body cap."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from testsupport.api import LiveApi, ThreadServer

PROBLEM = "application/problem+json"


def assert_problem(response: requests.Response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in response.text
    if field is not None:
        assert body["field"] == field, body
    return body


def test_not_found_and_method_not_allowed(api: LiveApi) -> None:
    assert_problem(api.call("GET", "/api/v1/no-such-thing"), 404)
    assert_problem(api.call("GET", "/api/v1/devices/ghost"), 404)
    assert_problem(api.call("GET", "/api/v1/commands/cmd-ghost"), 404, "command_id")
    assert_problem(api.call("GET", "/api/v1/ota/campaigns/camp-ghost"), 404, "campaign_id")
    response = api.call("DELETE", "/api/v1/devices")
    body = assert_problem(response, 405)
    assert "GET, POST" in body["detail"]
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_bad_input_names_the_field(api: LiveApi) -> None:
    assert_problem(api.call("GET", "/api/v1/devices?limit=5000"), 422, "limit")
    assert_problem(api.call("GET", "/api/v1/devices?limit=1&limit=2"), 422, "limit")
    assert_problem(api.call("GET", "/api/v1/devices?cursor=forged"), 422)
    body = assert_problem(api.call("POST", "/api/v1/devices",
                                   json={"device_id": "bad id!"}), 422, "device_id")
    assert body["errors"][0]["field"] == "device_id"
    assert_problem(api.call("POST", "/api/v1/devices", json={"device_id": "x", "colour": 1}),
                   422, "colour")
    api.call("POST", "/api/v1/devices", json={"device_id": "dc-1"})
    assert_problem(api.call("GET", "/api/v1/devices/dc-1/telemetry?start=yesterday"), 422,
                   "start")
    assert_problem(api.call("GET", "/api/v1/devices/dc-1/telemetry?every=1fortnight"), 422,
                   "every")
    assert_problem(api.call("GET", "/api/v1/devices/dc-1/telemetry?fields=a;drop"), 422,
                   "fields")
    assert_problem(api.call("GET", "/api/v1/devices/dc-1/telemetry?start=0&every=1ms"), 422,
                   "every")
    assert_problem(api.call("PUT", "/api/v1/devices/dc-1/config",
                            json={"values": {"interval_s": "soon"}}), 422)
    assert_problem(api.call("POST", "/api/v1/devices/dc-1/commands",
                            json={"name": "ping", "timeout_s": -1}), 422, "timeout_s")
    assert_problem(api.call("GET", "/api/v1/rejected?reason=../etc"), 422, "reason")
    assert_problem(api.call("POST", "/api/v1/ota/campaigns",
                            json={"version": "9.9", "all": True}), 422, "version")


def test_conflicts(api: LiveApi) -> None:
    assert api.call("POST", "/api/v1/devices", json={"device_id": "dc-1"}).status_code == 201
    assert_problem(api.call("POST", "/api/v1/devices", json={"device_id": "dc-1"}), 409)
    headers = {"Content-Type": "application/octet-stream"}
    assert api.call("POST", "/api/v1/firmware?version=1.0", data=b"one",
                    headers=headers).status_code == 201
    assert_problem(api.call("POST", "/api/v1/firmware?version=1.0", data=b"two",
                            headers=headers), 409, "version")


def test_bodies_that_are_not_json(api: LiveApi) -> None:
    assert_problem(api.call("POST", "/api/v1/devices", data="device_id=x",
                            headers={"Content-Type": "application/x-www-form-urlencoded"}),
                   415, "Content-Type")
    assert_problem(api.call("POST", "/api/v1/devices", data="{not json",
                            headers={"Content-Type": "application/json"}), 400, "body")
    assert_problem(api.call("POST", "/api/v1/firmware?version=1.0", data="x",
                            headers={"Content-Type": "text/plain"}), 415)


def test_body_cap(serve_api: Callable[..., LiveApi]) -> None:
    api = serve_api({"IOTMETER_API_MAX_BODY_BYTES": "2000",
                     "IOTMETER_API_MAX_FIRMWARE_BYTES": "5000"})
    big = {"device_id": "dc-1", "metadata": {"note": "x" * 5000}}
    assert_problem(api.call("POST", "/api/v1/devices", json=big), 413)
    headers = {"Content-Type": "application/octet-stream"}
    # Firmware has its own, larger cap.
    assert api.call("POST", "/api/v1/firmware?version=1.0", data=b"x" * 4000,
                    headers=headers).status_code == 201
    assert_problem(api.call("POST", "/api/v1/firmware?version=1.1", data=b"x" * 6000,
                            headers=headers), 413)

    def chunks():  # no Content-Length: the cap applies while reading
        for _ in range(10):
            yield b"y" * 1000

    assert_problem(api.call("POST", "/api/v1/firmware?version=1.2", data=chunks(),
                            headers=headers), 413)
    assert api.stores.metadata.get_firmware("1.2") is None


def test_rate_limit(serve_api: Callable[..., LiveApi]) -> None:
    # One token per 10 s: a slow, shared machine cannot refill the bucket mid-test.
    api = serve_api({"IOTMETER_API_RATE_LIMIT": "0.1", "IOTMETER_API_RATE_BURST": "3"})
    statuses = [api.call("GET", "/api/v1/devices", key="viewer").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = api.call("GET", "/api/v1/devices", key="viewer")
    assert_problem(response, 429)
    assert 1 <= int(response.headers["Retry-After"]) <= 10
    # Per key: another key has its own bucket.
    assert api.call("GET", "/api/v1/devices", key="operator").status_code == 200
    metrics = api.call("GET", "/metrics", key=None).text
    assert "iotmeter_api_rate_limited_total 2.0" in metrics
    # Requests without a valid key are limited per client address.
    bad = [api.call("GET", "/api/v1/devices", key="iotm_wrong").status_code for _ in range(4)]
    assert bad == [401, 401, 401, 429]


def test_request_id_is_echoed_or_made(api: LiveApi) -> None:
    response = api.call("GET", "/api/v1/devices", headers={"X-Request-ID": "trace-42"})
    assert response.headers["X-Request-ID"] == "trace-42"
    response = api.call("GET", "/api/v1/ghost", headers={"X-Request-ID": "bad id\u00e9"})
    made = response.headers["X-Request-ID"]
    assert made != "bad id\u00e9" and len(made) == 32
    assert response.json()["request_id"] == made


def test_cors_is_off_by_default(api: LiveApi) -> None:
    preflight = api.call("OPTIONS", "/api/v1/devices", key=None, headers={
        "Origin": "https://ops.example.net", "Access-Control-Request-Method": "GET"})
    assert_problem(preflight, 403, "Origin")
    response = api.call("GET", "/api/v1/devices", headers={"Origin": "https://ops.example.net"})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_for_configured_origins(serve_api: Callable[..., LiveApi]) -> None:
    api = serve_api({"IOTMETER_API_CORS_ORIGINS": "https://ops.example.net"})
    preflight = api.call("OPTIONS", "/api/v1/devices/dc-1", key=None, headers={
        "Origin": "https://ops.example.net", "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://ops.example.net"
    assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    response = api.call("GET", "/api/v1/devices", headers={"Origin": "https://ops.example.net"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://ops.example.net"
    other = api.call("GET", "/api/v1/devices", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert_problem(api.call("OPTIONS", "/api/v1/devices", key=None, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}), 403)


def test_a_store_that_is_down(serve_api: Callable[..., LiveApi]) -> None:
    # Nothing listens on port 9 of loopback: the time-series store is down from the start.
    api = serve_api({"IOTMETER_TSDB_URL": "influxdb://127.0.0.1:9/iot"})
    response = api.call("GET", "/readyz", key=None)
    body = assert_problem(response, 503, "timeseries")
    assert "timeseries store down" in body["detail"]
    assert api.call("GET", "/healthz", key=None).status_code == 200
    api.call("POST", "/api/v1/devices", json={"device_id": "dc-1"})
    assert_problem(api.call("GET", "/api/v1/devices/dc-1/telemetry?fields=voltage_v"), 503)
    assert_problem(api.call("GET", "/api/v1/telemetry/latest"), 503)


@pytest.mark.parametrize("path", ["/api/v1/devices", "/api/v1/devices/x/commands"])
def test_wrong_scheme_in_authorization(api: LiveApi, path: str) -> None:
    response = api.call("GET", path, key=None, headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert_problem(response, 401 if path == "/api/v1/devices" else 405)


def test_an_unexpected_error_is_a_500_problem_without_a_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from iotmeter_tui.api.app import create_app
    from iotmeter_tui.backend.config import load_settings
    from iotmeter_tui.backend.stores import open_stores

    settings = load_settings(env={"IOTMETER_HOME": str(tmp_path)})
    stores = open_stores(settings)
    app = create_app(settings, stores=stores)

    def broken() -> None:  # a bug in a view, as a real one would be
        raise KeyError("secret-internal-name")

    app.add_url_rule("/api/v1/broken", "broken", broken)
    server = ThreadServer(app)
    url = server.start()
    try:
        response = requests.get(url + "/api/v1/broken", timeout=10)
    finally:
        server.stop()
        stores.close()
    body = assert_problem(response, 500)
    assert "secret-internal-name" not in response.text
    assert body["request_id"] in body["detail"]
    assert any("secret-internal-name" in (r.exc_text or "") or r.exc_info
               for r in caplog.records if r.levelname == "ERROR")
