"""Store sets for collector tests: the embedded defaults and the production stack, each test
with its own database, InfluxDB database, bucket and directory."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from iotmeter_tui.testing import InfluxServer, PostgresDatabase, S3Server


def production_stores(pg_url: str, influx: InfluxServer, s3: S3Server) -> dict[str, str]:
    unique = uuid.uuid4().hex[:10]
    return {
        "IOTMETER_DB_URL": pg_url,
        "IOTMETER_TSDB_URL": f"influxdb://{influx.host}:{influx.port}/iot_{unique}",
        "IOTMETER_ARCHIVE_URL": f"s3://iot-{unique}",
        "IOTMETER_S3_ENDPOINT": s3.endpoint,
        "IOTMETER_S3_ACCESS_KEY": s3.access_key,
        "IOTMETER_S3_SECRET_KEY": s3.secret_key,
        "IOTMETER_S3_REGION": s3.region,
    }


@pytest.fixture(params=["embedded", "production"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """IOTMETER_* store variables; {} means the embedded defaults under IOTMETER_HOME."""
    if request.param == "embedded":
        return {}
    database: PostgresDatabase = request.getfixturevalue("pg_database")
    return production_stores(database.url, request.getfixturevalue("influxdb"),
                             request.getfixturevalue("s3"))
