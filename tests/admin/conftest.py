"""Fixtures for the administration services: a real metadata store, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from iotmeter_tui.backend.stores.factory import open_metadata
from iotmeter_tui.backend.stores.metadata import MetadataStore


@pytest.fixture(params=["sqlite", "postgresql"])
def metadata(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    if request.param == "postgresql":
        url = str(request.getfixturevalue("pg_database").url)
    else:
        url = f"sqlite:///{tmp_path}/metadata.db"
    store = open_metadata(url)
    yield store
    store.close()
