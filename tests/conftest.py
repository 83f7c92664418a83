"""Pytest fixtures over real services on loopback; the machinery is testsupport.

A missing binary or an unreachable server fails the test with one clear line, never a skip:
a suite that silently skips its integration tests proves nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from testsupport import (
    InfluxServer,
    MosquittoServer,
    PostgresDatabase,
    PrivatePostgres,
    S3Server,
    ServiceError,
)
from testsupport.harness import production_stores

# One collector worker in every process a test starts unless it asks for more: the tests read
# one collector's unlabelled metrics (tests/collector/test_workers.py runs several).
os.environ.setdefault("IOTMETER_COLLECTOR_WORKERS", "1")

@contextmanager
def _fail_clearly() -> Iterator[None]:
    try:
        yield
    except ServiceError as exc:
        # `from None`: the report shows the message once, not the error and its chained repeat.
        raise pytest.fail.Exception(str(exc), pytrace=False) from None


# --- shared for the session: tests use their own topics, databases and buckets -------------


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoServer]:
    with _fail_clearly(), MosquittoServer() as server:
        yield server


@pytest.fixture(scope="session")
def influxdb() -> Iterator[InfluxServer]:
    with _fail_clearly(), InfluxServer() as server:
        yield server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    with _fail_clearly(), S3Server() as server:
        yield server


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A database on the machine's shared PostgreSQL, one for the whole session."""
    with _fail_clearly(), PostgresDatabase() as database:
        yield database.url


# --- one per test, for tests that stop, kill or restart the server ---------------------------


@pytest.fixture
def private_mosquitto() -> Iterator[MosquittoServer]:
    with _fail_clearly(), MosquittoServer() as server:
        yield server


@pytest.fixture
def private_influxdb() -> Iterator[InfluxServer]:
    with _fail_clearly(), InfluxServer() as server:
        yield server


@pytest.fixture
def private_s3() -> Iterator[S3Server]:
    with _fail_clearly(), S3Server() as server:
        yield server


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    with _fail_clearly(), PrivatePostgres() as server:
        yield server


@pytest.fixture
def pg_database() -> Iterator[PostgresDatabase]:
    """An empty database on the shared PostgreSQL for this test alone (`.url`, `.name`)."""
    with _fail_clearly(), PostgresDatabase() as database:
        yield database


@pytest.fixture
def iotmeter_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty IOTMETER_HOME, so embedded defaults never touch the user's real one."""
    home = tmp_path / "iotmeter-home"
    home.mkdir()
    monkeypatch.setenv("IOTMETER_HOME", str(home))
    return home


@pytest.fixture(params=["embedded", "production"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """IOTMETER_* store variables for a collector test, once per store set: {} means the
    embedded defaults under IOTMETER_HOME; "production" is PostgreSQL, InfluxDB and S3, with a
    database, InfluxDB database and bucket of the test's own."""
    if request.param == "embedded":
        return {}
    database: PostgresDatabase = request.getfixturevalue("pg_database")
    return production_stores(database.url, request.getfixturevalue("influxdb"),
                             request.getfixturevalue("s3"))
