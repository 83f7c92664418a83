"""`/metrics`, `/healthz` and `/readyz` on one port, for every long-running process (collector,
alert relay). `/healthz` says the process answers; `/readyz` is 503 while something it needs is
down, naming it, so a load balancer or Kubernetes stops sending it work meanwhile."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# What is down, by name (e.g. ["broker", "timeseries"]); empty when ready.
Readiness = Callable[[], list[str]]
# A POST route: (request headers, body) -> (status, JSON reply, extra response headers).
PostRoute = Callable[[Mapping[str, str], bytes], tuple[int, dict[str, Any], dict[str, str]]]
MAX_BODY = 4 << 20  # Alertmanager's webhook for a large group stays far below this


class HealthServer:
    def __init__(self, registry: CollectorRegistry, readiness: Readiness, *,
                 host: str = "127.0.0.1", port: int = 0,
                 post_routes: Mapping[str, PostRoute] | None = None) -> None:
        self.registry = registry
        self.readiness = readiness
        self.post_routes = dict(post_routes or {})
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="iotmeter-health-http")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._json(200, {"status": "ok"})
                elif path == "/readyz":
                    try:
                        down = outer.readiness()
                    except Exception as exc:  # a readiness bug must answer, not hang
                        down = [f"readiness check failed: {type(exc).__name__}"]
                    if down:
                        self._json(503, {"status": "unavailable", "down": down})
                    else:
                        self._json(200, {"status": "ready"})
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self) -> None:
                route = outer.post_routes.get(self.path.split("?", 1)[0])
                if route is None:
                    self._json(404, {"error": "not found"})
                    return
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    self._json(411, {"error": "Content-Length required"})
                    return
                if not 0 <= length <= MAX_BODY:
                    self._json(413, {"error": f"body over {MAX_BODY} bytes"})
                    return
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, reply, extra = route(headers, body)
                self._json(status, reply, extra)

            def _json(self, status: int, body: dict[str, Any],
                      extra: Mapping[str, str] | None = None) -> None:
                self._reply(status, json.dumps(body).encode() + b"\n", "application/json",
                            extra)

            def _reply(self, status: int, body: bytes, content_type: str,
                       extra: Mapping[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                """Scrapes and probes every few seconds are not worth a log line."""

        return Handler
