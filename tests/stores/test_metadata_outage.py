"""Metadata stores when the database is away: a clear, fast, retryable error, and the same store
object working again once the database is back. PostgreSQL runs on a private cluster so these
tests can stop it; SQLite's "away" is another process holding the write lock."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import pytest

from iotmeter_tui.backend.errors import StoreRejected, StoreUnavailable
from iotmeter_tui.backend.stores.factory import open_metadata
from iotmeter_tui.backend.stores.metadata import DeviceUpdate, MetadataStore
from testsupport import PrivatePostgres

TIMEOUT_S = 2.0
PASSWORD = "hunter2-not-for-logs"
T = TypeVar("T")


def with_password(url: str) -> str:
    """The private cluster trusts everyone; a password in the URL is only there to prove it
    never reaches an error message."""
    parts = urlsplit(url)
    netloc = f"{parts.username}:{PASSWORD}@{parts.hostname}:{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def timed(action: Callable[[], T]) -> tuple[T, float]:
    start = time.monotonic()
    return action(), time.monotonic() - start


def assert_unavailable_quickly(action: Callable[[], object]) -> StoreUnavailable:
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        action()
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT_S + 3, f"took {elapsed:.1f} s to give up"
    error = caught.value
    assert error.retryable
    assert error.store == "postgresql" or error.store == "sqlite"
    assert PASSWORD not in str(error)
    return error


@pytest.fixture
def pg_store(private_postgres: PrivatePostgres) -> Iterator[MetadataStore]:
    store = open_metadata(with_password(private_postgres.url), timeout_s=TIMEOUT_S)
    yield store
    store.close()


@pytest.mark.parametrize("outage", ["stop", "kill"])
def test_postgres_outage_is_retryable_and_the_store_recovers(
    private_postgres: PrivatePostgres, pg_store: MetadataStore, outage: str
) -> None:
    pg_store.apply_collector_batch([DeviceUpdate("dev-1", 1000)], [], ("spool", "1"))
    getattr(private_postgres, outage)()

    error = assert_unavailable_quickly(lambda: pg_store.get_device("dev-1"))
    assert str(error).startswith("postgresql: ")
    assert_unavailable_quickly(
        lambda: pg_store.apply_collector_batch([DeviceUpdate("dev-1", 2000)], [], ("spool", "2"))
    )

    private_postgres.start()
    device, elapsed = timed(lambda: pg_store.get_device("dev-1"))
    assert device is not None and device.last_seen == 1000  # the failed batch left no trace
    assert elapsed < TIMEOUT_S + 3
    pg_store.apply_collector_batch([DeviceUpdate("dev-1", 3000)], [], ("spool", "3"))
    assert pg_store.get_cursor("spool") == "3"


def test_a_store_opened_while_postgres_is_down_migrates_when_it_is_back(
    private_postgres: PrivatePostgres,
) -> None:
    private_postgres.stop()
    store = open_metadata(private_postgres.url, timeout_s=TIMEOUT_S)  # opening never connects
    try:
        assert_unavailable_quickly(store.check)
        private_postgres.start()
        store.check()
        assert store.schema_version() >= 1
        assert store.device_counts_by_status() == {"online": 0, "offline": 0, "unknown": 0}
    finally:
        store.close()


def test_postgres_refusals_are_not_retryable(pg_store: MetadataStore) -> None:
    pg_store.set_config("dev-1", "a", 1)
    with pytest.raises(StoreRejected) as caught:
        pg_store.apply_collector_batch([DeviceUpdate("dev-1", 1, connection_status="asleep")], [])
    assert not caught.value.retryable
    assert str(caught.value).startswith("postgresql: ")


# --- SQLite ---------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/nested/dir/metadata.db"  # parent directories are created


def test_sqlite_write_lock_held_elsewhere_is_retryable(sqlite_url: str) -> None:
    store = open_metadata(sqlite_url, timeout_s=0.3)
    try:
        store.apply_collector_batch([DeviceUpdate("dev-1", 1000)], [])
        other = sqlite3.connect(urlsplit(sqlite_url).path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's writer, mid-transaction
        try:
            error = assert_unavailable_quickly(
                lambda: store.apply_collector_batch([DeviceUpdate("dev-1", 2000)], [])
            )
            assert str(error).startswith("sqlite: ")
            # WAL: the dashboard still reads while the collector writes.
            device = store.get_device("dev-1")
            assert device is not None and device.last_seen == 1000
        finally:
            other.execute("ROLLBACK")
            other.close()
        store.apply_collector_batch([DeviceUpdate("dev-1", 2000)], [])
        device = store.get_device("dev-1")
        assert device is not None and device.last_seen == 2000
    finally:
        store.close()


def test_sqlite_uses_wal(sqlite_url: str) -> None:
    store = open_metadata(sqlite_url)
    try:
        store.check()
        with sqlite3.connect(urlsplit(sqlite_url).path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        store.close()


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "not.db"
    path.write_bytes(b"this is not an SQLite file at all, not even close" * 100)
    store = open_metadata(f"sqlite:///{path}")
    try:
        with pytest.raises(StoreRejected) as caught:
            store.check()
        assert not caught.value.retryable
        assert str(path) in str(caught.value)
    finally:
        store.close()
