"""`iotmeter serve`: the dashboard in a web browser, through textual-serve.

textual-serve runs one dashboard process per browser connection. Those processes must not
each start a broker, a collector and a demo fleet on the same home, so `serve` starts the
runtime once, here (as the terminal dashboard would), and every browser session runs
`iotmeter --view-only` against it: the same stores, commands published to this broker.

textual-serve has no authentication. Bound to a loopback address it needs none (as the
terminal dashboard, it is for this machine's users); bound elsewhere it requires a token:
`IOTMETER_SERVE_TOKEN`, or one made up at start and printed once in the URL to open, or an
operator/admin API key (`iotmeter apikey create`). Every request is checked, the page, its
static files and the websocket that drives the dashboard alike: the token comes as
`?token=` on the first page (then an HttpOnly, SameSite=Strict cookie) or as
`Authorization: Bearer`. A websocket whose Origin is not this server is refused, so another
site a browser visits cannot drive the dashboard with the operator's cookie.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import secrets
import shlex
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from textual_serve.server import Server

from iotmeter_tui.backend.config import Settings
from iotmeter_tui.view.format import one_line

COOKIE = "iotmeter_serve"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class TokenCheck:
    """Whether a request may reach the dashboard: the serve token, or an API key of an
    operator or admin (the dashboard sends commands and starts campaigns)."""

    def __init__(self, token: str | None, verify_key: Callable[[str], bool] | None = None):
        self.token = token
        self.verify_key = verify_key

    @property
    def required(self) -> bool:
        return self.token is not None or self.verify_key is not None

    async def allows(self, secret: str | None) -> bool:
        if not secret:
            return False
        if self.token is not None and hmac.compare_digest(secret.encode(), self.token.encode()):
            return True
        if self.verify_key is None:
            return False
        return await asyncio.to_thread(self.verify_key, secret)  # a store read

def _presented(request: web.Request) -> tuple[str | None, bool]:
    """(the secret the request carries, whether it came in the URL)."""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    if "token" in request.query:
        return request.query["token"], True
    return request.cookies.get(COOKIE), False


def auth_middleware(check: TokenCheck) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            # Liveness for container health checks: says nothing about the fleet, needs no token.
            return web.Response(text="ok\n")
        if request.path == "/ws":
            origin = request.headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc != request.host:
                raise web.HTTPForbidden(text="websocket from another origin\n")
        if not check.required:
            return await handler(request)
        secret, in_url = _presented(request)
        if not await check.allows(secret):
            raise web.HTTPUnauthorized(
                text="iotmeter serve: open the URL with ?token=... (printed at start, or "
                     "IOTMETER_SERVE_TOKEN), or send an operator API key as "
                     "'Authorization: Bearer ...'\n")
        if in_url:
            # The secret leaves the address bar (and the history) at once: the cookie
            # carries it from now on, the websocket included.
            response = web.HTTPFound(request.path)
            response.set_cookie(COOKIE, secret or "", httponly=True, samesite="Strict",
                                secure=request.secure, path="/")
            raise response
        return await handler(request)

    return middleware


class DashboardServer(Server):
    """textual-serve's Server with the token check in front, and the page's websocket URL
    taken from the address the browser used (the bound address may be 0.0.0.0)."""

    def __init__(self, command: str, host: str, port: int, check: TokenCheck) -> None:
        super().__init__(command, host=host, port=port, title="iotmeter")
        self.check = check

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(auth_middleware(self.check))
        return app

    async def handle_index(self, request: web.Request) -> Any:
        self.public_url = f"{request.scheme}://{request.host}"
        return await super().handle_index(request)

    def initialize_logging(self) -> None:
        pass  # the dashboard's own stderr lines are enough; no rich log of every request

    async def on_startup(self, app: web.Application) -> None:
        pass  # run_serve prints where to go, once


def session_command(config: str | None) -> str:
    """What each browser session runs: this Python's iotmeter, attached to our runtime."""
    parts = [sys.executable, "-m", "iotmeter_tui", "--view-only"]
    if config:
        parts += ["--config", config]
    return shlex.join(parts)


def run_serve(settings: Settings, host: str, port: int, config: str | None,
              simulate: str) -> int:
    from iotmeter_tui.backend.runtime import Runtime

    check = access_for(settings, host)
    token = check.token
    runtime = Runtime(settings, simulate=simulate)
    try:
        runtime.start()
    except Exception as exc:
        runtime.stop()
        print(f"iotmeter serve: {one_line(str(exc))}", file=sys.stderr)
        return 1
    # The sessions reach this runtime's broker and start nothing of their own.
    os.environ["IOTMETER_MQTT_URL"] = runtime.mqtt_url
    os.environ["IOTMETER_SIMULATE"] = "no"
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token and not settings.serve_token
                                       else "")
    print(f"iotmeter serve: the dashboard on {url}" +
          ("" if token is None else "  (a token or an operator API key is required)"),
          flush=True)
    server = DashboardServer(session_command(config), host, port, check)
    try:
        server.serve()
    finally:
        print("iotmeter serve: stopping simulator, collector and broker …", file=sys.stderr)
        runtime.stop()
    return 0


def access_for(settings: Settings, host: str) -> TokenCheck:
    """Loopback: the configured token if any, else open. Elsewhere: a token always (the
    configured one, or a new one) and operator API keys."""
    if is_loopback(host):
        return TokenCheck(settings.serve_token)
    return TokenCheck(settings.serve_token or secrets.token_urlsafe(24),
                      _api_key_check(settings))


def _api_key_check(settings: Settings) -> Callable[[str], bool]:
    from iotmeter_tui.backend.apikeys import ApiKeyService, role_allows
    from iotmeter_tui.backend.errors import StoreError
    from iotmeter_tui.backend.stores.factory import open_metadata

    metadata = open_metadata(settings.db_url)
    keys = ApiKeyService(metadata)

    def verify(secret: str) -> bool:
        try:
            key = keys.verify(secret)
        except StoreError:
            return False
        return key is not None and role_allows(key.role, "operator")

    return verify
