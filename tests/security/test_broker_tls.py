"""TLS on the shipped broker listeners, with the suite's throw-away CA: mqtts:// (8883)
through the project's own clients (the collector, the dispatcher's publisher, the asyncio
client devices use), MQTT over WebSockets over TLS (9001) with paho's websockets transport,
and client certificates from a device CA (require_certificate + use_identity_as_username) as
the alternative to passwords."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_probe import Probe

from iotmeter_tui.backend import tls
from iotmeter_tui.backend.broker import LOOPBACK, free_port
from iotmeter_tui.backend.config import load_settings
from iotmeter_tui.backend.control.publisher import PublishError, ServerPublisher
from iotmeter_tui.backend.mqtt.address import BrokerAddress
from iotmeter_tui.backend.mqtt.client import MqttClient, MqttConnectionError
from testsupport.certs import TestCA
from testsupport.shipped_broker import (
    COLLECTOR_PASSWORD,
    DEVICE_CREDENTIALS,
    DISPATCHER_PASSWORD,
    ShippedBroker,
)


@pytest.fixture
def device_ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "device-ca", "iotmeter device CA")


@pytest.fixture
def broker(tmp_path: Path, device_ca: TestCA) -> Iterator[ShippedBroker]:
    """The shipped broker plus the client-certificate listener docs/security.md describes
    (commented out in the shipped mosquitto.conf)."""
    ca = TestCA(tmp_path / "ca")
    server = ca.server("cert-listener")
    cert_port = free_port()
    extra = (f"listener {cert_port} {LOOPBACK}\nprotocol mqtt\nuse_username_as_clientid true\n"
             f"certfile {server.cert}\nkeyfile {server.key}\ncafile {device_ca.cert}\n"
             "require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n")
    with ShippedBroker(tmp_path / "broker", ca=ca, extra=extra) as running:
        running.cert_port = cert_port  # type: ignore[attr-defined]
        yield running
    tls.use_ca_file(None)


def test_the_publisher_speaks_mqtts_with_the_configured_ca(broker: ShippedBroker) -> None:
    device = Probe(broker.port, "dc-0101", DEVICE_CREDENTIALS["dc-0101"], "dc-0101")
    device.subscribe("iot/dc-0101/command")
    url = broker.url("dispatcher", DISPATCHER_PASSWORD, tls=True)
    try:
        # Without the private CA the broker's certificate is not trusted: no connection.
        load_settings({})
        untrusted = ServerPublisher(url, "d", connect_wait_s=2.0)
        with pytest.raises(PublishError, match="not connected"):
            untrusted.publish("iot/dc-0101/command", b"never")
        untrusted.close()

        load_settings({"IOTMETER_TLS_CA_FILE": str(broker.ca.cert)})
        publisher = ServerPublisher(url, "d", connect_wait_s=5.0)
        publisher.publish("iot/dc-0101/command", b"over tls")
        publisher.close()
        assert device.received() == ("iot/dc-0101/command", b"over tls")
        assert device.nothing_more(0.2)
    finally:
        device.close()


def test_the_asyncio_client_verifies_the_broker(broker: ShippedBroker) -> None:
    collector = Probe(broker.port, "collector", COLLECTOR_PASSWORD, "c")
    collector.subscribe("iot/+/telemetry")
    address = BrokerAddress.parse(broker.url("dc-0101", DEVICE_CREDENTIALS["dc-0101"],
                                             tls=True))

    async def publish(trusted: bool) -> None:
        tls.use_ca_file(broker.ca.cert if trusted else None)
        client = MqttClient(address, "dc-0101")
        await client.connect()
        try:
            client.publish("iot/dc-0101/telemetry", b"verified", qos=1)
            assert await client.drain(5)
        finally:
            await client.disconnect()

    try:
        with pytest.raises(MqttConnectionError, match="certificate verify failed"):
            asyncio.run(publish(trusted=False))
        asyncio.run(publish(trusted=True))
        assert collector.received() == ("iot/dc-0101/telemetry", b"verified")
    finally:
        collector.close()


def test_websockets_over_tls(broker: ShippedBroker) -> None:
    collector = Probe(broker.port, "collector", COLLECTOR_PASSWORD, "c")
    collector.subscribe("iot/+/hello")
    device = Probe(broker.ws_port, "dc-0101", DEVICE_CREDENTIALS["dc-0101"], "dc-0101",
                   host="localhost", ca=broker.ca.cert, transport="websockets")
    try:
        assert device.refused is None
        device.publish("iot/dc-0101/hello", b"over wss")
        assert collector.received() == ("iot/dc-0101/hello", b"over wss")
    finally:
        device.close()
        collector.close()
    with pytest.raises(ssl.SSLCertVerificationError):  # a CA it does not know
        Probe(broker.ws_port, "dc-0101", DEVICE_CREDENTIALS["dc-0101"], "dc-0101",
              host="localhost", ca=TestCA(broker.tmp / "other-ca").cert, transport="websockets")


def test_client_certificates_make_the_cn_the_device(broker: ShippedBroker,
                                                    device_ca: TestCA) -> None:
    port = broker.cert_port  # type: ignore[attr-defined]
    collector = Probe(broker.port, "collector", COLLECTOR_PASSWORD, "c")
    collector.subscribe("iot/+/telemetry")
    pair = device_ca.client("dc-0101")
    device = Probe(port, None, None, "anything", host="localhost", ca=broker.ca.cert,
                   cert=(pair.cert, pair.key))
    try:
        assert device.refused is None
        device.publish("iot/dc-0102/telemetry", b"as another")  # the CN is dc-0101: denied
        device.publish("iot/dc-0101/telemetry", b"as itself")
        assert collector.received() == ("iot/dc-0101/telemetry", b"as itself")
        assert collector.nothing_more(0.3)
    finally:
        device.close()
        collector.close()
    # No certificate (a password instead), or one from another CA: the handshake fails, on
    # the client's side at once or (TLS 1.3) as the server's alert, so no CONNACK comes.
    for cert in (None, broker.ca.client("dc-0101")):
        with pytest.raises((OSError, AssertionError), match=r"handshake|alert|no CONNACK|EOF"):
            Probe(port, "dc-0101", DEVICE_CREDENTIALS["dc-0101"], "dc-0101", host="localhost",
                  ca=broker.ca.cert, cert=None if cert is None else (cert.cert, cert.key),
                  answer_timeout_s=2.0)


def scrape(port: int) -> dict[str, float]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_the_collector_runs_over_mqtts(broker: ShippedBroker, tmp_path: Path) -> None:
    """The collector (intake and dispatcher) with IOTMETER_TLS_CA_FILE, as a deployment
    whose broker has a private CA runs it."""
    metrics_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")},
        "IOTMETER_HOME": str(tmp_path / "home"),
        "IOTMETER_MQTT_URL": broker.url("collector", COLLECTOR_PASSWORD, tls=True),
        "IOTMETER_MQTT_DISPATCH_URL": broker.url("dispatcher", DISPATCHER_PASSWORD, tls=True),
        "IOTMETER_TLS_CA_FILE": str(broker.ca.cert),
        "IOTMETER_METRICS_PORT": str(metrics_port),
        "IOTMETER_FIRMWARE_LISTEN": "127.0.0.1:0",
    }
    log_path = tmp_path / "collector.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "iotmeter_tui", "--collector-only"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
    device = None
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                samples = scrape(metrics_port)
                if samples.get("iotmeter_broker_connected") == 1:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        device = Probe(broker.tls_port, "dc-0101", DEVICE_CREDENTIALS["dc-0101"], "dc-0101",
                       host="localhost", ca=broker.ca.cert)
        device.publish("iot/dc-0101/status",
                       b'{"v": 2, "device_id": "dc-0101", "msg_type": "status", '
                       b'"ts": 1795740001000, "data": {"state": "online"}}')
        deadline = time.monotonic() + 10
        while scrape(metrics_port).get("iotmeter_messages_acked_total", 0) < 1:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert "dispatch_shares_identity" not in log_path.read_text()
    finally:
        if device is not None:
            device.close()
        if process.poll() is None:
            process.kill()
            process.wait()
