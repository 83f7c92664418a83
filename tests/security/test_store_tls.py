"""TLS to the stores with certificate verification on, against real servers and the suite's
throw-away CA: InfluxDB 1.x over HTTPS (`influxdbs://`) and PostgreSQL with
`sslmode=verify-full`, trusting the CA through IOTMETER_TLS_CA_FILE."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tls_proxy import TlsProxy

from iotmeter_tui.backend import tls
from iotmeter_tui.backend.broker import free_port
from iotmeter_tui.backend.config import load_settings
from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.backend.stores.archive_s3 import S3Archive
from iotmeter_tui.backend.stores.metadata_postgres import open_postgres_metadata
from iotmeter_tui.backend.stores.timeseries import Point
from iotmeter_tui.backend.stores.timeseries_influx import InfluxTimeSeries
from testsupport.certs import TestCA
from testsupport.services import PrivatePostgres, S3Server, influxd_config


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[TestCA]:
    yield TestCA(tmp_path / "ca")
    tls.use_ca_file(None)


@pytest.fixture
def https_influxd(ca: TestCA) -> Iterator[int]:
    binary = shutil.which("influxd") or "/usr/bin/influxd"
    assert os.access(binary, os.X_OK), "influxd is missing: apt-get install influxdb"
    server = ca.server("influxd")
    data = Path(tempfile.mkdtemp(prefix="iotmeter-influxd-tls-"))
    port, rpc = free_port(), free_port()
    config = influxd_config(port, rpc, data).replace(
        "[http]\n", f'[http]\n  https-enabled = true\n  https-certificate = "{server.cert}"\n'
        f'  https-private-key = "{server.key}"\n', 1)
    assert "https-enabled" in config
    (data / "influxdb.conf").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
    with (data / "influxd.log").open("wb") as log:
        process = subprocess.Popen([binary, "run", "-config", str(data / "influxdb.conf")],
                                   stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
    try:
        load_settings({"IOTMETER_TLS_CA_FILE": str(ca.cert)})
        probe = InfluxTimeSeries(f"influxdbs://localhost:{port}/iot-metrics", retries=0,
                                 timeout=1)
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (data / "influxd.log").read_text()
            try:
                probe.check()
                break
            except StoreError:
                assert time.monotonic() < deadline, (data / "influxd.log").read_text()
                time.sleep(0.2)
        probe.close()
        yield port
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(data, ignore_errors=True)


def test_influxdb_over_https_verifies_the_server(https_influxd: int, ca: TestCA) -> None:
    url = f"influxdbs://localhost:{https_influxd}/iot-metrics"
    load_settings({"IOTMETER_TLS_CA_FILE": str(ca.cert)})
    store = InfluxTimeSeries(url, retries=0, timeout=5)
    try:
        store.write([Point("dc-0001", "power_meter_dc", 1_795_740_000_000, 1, 0,
                           {"voltage_v": 750.0})])
        assert store.latest(["dc-0001"])["dc-0001"].fields["voltage_v"] == 750.0
    finally:
        store.close()

    load_settings({})  # the system CAs only: the private CA's server is not trusted
    untrusted = InfluxTimeSeries(url, retries=0, timeout=5)
    try:
        with pytest.raises(StoreError, match="certificate"):
            untrusted.check()
    finally:
        untrusted.close()


def test_postgresql_with_verify_full(ca: TestCA) -> None:
    server = ca.server("postgres")
    with PrivatePostgres(tls=(server.cert, server.key)) as postgres:
        url = (f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres"
               "?sslmode=verify-full")
        load_settings({"IOTMETER_TLS_CA_FILE": str(ca.cert)})
        store = open_postgres_metadata(url, timeout_s=5)
        try:
            store.create_device("dc-0001", "power_meter_dc")
            assert store.get_device("dc-0001") is not None
        finally:
            store.close()

        other = TestCA(ca.directory / "other", "another CA")
        load_settings({"IOTMETER_TLS_CA_FILE": str(other.cert)})  # a CA that did not sign it
        untrusted = open_postgres_metadata(url, timeout_s=3)
        try:
            with pytest.raises(StoreError, match="certificate verify failed"):
                untrusted.create_device("dc-0002", "power_meter_dc")
        finally:
            untrusted.close()


def test_s3_over_https_verifies_the_endpoint(ca: TestCA, s3: S3Server) -> None:
    """moto cannot serve TLS with our certificate, so a TLS-terminating proxy on loopback
    stands in front of it: the client's side (certificate and host name checks) is real."""
    server = ca.server("s3")
    proxy = TlsProxy(server.cert, server.key, (s3.host, s3.port))
    endpoint = f"https://localhost:{proxy.port}"
    try:
        load_settings({"IOTMETER_TLS_CA_FILE": str(ca.cert)})
        archive = S3Archive(f"tls-{secrets.token_hex(4)}", endpoint, s3.access_key,
                            s3.secret_key, s3.region)
        archive.put("dc-0001/telemetry/a.ndjson", b"{}\n")
        assert archive.get("dc-0001/telemetry/a.ndjson") == b"{}\n"
        archive.close()

        load_settings({})  # system CAs only
        untrusted = S3Archive("tls-untrusted", endpoint, s3.access_key, s3.secret_key,
                              s3.region, retries=0)
        with pytest.raises(StoreError, match=r"(?i)certificate|ssl"):
            untrusted.check()
        untrusted.close()
    finally:
        proxy.close()
