"""ServerPublisher on a real mosquitto: PUBACK-confirmed QoS 1, a clear error while the broker
is away (nothing handed to paho to send behind the caller's back), and reconnection."""

from __future__ import annotations

import time

import pytest

from iotmeter_tui.backend.broker import free_port
from iotmeter_tui.backend.control.publisher import PublishError, ServerPublisher
from testsupport import MosquittoServer
from testsupport.commands import SilentDevice
from testsupport.fleet import wait_for


def test_publish_waits_for_the_broker_and_fails_fast_without_it(
        private_mosquitto: MosquittoServer) -> None:
    device = SilentDevice(private_mosquitto.url, "dev-1")
    publisher = ServerPublisher(private_mosquitto.url, "test-publisher", connect_wait_s=5)
    try:
        payload = (b'{"v":2,"command_id":"cmd-1","ts":1,"expires_ts":2000000000000,'
                   b'"name":"ping","params":{}}')
        publisher.publish("iot/dev-1/command", payload)
        wait_for(lambda: device.commands(), timeout_s=5, what="delivery")

        private_mosquitto.stop()
        wait_for(lambda: not publisher.connected, timeout_s=5, what="disconnect noticed")
        publisher.connect_wait_s = 0
        started = time.monotonic()
        with pytest.raises(PublishError, match="not connected"):
            publisher.publish("iot/dev-1/command", payload)
        assert time.monotonic() - started < 1

        private_mosquitto.start()
        assert publisher.wait_connected(20), "reconnects with back-off"
        publisher.publish("iot/dev-1/command", payload)
    finally:
        publisher.close()
        device.close()


def test_an_unreachable_broker_is_named() -> None:
    publisher = ServerPublisher(f"mqtt://127.0.0.1:{free_port()}", "test-publisher",
                                connect_wait_s=1.5)
    try:
        with pytest.raises(PublishError, match=r"not connected to the MQTT broker at "
                                                r"127\.0\.0\.1:\d+: cannot reach the broker"):
            publisher.publish("iot/dev-1/command", b"{}")
    finally:
        publisher.close()
