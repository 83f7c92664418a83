"""The three stores behind their ports, opened together from the settings.

factory.py picks each store's adapter by the URL's scheme; everything above this package
talks to the ports only."""

from __future__ import annotations

from dataclasses import dataclass

from iotmeter_tui.backend.config import Settings
from iotmeter_tui.backend.redaction import redact
from iotmeter_tui.backend.stores.archive import ArchiveStore
from iotmeter_tui.backend.stores.factory import open_archive, open_metadata, open_timeseries
from iotmeter_tui.backend.stores.metadata import MetadataStore
from iotmeter_tui.backend.stores.rollups import Retention, parse_retention
from iotmeter_tui.backend.stores.timeseries import TimeSeriesStore

__all__ = ["Stores", "open_stores", "redact"]


@dataclass
class Stores:
    metadata: MetadataStore
    timeseries: TimeSeriesStore
    archive: ArchiveStore
    urls: tuple[str, str, str]

    def describe(self) -> str:
        return ", ".join(redact(u) for u in self.urls)

    def close(self) -> None:
        for store in (self.metadata, self.timeseries, self.archive):
            store.close()


def retention(settings: Settings) -> Retention:
    """The time-series retention the settings ask for (validated when they were loaded)."""
    return Retention(
        raw_ms=parse_retention(settings.retention_raw),
        minute_ms=parse_retention(settings.retention_1m),
        hour_ms=parse_retention(settings.retention_1h),
    )


def open_stores(settings: Settings) -> Stores:
    """Open (and prepare: migrations, database, bucket) the three stores."""
    metadata = open_metadata(settings.db_url)
    try:
        timeseries = open_timeseries(settings.tsdb_url, settings.influx_token,
                                     retention=retention(settings), rollups=settings.rollups)
        archive = open_archive(
            settings.archive_url,
            s3_endpoint=settings.s3_endpoint,
            s3_access_key=settings.s3_access_key,
            s3_secret_key=settings.s3_secret_key,
            s3_region=settings.s3_region,
        )
    except BaseException:
        metadata.close()
        raise
    return Stores(metadata, timeseries, archive,
                  (settings.db_url, settings.tsdb_url, settings.archive_url))
