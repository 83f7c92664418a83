"""Which adapter serves a store URL: the one place that knows the implementations.

The ports (metadata.py, timeseries.py, archive.py) know none of their adapters, and each
adapter is imported only when its scheme is asked for, so a file:// archive never loads the S3
client and an SQLite metadata store never loads psycopg."""

from __future__ import annotations

from urllib.parse import urlsplit

from iotmeter_tui.backend.config import local_path
from iotmeter_tui.backend.errors import StoreRejected
from iotmeter_tui.backend.stores.archive import ArchiveStore
from iotmeter_tui.backend.stores.metadata import MetadataStore
from iotmeter_tui.backend.stores.rollups import Retention
from iotmeter_tui.backend.stores.timeseries import TimeSeriesStore


def open_archive(
    url: str,
    *,
    s3_endpoint: str | None = None,
    s3_access_key: str | None = None,
    s3_secret_key: str | None = None,
    s3_region: str = "us-east-1",
) -> ArchiveStore:
    """The adapter for an archive URL: `s3://bucket` (with the S3 settings) or `file:///dir`.

    Raises StoreRejected on a URL no adapter serves. Nothing is contacted here: the bucket or
    directory is prepared on first use."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive

        if parts.netloc not in ("", "localhost"):
            raise StoreRejected("archive", f"{url!r} is not file:///absolute/path")
        try:
            root = local_path(url)
        except ValueError as exc:
            raise StoreRejected("archive", str(exc)) from None
        return DirectoryArchive(root)
    if parts.scheme == "s3":
        if not parts.netloc or parts.path not in ("", "/"):
            raise StoreRejected("archive", f"{url!r} is not s3://bucket (no path after the bucket)")
        if not s3_endpoint:
            raise StoreRejected("s3", "no S3 endpoint configured (IOTMETER_S3_ENDPOINT)")
        from iotmeter_tui.backend.stores.archive_s3 import S3Archive

        return S3Archive(parts.netloc, s3_endpoint, s3_access_key, s3_secret_key, s3_region)
    raise StoreRejected(
        "archive", f"unsupported archive URL scheme in {url!r}; use s3:// or file://"
    )


def open_metadata(url: str, *, timeout_s: float | None = None) -> MetadataStore:
    """The metadata store the URL names: postgresql://... / postgres://... or sqlite:///path.

    Nothing is connected yet; the first call connects and migrates. `timeout_s` bounds how
    long a call waits for the database before raising StoreUnavailable (default: 5 s for
    PostgreSQL, 10 s of SQLite busy-waiting for another process's write lock)."""
    scheme = urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        from iotmeter_tui.backend.stores.metadata_postgres import open_postgres_metadata

        return open_postgres_metadata(url, timeout_s=timeout_s)
    if scheme == "sqlite":
        from iotmeter_tui.backend.stores.metadata_sqlite import open_sqlite_metadata

        return open_sqlite_metadata(url, timeout_s=timeout_s)
    raise ValueError(f"unsupported metadata store URL scheme {scheme or 'none'!r}")


def open_timeseries(
    url: str, token: str | None = None, *, retention: Retention | None = None,
    rollups: bool = False,
) -> TimeSeriesStore:
    """The adapter for a time-series URL: influxdb://host:port/db (influxdbs:// for TLS; the
    token as in InfluxTimeSeries) or sqlite:///path (config.local_path). Nothing is contacted
    here: the database is prepared on first use. `retention`: how long each resolution is
    kept (rollups.Retention; unset keeps everything). `rollups`: keep 1-minute and 1-hour
    rollups (roll_up) and read long windows from them (IOTMETER_ROLLUPS). Raises StoreRejected
    on a URL no adapter serves."""
    scheme = urlsplit(url).scheme
    if scheme in ("influxdb", "influxdbs"):
        from iotmeter_tui.backend.stores.timeseries_influx import InfluxTimeSeries

        return InfluxTimeSeries(url, token, retention=retention, rollups=rollups)
    if scheme == "sqlite":
        try:
            path = local_path(url)
        except ValueError as exc:
            raise StoreRejected("timeseries", str(exc)) from None
        from iotmeter_tui.backend.stores.timeseries_sqlite import SqliteTimeSeries

        return SqliteTimeSeries(path, retention=retention, rollups=rollups)
    raise StoreRejected(
        "timeseries", f"unsupported time-series URL scheme in {url!r}; use influxdb:// or sqlite://"
    )
