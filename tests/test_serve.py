"""The access check in front of `iotmeter serve` (textual-serve has none): which binds need a
token, the token and operator API keys (real SQLite store, real aiohttp server on loopback),
the cookie that replaces a token in the URL, and cross-origin websockets refused. The whole
path in a browser: tests/dashboard/test_dash_serve.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from iotmeter_tui.backend.apikeys import ApiKeyService
from iotmeter_tui.backend.config import load_settings
from iotmeter_tui.backend.stores.factory import open_metadata
from iotmeter_tui.serve import COOKIE, access_for, auth_middleware, is_loopback


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("::1", True), ("localhost", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("ops.example.net", False)])


def test_which_binds_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_bind_elsewhere_always_needs_a_token(tmp_path: Path) -> None:
    settings = load_settings(env={"IOTMETER_HOME": str(tmp_path)})
    assert not access_for(settings, "127.0.0.1").required
    made_up = access_for(settings, "0.0.0.0")
    assert made_up.required and made_up.token and len(made_up.token) >= 24
    assert access_for(settings, "0.0.0.0").token != made_up.token
    fixed = load_settings(env={"IOTMETER_HOME": str(tmp_path), "IOTMETER_SERVE_TOKEN": "t0k"})
    assert access_for(fixed, "0.0.0.0").token == "t0k"
    assert access_for(fixed, "127.0.0.1").required  # a configured token applies everywhere


def test_token_cookie_api_keys_and_origin(tmp_path: Path) -> None:
    settings = load_settings(env={"IOTMETER_HOME": str(tmp_path), "IOTMETER_SERVE_TOKEN": "t0k"})
    metadata = open_metadata(settings.db_url)
    keys = ApiKeyService(metadata)
    _, operator = keys.create("wall-screen", "operator")
    _, viewer = keys.create("auditor", "viewer")
    check = access_for(settings, "0.0.0.0")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="dashboard")

    async def scenario() -> None:
        app = web.Application(middlewares=[auth_middleware(check)])
        app.router.add_get("/", page)
        app.router.add_get("/ws", page)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            assert (await client.get("/")).status == 401
            assert (await client.get("/?token=wrong")).status == 401
            # The container health check needs no token and learns nothing but "alive".
            health = await client.get("/healthz")
            assert health.status == 200 and await health.text() == "ok\n"
            response = await client.get("/?token=t0k", allow_redirects=False)
            assert response.status == 302 and response.headers["Location"] == "/"
            cookie = response.cookies[COOKIE]
            assert cookie.value == "t0k" and cookie["httponly"] and \
                cookie["samesite"] == "Strict"
            assert (await client.get("/")).status == 200  # the cookie from now on
            client.session.cookie_jar.clear()
            auth = {"Authorization": f"Bearer {operator}"}
            assert (await client.get("/", headers=auth)).status == 200
            viewer_auth = {"Authorization": f"Bearer {viewer}"}
            assert (await client.get("/", headers=viewer_auth)).status == 401
            evil = {**auth, "Origin": "http://evil.example"}
            assert (await client.get("/ws", headers=evil)).status == 403
            same = {**auth, "Origin": f"http://127.0.0.1:{client.port}"}
            assert (await client.get("/ws", headers=same)).status == 200
            keys.revoke("wall-screen")
            assert (await client.get("/", headers=auth)).status == 401

    try:
        asyncio.run(scenario())
    finally:
        metadata.close()
