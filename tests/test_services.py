"""The service fixtures work over real sockets: a round trip through each, and the restarts
that the fault tests rely on keep what they promise to keep."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from minio import Minio

from iotmeter_tui.backend import broker, protocol
from iotmeter_tui.backend.broker import (
    BrokerError,
    EmbeddedBroker,
    mosquitto_config,
    tcp_accepts,
)
from testsupport import (
    InfluxServer,
    MosquittoServer,
    PostgresDatabase,
    PrivatePostgres,
    S3Server,
)

TIMEOUT_S = 10.0
# A proxy from the environment must not see loopback traffic.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- MQTT ---------------------------------------------------------------------------------


class MqttProbe:
    """A paho client that records what it receives and waits on connect and subscribe."""

    def __init__(self, server: MosquittoServer, client_id: str = "", *, clean: bool = True):
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean,
            protocol=mqtt.MQTTv311,
        )
        self.server = server
        self.session_present: bool | None = None
        self.messages: list[mqtt.MQTTMessage] = []
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._received = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: Any,
        properties: Any,
    ) -> None:
        self.session_present = flags.session_present
        self._connected.set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.append(message)
        self._received.set()

    def connect(self) -> MqttProbe:
        self.client.connect(self.server.host, self.server.port)
        self.client.loop_start()
        assert self._connected.wait(TIMEOUT_S), "no CONNACK"
        return self

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(TIMEOUT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published(), "no PUBACK"

    def wait_for_message(self) -> mqtt.MQTTMessage:
        assert self._received.wait(TIMEOUT_S), "no message received"
        return self.messages[0]

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mosquitto_qos1_round_trip(mosquitto: MosquittoServer) -> None:
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    subscriber = MqttProbe(mosquitto).connect()
    publisher = MqttProbe(mosquitto).connect()
    try:
        subscriber.subscribe("iot/dc-0001/telemetry")
        publisher.publish("iot/dc-0001/telemetry", b'{"v": 2}')
        message = subscriber.wait_for_message()
        assert (message.topic, message.payload, message.qos) == (
            "iot/dc-0001/telemetry",
            b'{"v": 2}',
            1,
        )
    finally:
        subscriber.disconnect()
        publisher.disconnect()


def test_broker_restart_keeps_persistent_session(private_mosquitto: MosquittoServer) -> None:
    # The collector's situation: subscribed with a fixed id, away while devices publish,
    # and the broker restarts before it comes back.
    collector = MqttProbe(private_mosquitto, "iotmeter-collector-test", clean=False).connect()
    collector.subscribe("iot/+/telemetry")
    collector.disconnect()

    device = MqttProbe(private_mosquitto, "dc-0001").connect()
    device.publish("iot/dc-0001/telemetry", b"queued while away")
    device.disconnect()

    port = private_mosquitto.port
    private_mosquitto.restart()
    assert private_mosquitto.port == port

    collector = MqttProbe(private_mosquitto, "iotmeter-collector-test", clean=False).connect()
    try:
        assert collector.session_present is True
        assert collector.wait_for_message().payload == b"queued while away"
    finally:
        collector.disconnect()


def test_stopped_broker_refuses_connections(private_mosquitto: MosquittoServer) -> None:
    private_mosquitto.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((private_mosquitto.host, private_mosquitto.port), timeout=2)
    private_mosquitto.start()
    MqttProbe(private_mosquitto).connect().disconnect()


def test_mosquitto_config_has_the_product_settings(tmp_path: Path) -> None:
    lines = mosquitto_config(18830, tmp_path).splitlines()
    for expected in (
        "listener 18830 127.0.0.1",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {tmp_path.resolve()}/",
        "max_inflight_messages 10000",
        "max_queued_messages 1000000",
        "max_queued_bytes 0",
        "log_dest stderr",
    ):
        assert expected in lines
    # Issue 15 item 2: a client's oversized packet is refused at the broker.
    assert f"max_packet_size {protocol.BROKER_MAX_PACKET_BYTES}" in lines


def test_missing_mosquitto_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(broker, "MOSQUITTO_FALLBACK", tmp_path / "mosquitto")
    with pytest.raises(BrokerError, match="apt-get install mosquitto"):
        EmbeddedBroker(tmp_path)


# The embedded broker dies with the process that started it, even a SIGKILLed one. "thread"
# starts it as the dashboard does: on a thread that ends once start-up is done.
BROKER_PARENT = textwrap.dedent("""
    import sys, threading
    from iotmeter_tui.backend.broker import EmbeddedBroker
    broker = EmbeddedBroker(sys.argv[1])
    if sys.argv[2] == "thread":
        starter = threading.Thread(target=broker.start)
        starter.start()
        starter.join()
    else:
        broker.start()
    print(broker._process.pid, broker.port, flush=True)
    sys.stdin.read()  # until the test kills us
""")


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie waiting for init to reap it counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return state.split()[1] in ("Z", "X")


@pytest.mark.parametrize("started_on", ["main", "thread"])
def test_broker_dies_with_its_sigkilled_parent(tmp_path: Path, started_on: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", BROKER_PARENT, str(tmp_path), started_on],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pid = 0
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, f"the parent exited with {parent.wait()} before starting the broker"
        pid, port = (int(word) for word in line.split())
        time.sleep(0.5)  # a broker forked by the ended start thread would be dying by now
        assert not process_gone(pid)
        assert tcp_accepts(EmbeddedBroker.host, port)

        parent.kill()
        parent.wait(TIMEOUT_S)
        deadline = time.monotonic() + TIMEOUT_S
        while not process_gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_gone(pid), f"mosquitto {pid} outlived its SIGKILLed parent"
        # SIGTERM, not a crash: mosquitto saved its sessions on the way out.
        log = (tmp_path / "mosquitto.log").read_text()
        assert "terminating" in log and "Saving in-memory database" in log
    finally:
        parent.kill()
        parent.wait(TIMEOUT_S)
        if pid and not process_gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_broker_started_on_a_short_lived_thread_outlives_it(tmp_path: Path) -> None:
    embedded = EmbeddedBroker(tmp_path)

    def restart() -> None:
        embedded.stop()
        embedded.start()

    try:
        for _ in range(2):  # a restart from yet another short-lived thread, too
            starter = threading.Thread(target=restart)
            starter.start()
            starter.join(TIMEOUT_S)
            time.sleep(0.5)
            assert embedded.running, "the broker died with the thread that started it"
            assert tcp_accepts(embedded.host, embedded.port)
    finally:
        embedded.stop()
    assert not embedded.running


# --- InfluxDB -----------------------------------------------------------------------------


def influx(
    server: InfluxServer,
    path: str,
    params: dict[str, str],
    body: bytes | None = None,
) -> tuple[int, bytes]:
    url = f"{server.http_url}{path}?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    with HTTP.open(request, timeout=TIMEOUT_S) as response:
        return response.status, response.read()


def influx_select(server: InfluxServer, database: str, query: str) -> list[list[Any]]:
    status, body = influx(server, "/query", {"db": database, "q": query, "epoch": "ms"})
    assert status == 200
    series = json.loads(body)["results"][0].get("series", [])
    return series[0]["values"] if series else []


def write_and_read_point(server: InfluxServer, database: str) -> None:
    status, _ = influx(
        server,
        "/query",
        {},
        urllib.parse.urlencode({"q": f'CREATE DATABASE "{database}"'}).encode(),
    )
    assert status == 200
    line = (
        b"iot_telemetry,device_id=dc-0001,device_type=power_meter_dc voltage_v=748.2,seq=1i "
        b"1795740001250"
    )
    status, _ = influx(server, "/write", {"db": database, "precision": "ms"}, line)
    assert status == 204
    rows = influx_select(server, database, "SELECT voltage_v, seq FROM iot_telemetry")
    assert rows == [[1795740001250, 748.2, 1]]


def test_influxdb_write_and_query(influxdb: InfluxServer) -> None:
    assert influxdb.url == f"influxdb://127.0.0.1:{influxdb.port}/iot-metrics"
    write_and_read_point(influxdb, "fixture_check")


def test_influxdb_restart_keeps_data(private_influxdb: InfluxServer) -> None:
    write_and_read_point(private_influxdb, "iot-metrics")
    private_influxdb.restart()
    rows = influx_select(private_influxdb, "iot-metrics", "SELECT voltage_v FROM iot_telemetry")
    assert rows == [[1795740001250, 748.2]]


# --- S3 -------------------------------------------------------------------------------------


def minio_for(server: S3Server) -> Minio:
    return Minio(
        server.endpoint.removeprefix("http://"),
        access_key=server.access_key,
        secret_key=server.secret_key,
        secure=False,
        region=server.region,
    )


def put_ndjson(client: Minio, bucket: str, key: str, body: bytes) -> None:
    client.put_object(bucket, key, io.BytesIO(body), len(body), content_type="application/x-ndjson")


def read_object(client: Minio, bucket: str, key: str) -> bytes:
    response = client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def test_s3_round_trip_with_minio(s3: S3Server) -> None:
    client = minio_for(s3)
    client.make_bucket("fixture-check")
    put_ndjson(client, "fixture-check", "dc-0001/telemetry/0001.ndjson", b'{"v": 2}\n')
    listed = [o.object_name for o in client.list_objects("fixture-check", recursive=True)]
    assert listed == ["dc-0001/telemetry/0001.ndjson"]
    assert read_object(client, "fixture-check", "dc-0001/telemetry/0001.ndjson") == b'{"v": 2}\n'


def test_s3_stop_refuses_and_start_keeps_objects(s3: S3Server, private_s3: S3Server) -> None:
    client = minio_for(private_s3)
    client.make_bucket("iot-data")
    put_ndjson(client, "iot-data", "dc-0001/hello/0001.ndjson", b"{}\n")
    # Private means private: the session server does not see this bucket.
    assert not minio_for(s3).bucket_exists("iot-data")

    private_s3.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((private_s3.host, private_s3.port), timeout=2)
    private_s3.start()
    assert read_object(client, "iot-data", "dc-0001/hello/0001.ndjson") == b"{}\n"

    private_s3.kill()
    private_s3.start()
    assert not client.bucket_exists("iot-data")


# --- PostgreSQL -----------------------------------------------------------------------------


def insert_and_select(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS devices (device_id text PRIMARY KEY, fw text)")
        conn.execute("INSERT INTO devices VALUES ('dc-0001', '2.4.1') ON CONFLICT DO NOTHING")
        return conn.execute("SELECT device_id, fw FROM devices").fetchall()


def test_postgres_round_trip(pg_url: str) -> None:
    assert pg_url.startswith("postgresql://postgres@127.0.0.1:5432/iotmeter_test_")
    assert insert_and_select(pg_url) == [("dc-0001", "2.4.1")]


def test_pg_database_is_fresh_and_dropped(pg_database: PostgresDatabase) -> None:
    with psycopg.connect(pg_database.url) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)

    with PostgresDatabase() as scratch:
        insert_and_select(scratch.url)
        held = psycopg.connect(scratch.url)  # DROP ... WITH (FORCE) must not wait for it
    held.close()
    with psycopg.connect(pg_database.admin_url) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (scratch.name,))
        assert found.fetchone() is None


def test_private_postgres_survives_stop_and_kill(private_postgres: PrivatePostgres) -> None:
    assert insert_and_select(private_postgres.url) == [("dc-0001", "2.4.1")]
    private_postgres.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(private_postgres.url, connect_timeout=2)
    private_postgres.start()
    assert insert_and_select(private_postgres.url) == [("dc-0001", "2.4.1")]

    # A crash right after a commit loses nothing: fsync is off, synchronous commit is not.
    with psycopg.connect(private_postgres.url) as conn:
        conn.execute("INSERT INTO devices VALUES ('ac-0001', '1.0.0')")
    private_postgres.kill()
    private_postgres.start()
    with psycopg.connect(private_postgres.url) as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (2,)


def test_iotmeter_home_is_private(iotmeter_home: Path) -> None:
    assert os.environ["IOTMETER_HOME"] == str(iotmeter_home)
    assert iotmeter_home.is_dir() and not any(iotmeter_home.iterdir())
