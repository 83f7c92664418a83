"""Test support shared by the test suite and the benches: real services on loopback."""

from iotmeter_tui.testing.services import (
    InfluxServer,
    MosquittoServer,
    PostgresDatabase,
    PrivatePostgres,
    S3Server,
    ServiceError,
)

__all__ = [
    "InfluxServer",
    "MosquittoServer",
    "PostgresDatabase",
    "PrivatePostgres",
    "S3Server",
    "ServiceError",
]
