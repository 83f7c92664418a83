"""Helpers for command and OTA tests: a simulated fleet that is always stopped, a device
that never answers, a fake publisher for unit tests, and the real CLI in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.config import Settings
from iotmeter_tui.backend.control.publisher import PublishError
from iotmeter_tui.backend.mqtt.address import BrokerAddress
from iotmeter_tui.backend.mqtt.paho_session import make_client
from iotmeter_tui.backend.simulator.controller import SimulatorController
from iotmeter_tui.backend.stores.metadata import DeviceUpdate, MetadataStore
from testsupport.fleet import hello, status, wait_for
from testsupport.harness import env_for

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def simulated_fleet(url: str, home: Path, devices: int, *, kind: str = "dc",
                    firmware_key: Ed25519PublicKey | None = None,
                    ) -> Iterator[tuple[SimulatorController, list[str]]]:
    """`devices` simulated meters, quick to reboot, stopped on the way out; with
    `firmware_key` they pin it (signed firmware only)."""
    controller = SimulatorController(url, home, seed=11, boot_delay_s=0.1, heartbeat_s=30.0,
                                     firmware_key=firmware_key)
    try:
        ids = controller.start(devices, kind, rate=2.0)
        yield controller, ids
    finally:
        controller.stop()


def wait_online(metadata: MetadataStore, device_ids: list[str], *, fw: str | None = None,
                timeout_s: float = 20.0) -> None:
    def ready() -> bool:
        for device_id in device_ids:
            device = metadata.get_device(device_id)
            if device is None or device.connection_status != "online":
                return False
            if fw is not None and device.fw_version != fw:
                return False
        return True

    wait_for(ready, timeout_s=timeout_s, what=f"{device_ids} online in the registry")


class SilentDevice:
    """A device that connects, says hello, records every command it gets and never answers."""

    def __init__(self, url: str, device_id: str) -> None:
        self.device_id = device_id
        self.received: list[protocol.ServerMessage] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        address = BrokerAddress.parse(url)
        self._client = make_client(address, device_id, persistent=True)
        topic, will = status(device_id, "offline", boot=1)
        self._client.will_set(topic, will, qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self._ready.set()
        self._client.on_message = self._on_message
        self._client.connect(address.host, address.port, keepalive=10)
        self._client.loop_start()
        assert self._ready.wait(10), "silent device did not subscribe"
        for topic, payload in (status(device_id, "online", boot=1), hello(device_id, 1, 0)):
            self._client.publish(topic, payload, qos=1,
                                 retain=topic.endswith("status")).wait_for_publish(5)

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe([(t, 1) for t in protocol.device_subscriptions(self.device_id)])

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        decoded = protocol.decode_server_message(msg.topic, bytes(msg.payload))
        if decoded is not None:
            with self._lock:
                self.received.append(decoded)

    def commands(self) -> list[protocol.ServerMessage]:
        with self._lock:
            return [m for m in self.received if m.kind == "command"]

    def offers(self) -> list[protocol.ServerMessage]:
        with self._lock:
            return [m for m in self.received if m.kind == "ota"]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class FakePublisher:
    """Records publishes; `connected` and `fail` let a test play a broker outage."""

    def __init__(self) -> None:
        self.connected = True
        self.fail = False
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes) -> None:
        if self.fail:
            raise PublishError("no PUBACK (fake)")
        self.sent.append((topic, payload))

    def decoded(self) -> list[protocol.ServerMessage]:
        out = []
        for topic, payload in self.sent:
            message = protocol.decode_server_message(topic, payload)
            assert message is not None, payload
            out.append(message)
        return out


def register(metadata: MetadataStore, device_id: str, *, online: bool = True,
             fw: str = "1.0.0", device_type: str = "power_meter_dc", at: int = 1000) -> None:
    """Put a device in the registry as a hello (and a status) would."""
    metadata.apply_collector_batch([DeviceUpdate(
        device_id, at, device_type=device_type, fw_version=fw, boot=1, heartbeat_s=30.0,
        connection_status="online" if online else "offline", status_at=at)], [])


def run_cli(settings: Settings, mqtt_url: str | None, *args: str,
            timeout_s: float = 90.0) -> subprocess.CompletedProcess[str]:
    """The real `iotmeter` command in a child process, on the test's settings; `mqtt_url`
    None leaves IOTMETER_MQTT_URL unset (the embedded defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
    env.update(env_for(settings, mqtt_url or ""))
    if mqtt_url is None:
        del env["IOTMETER_MQTT_URL"]
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "iotmeter_tui", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout_s, check=False)
