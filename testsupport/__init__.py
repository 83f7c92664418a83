"""Test support shared by the test suite and the benches: real services on loopback."""

from testsupport.services import (
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
