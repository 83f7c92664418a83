"""Fixtures for command and OTA tests: the store stacks and silent devices that are always
closed. The helpers themselves live in iotmeter_tui.testing.commands."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from iotmeter_tui.testing import InfluxServer, S3Server
from iotmeter_tui.testing.commands import SilentDevice


@pytest.fixture(params=["embedded", "production"])
def stack(request: pytest.FixtureRequest) -> dict[str, str]:
    """IOTMETER_* store variables: {} is the embedded defaults; production is PostgreSQL,
    InfluxDB and an S3 endpoint (moto), so firmware goes out as presigned URLs."""
    if request.param == "embedded":
        return {}
    influx: InfluxServer = request.getfixturevalue("influxdb")
    s3: S3Server = request.getfixturevalue("s3")
    unique = uuid.uuid4().hex[:10]
    return {
        "IOTMETER_DB_URL": request.getfixturevalue("pg_database").url,
        "IOTMETER_TSDB_URL": f"influxdb://{influx.host}:{influx.port}/iot_{unique}",
        "IOTMETER_ARCHIVE_URL": f"s3://iot-{unique}",
        "IOTMETER_S3_ENDPOINT": s3.endpoint,
        "IOTMETER_S3_ACCESS_KEY": s3.access_key,
        "IOTMETER_S3_SECRET_KEY": s3.secret_key,
        "IOTMETER_S3_REGION": s3.region,
    }


@pytest.fixture
def silent_device() -> Iterator[Callable[[str, str], SilentDevice]]:
    made: list[SilentDevice] = []

    def make(url: str, device_id: str) -> SilentDevice:
        made.append(SilentDevice(url, device_id))
        return made[-1]

    yield make
    for device in made:
        device.close()
