"""The API served for real: in-process on a werkzeug server thread (most tests), or as the
`iotmeter api` gunicorn process (test_server), on the embedded stores and on PostgreSQL +
InfluxDB + S3. Keys of every role, and a revoked one, come with each server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from iotmeter_tui.api.app import create_app
from iotmeter_tui.backend.config import load_settings
from iotmeter_tui.backend.stores import Stores, open_stores
from testsupport.api import LiveApi, ThreadServer, make_keys
from testsupport.harness import production_stores


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
