"""Rollups as the collector keeps them on InfluxDB (IOTMETER_ROLLUPS=true): one collector
folds each batch into the rows it wrote last, across a restart; a collector in a share group
(replicas, --workers N) recomputes instead, since others write the same rows."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotmeter_tui.backend.collector.rollup_sink import RollupSink
from iotmeter_tui.backend.config import Settings
from iotmeter_tui.backend.stores import open_stores
from iotmeter_tui.backend.stores.rollups import HOUR_MS, MINUTE_MS
from testsupport import InfluxServer, MosquittoServer
from testsupport.fleet import Publisher, telemetry, wait_for
from testsupport.harness import running_collector, settings_for

FIRST_TS = 1_795_740_000_000 + 10_000_000  # telemetry()'s ts of boot 1, seq 0


@pytest.fixture
def database(influxdb: InfluxServer) -> Iterator[str]:
    name = f"cr_{uuid.uuid4().hex[:12]}"
    yield f"influxdb://{influxdb.host}:{influxdb.port}/{name}"
    body = urllib.parse.urlencode({"q": f'DROP DATABASE "{name}"'}).encode()
    with urllib.request.urlopen(f"{influxdb.http_url}/query", body, timeout=10):
        pass


def rollup_sink(collector: object) -> RollupSink:
    [sink] = [r.sink for r in collector.runners  # type: ignore[attr-defined]
              if isinstance(r.sink, RollupSink)]
    return sink


def send(settings: Settings, url: str, seqs: range) -> None:
    with running_collector(settings, url) as collector:
        assert rollup_sink(collector).sole_writer is (settings.share_group is None)
        pub = Publisher(url)
        pub.publish([telemetry("dc-0001", 1, s, ts=FIRST_TS + s * 7_000,
                               data={"voltage_v": 700.0 + s % 13}) for s in seqs])
        pub.close()
        wait_for(lambda: collector.health().acked == len(seqs),
                 what=f"{len(seqs)} messages acknowledged")
    # The stop drained every sink, rollups included.


def check_rollups_match_raw(settings: Settings, count: int) -> None:
    stores = open_stores(settings)
    try:
        hour = FIRST_TS - FIRST_TS % HOUR_MS
        values = [700.0 + s % 13 for s in range(count)]
        [bucket] = stores.timeseries.history("dc-0001", ["voltage_v"], hour, hour + HOUR_MS, 1)
        assert bucket.values["voltage_v"]["mean"] == pytest.approx(sum(values) / count)
        assert bucket.values["voltage_v"]["last"] == values[-1]
        minutes = stores.timeseries.history("dc-0001", ["voltage_v"], hour, hour + HOUR_MS, 60)
        for minute in minutes:  # each against the raw points it holds
            raw = [p.fields["voltage_v"] for p in stores.timeseries.points(
                "dc-0001", minute.ts, minute.ts + MINUTE_MS)]
            got = minute.values["voltage_v"]
            assert (got["min"], got["max"], got["last"]) == (min(raw), max(raw), raw[-1])
            assert got["mean"] == pytest.approx(sum(raw) / len(raw))
        assert sum(len(stores.timeseries.points("dc-0001", m.ts, m.ts + MINUTE_MS))
                   for m in minutes) == count
    finally:
        stores.close()


@pytest.mark.parametrize("share_group", [None, "iotmeter"])
def test_the_collector_keeps_influx_rollups_exact_across_a_restart(
        tmp_path: Path, private_mosquitto: MosquittoServer, database: str,
        share_group: str | None) -> None:
    stores = {"IOTMETER_TSDB_URL": database}
    if share_group:
        stores["IOTMETER_SHARE_GROUP"] = share_group
    settings = settings_for(tmp_path, stores, rollups="true")
    send(settings, private_mosquitto.url, range(0, 30))
    # A new process: its rows in memory are gone, the stored ones are read and folded into.
    send(settings, private_mosquitto.url, range(30, 60))
    check_rollups_match_raw(settings, 60)
    rows = json.loads(urllib.request.urlopen(
        f"{database.replace('influxdb://', 'http://').rsplit('/', 1)[0]}/query?"
        + urllib.parse.urlencode({"db": database.rsplit("/", 1)[1], "q":
                                  'SELECT count("voltage_v_count") FROM '
                                  '"rollup_1m"."iot_telemetry_1m"'}), timeout=10).read())
    # One row per minute the readings fall in, one series: nothing written twice over.
    minutes = {(FIRST_TS + s * 7_000) // MINUTE_MS for s in range(60)}
    assert rows["results"][0]["series"][0]["values"][0][1] == len(minutes)
