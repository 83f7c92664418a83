"""Schemathesis against the running API's own OpenAPI document, on the embedded stores and on
PostgreSQL + InfluxDB + S3: no 5xx, every response as documented (status, content type,
schema, headers), and the stateful links of a created device followed (read, change, config,
delete). Example counts are kept modest so both runs take a minute or two here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.generation.stateful.state_machine import APIStateMachine

from testsupport import PostgresDatabase
from testsupport.api import LiveApi, ThreadServer, make_keys
from testsupport.harness import production_stores

EXAMPLES = 25
STATEFUL_EXAMPLES = 40
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


def _start(tmp: Path, env: dict[str, str]) -> tuple[ThreadServer, LiveApi]:
    from iotmeter_tui.api.app import create_app
    from iotmeter_tui.backend.config import load_settings
    from iotmeter_tui.backend.stores import open_stores

    loaded = load_settings(env={"IOTMETER_HOME": str(tmp), "IOTMETER_API_RATE_LIMIT": "0",
                                **env})
    stores = open_stores(loaded)
    stores.metadata.migrate()
    server = ThreadServer(create_app(loaded, stores=stores))
    live = LiveApi(server.start(), loaded, stores, make_keys(stores))
    return server, live


@pytest.fixture(scope="module")
def embedded_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    server, live = _start(tmp_path_factory.mktemp("st-embedded"), {})
    yield live
    server.stop()
    live.stores.close()


@pytest.fixture(scope="module")
def production_api(tmp_path_factory: pytest.TempPathFactory, influxdb: Any,
                   s3: Any) -> Iterator[LiveApi]:
    with PostgresDatabase() as database:
        server, live = _start(tmp_path_factory.mktemp("st-production"),
                              production_stores(database.url, influxdb, s3))
        yield live
        server.stop()
        live.stores.close()


def _schema(live: LiveApi) -> Any:
    return schemathesis.openapi.from_url(f"{live.url}/api/v1/openapi.json")


@pytest.fixture
def embedded_schema(embedded_api: LiveApi) -> Any:
    return _schema(embedded_api)


@pytest.fixture
def production_schema(production_api: LiveApi) -> Any:
    return _schema(production_api)


embedded = schemathesis.pytest.from_fixture("embedded_schema")
production = schemathesis.pytest.from_fixture("production_schema")


# Every check but the two that judge acceptance, which cannot know this API's rules:
# positive_data_acceptance expects every schema-valid request to succeed, but a well-formed
# string is not always a cursor this server made, a time, or a start before its end (422
# naming the field); negative_data_rejection counts `?device=5` as an integer where a query
# string only has text. Invalid data still runs (no 5xx, documented status, content type and
# schema); test_errors checks the refusals themselves.
EXCLUDED = [checks.positive_data_acceptance, checks.negative_data_rejection]


def _admin(live: LiveApi) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.keys['admin']}"}


@embedded.parametrize()
@SETTINGS
def test_embedded_stores(case: Any, embedded_api: LiveApi) -> None:
    case.call_and_validate(base_url=embedded_api.url, headers=_admin(embedded_api),
                           excluded_checks=EXCLUDED)


@production.parametrize()
@SETTINGS
def test_production_stores(case: Any, production_api: LiveApi) -> None:
    case.call_and_validate(base_url=production_api.url, headers=_admin(production_api),
                           excluded_checks=EXCLUDED)


@pytest.mark.parametrize("stores", ["embedded", "production"])
def test_stateful_device_lifecycle(stores: str, request: pytest.FixtureRequest) -> None:
    live: LiveApi = request.getfixturevalue(f"{stores}_api")
    schema = _schema(live)
    created = schema["/api/v1/devices"]["POST"].definition.raw["responses"]["201"]
    assert {link["operationId"] for link in created["links"].values()} >= {
        schema["/api/v1/devices/{device_id}"][verb].definition.raw["operationId"]
        for verb in ("GET", "PATCH", "DELETE")}
    machine: type[APIStateMachine] = schema.as_state_machine()
    headers = _admin(live)

    class DeviceLifecycle(machine):  # type: ignore[misc,valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": headers, "base_url": live.url}

        def teardown(self) -> None:
            # Each example starts from an empty registry: Hypothesis replays examples and
            # needs the same calls to answer the same way.
            for device in live.stores.metadata.list_devices():
                live.stores.metadata.delete_device(device.device_id)

        def validate_response(self, response: Any, case: Any,
                              additional_checks: Any = None, **kwargs: Any) -> None:
            case.validate_response(response, excluded_checks=EXCLUDED,
                                   transport_kwargs=kwargs or None)

    DeviceLifecycle.run(settings=settings(max_examples=STATEFUL_EXAMPLES, deadline=None,
                                          derandomize=True, stateful_step_count=8,
                                          suppress_health_check=list(HealthCheck)))
    # The links were followed: a created device was read and deleted by its id, and changes
    # reached it (200, or 422 for generated text the service refuses: control characters).
    metrics = live.call("GET", "/metrics", key=None).text
    rule = 'iotmeter_api_requests_total{method="%s",route="/api/v1/devices/<device_id>%s",'
    assert rule % ("GET", "") + 'status="200"}' in metrics
    assert rule % ("DELETE", "") + 'status="204"}' in metrics
    assert any(rule % (method, path) + f'status="{status}"}}' in metrics
               for method, path in (("PATCH", ""), ("PUT", "/config"))
               for status in (200, 422))
