"""Fixtures for command and OTA tests: the store stacks and silent devices that are always
closed. The helpers themselves live in testsupport.commands."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from testsupport.commands import SilentDevice
from testsupport.harness import production_stores


@pytest.fixture(params=["embedded", "production"])
def stack(request: pytest.FixtureRequest) -> dict[str, str]:
    """IOTMETER_* store variables: {} is the embedded defaults; production is PostgreSQL,
    InfluxDB and an S3 endpoint (moto), so firmware goes out as presigned URLs."""
    if request.param == "embedded":
        return {}
    return production_stores(request.getfixturevalue("pg_database").url,
                             request.getfixturevalue("influxdb"), request.getfixturevalue("s3"))


@pytest.fixture
def silent_device() -> Iterator[Callable[[str, str], SilentDevice]]:
    made: list[SilentDevice] = []

    def make(url: str, device_id: str) -> SilentDevice:
        made.append(SilentDevice(url, device_id))
        return made[-1]

    yield make
    for device in made:
        device.close()
