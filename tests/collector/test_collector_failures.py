"""What the collector does when things break, each test asserting exact counts: every message
the broker acknowledged to the publisher is stored exactly once in the time-series store and
the archive. SIGKILL mid-stream; InfluxDB, the S3 endpoint and PostgreSQL each stopped for
30 s; the broker restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from iotmeter_tui.backend.broker import free_port
from iotmeter_tui.backend.config import Settings
from iotmeter_tui.testing import InfluxServer, MosquittoServer, PrivatePostgres, S3Server
from iotmeter_tui.testing.fleet import SteadyLoad, wait_for
from iotmeter_tui.testing.harness import StoreAudit, env_for, running_collector, settings_for

OUTAGE_S = 30.0
DEVICES = [f"dc-{i:04d}" for i in range(10)]


def assert_exactly_once(settings: Settings, sent: list[tuple[str, int, int]],
                        timeout_s: float = 90.0) -> None:
    assert len(sent) > 100, "the load did not run"
    expected: dict[str, Counter[tuple[int, int]]] = {}
    for device_id, boot, seq in sent:
        expected.setdefault(device_id, Counter())[(boot, seq)] += 1
    audit = StoreAudit(settings)
    try:
        for device_id, keys in expected.items():
            wait_for(lambda d=device_id, k=keys: audit.timeseries_keys(d) == k,
                     timeout_s=timeout_s, what=f"time series of {device_id} exactly once")
            wait_for(lambda d=device_id, k=keys: audit.archive_keys(d) == k,
                     timeout_s=timeout_s, what=f"archive of {device_id} exactly once")
    finally:
        audit.close()


def _outage(settings: Settings, broker: MosquittoServer, server_stop: object,
            server_start: object) -> list[tuple[str, int, int]]:
    with running_collector(settings, broker.url) as collector:
        load = SteadyLoad(broker.url, DEVICES, rate=200)
        load.start()
        time.sleep(2)
        server_stop()  # type: ignore[operator]
        time.sleep(OUTAGE_S)
        server_start()  # type: ignore[operator]
        time.sleep(2)
        sent = load.stop()
        # The sink that failed says so, and recovers on its own.
        wait_for(lambda: all(r.healthy for r in collector.runners), timeout_s=60,
                 what="every sink healthy again")
        assert_exactly_once(settings, sent)
        # Stored means spooled first, and spooled means acknowledged.
        assert collector.metrics.sample("iotmeter_messages_acked_total") >= len(sent)
    return sent


def test_influxdb_down_for_30s_loses_nothing(
    tmp_path: Path, private_mosquitto: MosquittoServer, private_influxdb: InfluxServer
) -> None:
    settings = settings_for(tmp_path, {
        "IOTMETER_TSDB_URL": f"influxdb://{private_influxdb.host}:{private_influxdb.port}/iot"})
    _outage(settings, private_mosquitto, private_influxdb.stop, private_influxdb.start)


def test_s3_down_for_30s_loses_nothing(
    tmp_path: Path, private_mosquitto: MosquittoServer, private_s3: S3Server
) -> None:
    settings = settings_for(tmp_path, {
        "IOTMETER_ARCHIVE_URL": "s3://iot-data",
        "IOTMETER_S3_ENDPOINT": private_s3.endpoint,
        "IOTMETER_S3_ACCESS_KEY": private_s3.access_key,
        "IOTMETER_S3_SECRET_KEY": private_s3.secret_key,
    })
    _outage(settings, private_mosquitto, private_s3.stop, private_s3.start)


def test_postgresql_down_for_30s_loses_nothing(
    tmp_path: Path, private_mosquitto: MosquittoServer, private_postgres: PrivatePostgres
) -> None:
    settings = settings_for(tmp_path, {"IOTMETER_DB_URL": private_postgres.url})
    _outage(settings, private_mosquitto, private_postgres.stop, private_postgres.start)


def test_broker_restart_loses_nothing(tmp_path: Path,
                                      private_mosquitto: MosquittoServer) -> None:
    settings = settings_for(tmp_path, {})
    with running_collector(settings, private_mosquitto.url) as collector:
        load = SteadyLoad(private_mosquitto.url, DEVICES, rate=200)
        load.start()
        time.sleep(2)
        private_mosquitto.restart()
        time.sleep(3)
        sent = load.stop()
        wait_for(lambda: collector.intake is not None and collector.intake.connected.is_set(),
                 what="collector reconnected")
        assert_exactly_once(settings, sent)


def _start_collector_process(settings: Settings, broker: MosquittoServer,
                             metrics_port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, **env_for(settings, broker.url)}
    log = open(settings.home / "collector.log", "ab")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen(
        [sys.executable, "-m", "iotmeter_tui", "--collector-only",
         "--metrics-port", str(metrics_port)],
        env=env, stdout=log, stderr=subprocess.STDOUT)

    def connected() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as r:
            return b"iotmeter_broker_connected 1.0" in r.read()

    wait_for(connected, timeout_s=30, what="collector process connected")
    return process


@pytest.mark.parametrize("kills", [3])
def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, private_mosquitto: MosquittoServer, store_env: dict[str, str], kills: int
) -> None:
    settings = settings_for(tmp_path, store_env, archive_window_s=1, client_id="kill-test")
    port = free_port()
    process = _start_collector_process(settings, private_mosquitto, port)
    load = SteadyLoad(private_mosquitto.url, DEVICES, rate=500)
    load.start()
    try:
        for _ in range(kills):
            time.sleep(1.5)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            time.sleep(0.5)  # the broker holds what arrives meanwhile
            process = _start_collector_process(settings, private_mosquitto, port)
        time.sleep(1.5)
        sent = load.stop()
        assert_exactly_once(settings, sent)
        # And a clean stop drains and exits 0 within the 10 s a service manager allows.
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert time.monotonic() - started < 10
    finally:
        if process.poll() is None:
            process.kill()
