"""The staging overlay's in-cluster Mosquitto (overlays/staging/mosquitto/ and the init
container of stores.yaml), run by a real mosquitto with the container's paths mapped to a
temporary directory: the init script writes the password file from the Secret's values, the
collector's intake receives what a device sends through its share group, only the dispatcher
may command a device, and a device cannot take the collector's session by its client id."""

from __future__ import annotations

import os
import pwd
import queue
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from deploy_helpers import K8S, need_binary

from iotmeter_tui.backend.broker import free_port

STAGING = K8S / "overlays" / "staging"
PASSWORDS = {"MQTT_COLLECTOR_PASSWORD": "collector-pw", "MQTT_DISPATCHER_PASSWORD": "dispatch-pw"}


class StagingBroker:
    def __init__(self, tmp: Path) -> None:
        mosquitto = need_binary("mosquitto", "install Debian's `mosquitto`")
        need_binary("mosquitto_passwd", "install Debian's `mosquitto`")
        secrets, auth, data = tmp / "secrets", tmp / "auth", tmp / "data"
        for directory in (secrets, auth, data):
            directory.mkdir()
        for key, value in PASSWORDS.items():
            (secrets / key).write_text(value)
        # The init container's own script, its paths mapped here.
        stores = [d for d in yaml.safe_load_all((STAGING / "stores.yaml").read_text()) if d]
        sts = next(d for d in stores if d["kind"] == "StatefulSet"
                   and d["metadata"]["name"] == "mosquitto")
        script = sts["spec"]["template"]["spec"]["initContainers"][0]["args"][0]
        script = script.replace("/mosquitto/auth/", f"{auth}/").replace(
            "/run/secrets/stores/", f"{secrets}/")
        subprocess.run(["sh", "-c", script], check=True, capture_output=True)
        subprocess.run(["mosquitto_passwd", "-b", str(auth / "passwd"), "dc-0001", "device-pw"],
                       check=True, capture_output=True)
        self.port = free_port()
        text = (STAGING / "mosquitto" / "mosquitto.conf").read_text()
        text = text.replace("\nlistener 1883\n", f"\nlistener {self.port} 127.0.0.1\n")
        text = text.replace("/mosquitto/auth/", f"{auth}/").replace(
            "/mosquitto/config/acl", str(STAGING / "mosquitto" / "acl")).replace(
            "/mosquitto/data/", f"{data}/")
        left = [line for line in text.splitlines()
                if not line.startswith("#") and re.search(r"(^|\s)/mosquitto/", line)]
        assert not left, f"container paths left: {left}"
        text += f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
        (tmp / "mosquitto.conf").write_text(text)
        self.log = tmp / "mosquitto.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([mosquitto, "-c", str(tmp / "mosquitto.conf")],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                assert self.process.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, "mosquitto did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[StagingBroker]:
    running = StagingBroker(tmp_path)
    yield running
    running.stop()


class Client:
    def __init__(self, broker: StagingBroker, user: str, password: str, client_id: str) -> None:
        self.messages: queue.Queue[str] = queue.Queue()
        self.disconnects: queue.Queue[int] = queue.Queue()
        connected: queue.Queue[int] = queue.Queue()
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                protocol=mqtt.MQTTv311, clean_session=False)
        self.mqtt.username_pw_set(user, password)
        self.mqtt.on_connect = lambda _c, _u, _f, reason, _p: connected.put(reason.value)
        self.mqtt.on_message = lambda _c, _u, m: self.messages.put(m.topic)
        self.mqtt.on_disconnect = lambda _c, _u, _f, reason, _p: self.disconnects.put(
            reason.value)
        self.mqtt.connect("127.0.0.1", broker.port)
        self.mqtt.loop_start()
        assert connected.get(timeout=5) == 0, f"{user} refused"

    def subscribe(self, topic: str) -> None:
        done: queue.Queue[Any] = queue.Queue()
        self.mqtt.on_subscribe = lambda *args: done.put(args)
        self.mqtt.subscribe(topic, qos=1)
        done.get(timeout=5)

    def publish(self, topic: str) -> None:
        self.mqtt.publish(topic, b"{}", qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.mqtt.loop_stop()
        self.mqtt.disconnect()


def test_staging_broker_grants_and_identities(broker: StagingBroker) -> None:
    collector = Client(broker, "collector", PASSWORDS["MQTT_COLLECTOR_PASSWORD"], "collector")
    dispatcher = Client(broker, "dispatcher", PASSWORDS["MQTT_DISPATCHER_PASSWORD"], "dispatcher")
    device = Client(broker, "dc-0001", "device-pw", "dc-0001")
    try:
        collector.subscribe("$share/iotmeter/iot/+/telemetry")
        device.subscribe("iot/dc-0001/command")
        device.publish("iot/dc-0001/telemetry")
        assert collector.messages.get(timeout=5) == "iot/dc-0001/telemetry"
        # Only the dispatcher may command a device: the intake's publish is dropped.
        collector.publish("iot/dc-0001/command")
        dispatcher.publish("iot/dc-0001/command")
        assert device.messages.get(timeout=5) == "iot/dc-0001/command"
        time.sleep(0.3)
        assert device.messages.empty(), "the collector's intake could command a device"
        # A device that claims the collector's client id gets its own (its username): the
        # collector's session stays connected.
        impostor = Client(broker, "dc-0001", "device-pw", "collector")
        time.sleep(0.5)
        assert collector.disconnects.empty(), "a device took over the collector's session"
        impostor.close()
    finally:
        for client in (collector, dispatcher, device):
            client.close()


def test_staging_broker_refuses_a_wrong_password(broker: StagingBroker) -> None:
    with pytest.raises(AssertionError, match="refused"):
        Client(broker, "collector", "not-the-password", "collector")
