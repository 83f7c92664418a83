"""Store sets for collector tests: the embedded defaults and the production stack, each test
with its own database, InfluxDB database, bucket and directory."""

from __future__ import annotations

import pytest

from iotmeter_tui.testing import PostgresDatabase
from iotmeter_tui.testing.harness import production_stores


@pytest.fixture(params=["embedded", "production"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """IOTMETER_* store variables; {} means the embedded defaults under IOTMETER_HOME."""
    if request.param == "embedded":
        return {}
    database: PostgresDatabase = request.getfixturevalue("pg_database")
    return production_stores(database.url, request.getfixturevalue("influxdb"),
                             request.getfixturevalue("s3"))
