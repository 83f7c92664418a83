"""Running a real collector against real stores, and counting what it stored — for tests and
benches. "Exactly once" is checked by counting every (boot, seq) in each store."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from iotmeter_tui.backend.collector.service import Collector, Tuning
from iotmeter_tui.backend.config import Settings, load_settings
from iotmeter_tui.backend.stores import Stores, open_stores
from iotmeter_tui.backend.stores.archive_writer import ArchiveReader


def settings_for(home: Path, stores: Mapping[str, str], **overrides: Any) -> Settings:
    """Settings as the environment would give them: `stores` maps IOTMETER_* variables."""
    # A free port for the collector's firmware endpoint unless a test picks one: collectors
    # of parallel test runs must not fight over the default 9109.
    # One collector worker unless asked: a child process reads one collector's metrics.
    # Rollups only where a test asks (rollups="true"): the others need no rollup sink, whose
    # batch a minute and drain at each stop would only lengthen the suite.
    env = {"IOTMETER_HOME": str(home), "IOTMETER_FIRMWARE_LISTEN": "127.0.0.1:0",
           "IOTMETER_COLLECTOR_WORKERS": "1", "IOTMETER_ROLLUPS": "false", **stores}
    for key, value in overrides.items():
        env[f"IOTMETER_{key.upper()}"] = str(value)
    return load_settings(env=env)


def production_stores(pg_url: str, influx: Any, s3: Any) -> dict[str, str]:
    """IOTMETER_* variables for the production stack on test servers, with a database and
    a bucket of their own (PostgreSQL database: the caller's)."""
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


def env_for(settings: Settings, mqtt_url: str) -> dict[str, str]:
    """The environment that gives a child process the same settings."""
    env = {"IOTMETER_MQTT_URL": mqtt_url}
    for key in ("home", "db_url", "tsdb_url", "archive_url", "influx_token", "s3_endpoint",
                "s3_access_key", "s3_secret_key", "s3_region", "reorder_timeout_s",
                "archive_window_s", "client_id", "spool_max_bytes", "auto_register",
                "redeliver_after_s", "firmware_listen", "firmware_base_url",
                "firmware_public_key", "collector_workers", "rollups"):
        value = getattr(settings, key)
        if value is not None:
            env[f"IOTMETER_{key.upper()}"] = str(value).lower() if isinstance(
                value, bool) else str(value)
    return env


@contextmanager
def running_collector(settings: Settings, mqtt_url: str,
                      tuning: Tuning | None = None) -> Iterator[Collector]:
    collector = Collector(settings, mqtt_url, tuning=tuning or Tuning(segment_max_age_s=1.0,
                                                                      sink_max_backoff_s=1.0))
    collector.start()
    try:
        if not collector.wait_ready():
            raise TimeoutError("collector did not connect and subscribe within 30 s")
        yield collector
    finally:
        collector.stop()


class StoreAudit:
    """Reads the stores back the way an auditor would."""

    def __init__(self, settings: Settings) -> None:
        self.stores: Stores = open_stores(settings)

    def timeseries_keys(self, device_id: str) -> Counter[tuple[int, int]]:
        return Counter((p.boot, p.seq) for p in self.stores.timeseries.points(device_id))

    def archive_keys(self, device_id: str, category: str = "telemetry") -> Counter[
            tuple[int, int]]:
        reader = ArchiveReader(self.stores.archive)
        keys: Counter[tuple[int, int]] = Counter()
        for line in reader.messages(device_id, category):
            obj = json.loads(line)
            keys[(obj["boot"], obj["seq"])] += 1
        return keys

    def rejected(self) -> list[dict[str, Any]]:
        return list(ArchiveReader(self.stores.archive).rejected())

    def close(self) -> None:
        self.stores.close()
