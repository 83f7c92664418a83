"""The API served for real: in-process on a werkzeug server thread (most tests), or as the
`iotmeter api` gunicorn process (process-level tests), on the embedded stores and on
PostgreSQL + InfluxDB + S3. Keys of every role, and a revoked one, come with each server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from iotmeter_tui.api.app import create_app
from iotmeter_tui.backend.apikeys import ApiKeyService
from iotmeter_tui.backend.config import Settings, load_settings
from iotmeter_tui.backend.stores import Stores, open_stores
from iotmeter_tui.testing.harness import production_stores

ROLES = ("viewer", "operator", "admin")


@dataclass
class LiveApi:
    url: str
    settings: Settings
    stores: Stores
    keys: dict[str, str] = field(default_factory=dict)  # role (or "revoked") -> secret
    session: requests.Session = field(default_factory=requests.Session)

    def call(self, method: str, path: str, *, key: str | None = "admin",
             **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key is not None:
            headers.setdefault("Authorization", f"Bearer {self.keys.get(key, key)}")
        return self.session.request(method, self.url + path, headers=headers, timeout=30,
                                    **kwargs)


def make_keys(stores: Stores) -> dict[str, str]:
    service = ApiKeyService(stores.metadata)
    keys = {role: service.create(f"test-{role}", role)[1] for role in ROLES}
    keys["revoked"] = service.create("test-revoked", "admin")[1]
    service.revoke("test-revoked")
    return keys


@dataclass
class ThreadServer:
    app: Any
    server: Any = None
    thread: threading.Thread | None = None

    def start(self) -> str:
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        if self.thread is not None:
            self.thread.join(10)


@pytest.fixture
def serve_api(tmp_path: Path) -> Iterator[Callable[..., LiveApi]]:
    """Start an API on a werkzeug thread with these IOTMETER_* variables (embedded stores
    under a fresh home unless the variables say otherwise)."""
    started: list[tuple[ThreadServer, Stores]] = []

    def start(env: dict[str, str] | None = None) -> LiveApi:
        home = tmp_path / f"home-{len(started)}"
        home.mkdir()
        settings = load_settings(env={"IOTMETER_HOME": str(home), **(env or {})})
        stores = open_stores(settings)
        stores.metadata.migrate()
        server = ThreadServer(create_app(settings, stores=stores))
        started.append((server, stores))
        return LiveApi(server.start(), settings, stores, make_keys(stores))

    yield start
    for server, stores in started:
        server.stop()
        stores.close()


@pytest.fixture
def api(serve_api: Callable[..., LiveApi]) -> LiveApi:
    """An API on the embedded stores."""
    return serve_api()


@pytest.fixture(params=["embedded", "production"])
def any_api(request: pytest.FixtureRequest, serve_api: Callable[..., LiveApi]) -> LiveApi:
    """An API on the embedded stores, then on PostgreSQL + InfluxDB + S3."""
    if request.param == "embedded":
        return serve_api()
    database = request.getfixturevalue("pg_database")
    return serve_api(production_stores(database.url, request.getfixturevalue("influxdb"),
                                       request.getfixturevalue("s3")))
