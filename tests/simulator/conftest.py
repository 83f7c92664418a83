"""Helpers for the simulator tests: a paho recorder of what devices publish, a command sender,
and controllers that are always stopped. The brokers come from tests/conftest.py."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.simulator.controller import SimulatorController

WAIT_S = 15.0
REPO = Path(__file__).resolve().parents[2]
_prefixes = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float  # time.time() on arrival
    decoded: protocol.Message | protocol.Rejection  # decoded once, on arrival

    @property
    def device_id(self) -> str:
        return self.topic.split("/")[1]

    def decode(self) -> protocol.Message | protocol.Rejection:
        return self.decoded

    def message(self) -> protocol.Message:
        decoded = self.decode()
        assert isinstance(decoded, protocol.Message), (decoded, self.payload)
        return decoded


class Recorder:
    """Subscribes to every device topic and keeps what devices with `prefix` publish."""

    def __init__(self, url: str, prefix: str, *, persistent: bool = False) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.prefix = prefix
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"recorder-{uuid.uuid4().hex[:10]}" if persistent else "",
            clean_session=not persistent,
            protocol=mqtt.MQTTv311,
        )
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port), keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT_S), "recorder did not subscribe"

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        client.subscribe([(f, 1) for f in protocol.collector_subscriptions()])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) >= 3 and parts[1].startswith(self.prefix):
            with self._lock:
                self._messages.append(Received(msg.topic, msg.payload, msg.retain, time.time(),
                                               protocol.decode(msg.topic, msg.payload)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    def of(self, msg_type: str, device_id: str | None = None) -> list[protocol.Message]:
        """The valid messages of one type, in arrival order (rejected payloads left out)."""
        suffix = "/" + protocol.DEVICE_TOPIC_SUFFIX[msg_type]
        out = []
        for r in self.messages:
            if r.topic.endswith(suffix) and (device_id is None or r.device_id == device_id):
                decoded = r.decode()
                if isinstance(decoded, protocol.Message):
                    out.append(decoded)
        return out

    def wait_for(self, predicate: Callable[[], Any], timeout: float = WAIT_S,
                 what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def wait_quiet(self, quiet_s: float = 0.5, timeout: float = WAIT_S) -> None:
        """Wait until nothing has arrived for `quiet_s`: the broker has delivered it all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                last = self._messages[-1].at if self._messages else 0.0
            if time.time() - last >= quiet_s:
                return
            time.sleep(0.05)
        raise AssertionError("messages kept arriving")

    def seqs(self) -> dict[tuple[str, int], list[int]]:
        """(device, boot) -> the seqs of its messages, in arrival order."""
        out: dict[tuple[str, int], list[int]] = {}
        for r in self.messages:
            decoded = r.decode()
            if isinstance(decoded, protocol.Message) and decoded.seq is not None:
                assert decoded.boot is not None
                out.setdefault((decoded.device_id, decoded.boot), []).append(decoded.seq)
        return out

    def assert_clean_sequence(self, device_id: str, boot: int) -> list[protocol.Message]:
        """What a fault-free boot looks like: its first message a hello (sent on connect,
        ahead of anything buffered before the connection was up), every seq from 0 exactly
        once, and telemetry in seq order. Returns the boot's messages in arrival order."""
        messages = [m for m in (r.decode() for r in self.messages)
                    if isinstance(m, protocol.Message) and m.device_id == device_id
                    and m.boot == boot and m.seq is not None]
        assert messages, f"nothing from {device_id} boot {boot}"
        assert messages[0].msg_type == protocol.HELLO, messages[0]
        seqs = [m.seq for m in messages]
        assert sorted(seqs) == list(range(len(seqs))), "every seq once, none missing"
        telemetry = [m.seq for m in messages if m.msg_type == protocol.TELEMETRY]
        assert telemetry == sorted(telemetry), "telemetry in order"
        return messages

    def acks(self, command_id: str) -> list[dict[str, Any]]:
        return [m.data for m in self.of(protocol.COMMAND_ACK)
                if m.data["command_id"] == command_id]

    def ota(self, campaign_id: str) -> list[dict[str, Any]]:
        return [m.data for m in self.of(protocol.OTA_STATUS)
                if m.data["campaign_id"] == campaign_id]


class Server:
    """Sends commands and OTA offers to devices, as the backend would."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.connect(host, int(port))
        self.client.loop_start()

    def command(self, device_id: str, name: str, params: dict[str, Any] | None = None, *,
                command_id: str | None = None, ttl_s: float = 60.0, age_s: float = 0.0) -> str:
        """Send a command issued `age_s` ago that expires `ttl_s` after issue."""
        command_id = command_id or uuid.uuid4().hex
        ts = int((time.time() - age_s) * 1000)
        expires_ts = ts + int(ttl_s * 1000)
        if name in protocol.COMMAND_NAMES:
            payload = protocol.encode_command(command_id, name, params or {}, ts=ts,
                                              expires_ts=expires_ts)
        else:  # a newer server's command this device does not know: the encoder refuses it
            payload = json.dumps({"v": protocol.VERSION, "command_id": command_id, "ts": ts,
                                  "expires_ts": expires_ts, "name": name,
                                  "params": params or {}}).encode()
        self.client.publish(protocol.command_topic(device_id), payload, qos=1).wait_for_publish(5)
        return command_id

    def offer(self, device_id: str, *, fw_version: str, url: str, sha256: str, size: int,
              campaign_id: str | None = None, signature: str | None = None) -> str:
        campaign_id = campaign_id or uuid.uuid4().hex
        now = int(time.time() * 1000)
        payload = protocol.encode_ota_offer(campaign_id, fw_version=fw_version, url=url,
                                            sha256=sha256, size=size, ts=now,
                                            expires_ts=now + 60_000, signature=signature)
        self.client.publish(protocol.ota_topic(device_id), payload, qos=1).wait_for_publish(5)
        return campaign_id

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def prefix() -> str:
    """A device-id prefix no other test uses, so tests share the session broker safely."""
    return f"t{os.getpid() % 1000}x{next(_prefixes)}-"


@pytest.fixture
def recorder_factory() -> Iterator[Callable[..., Recorder]]:
    made: list[Recorder] = []

    def make(url: str, prefix: str, *, persistent: bool = False) -> Recorder:
        recorder = Recorder(url, prefix, persistent=persistent)
        made.append(recorder)
        return recorder

    yield make
    for recorder in made:
        recorder.close()


@pytest.fixture
def server_factory() -> Iterator[Callable[[str], Server]]:
    made: list[Server] = []

    def make(url: str) -> Server:
        made.append(Server(url))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture
def controller_factory(iotmeter_home: Path) -> Iterator[Callable[..., SimulatorController]]:
    made: list[SimulatorController] = []

    def make(url: str, prefix: str, **kwargs: Any) -> SimulatorController:
        kwargs.setdefault("seed", 7)
        kwargs.setdefault("boot_delay_s", 0.1)
        home = kwargs.pop("home", iotmeter_home)
        controller = SimulatorController(url, home, prefix=prefix, **kwargs)
        made.append(controller)
        return controller

    yield make
    for controller in made:
        controller.stop()


@pytest.fixture
def simulator_process(iotmeter_home: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `python -m iotmeter_tui.backend.simulator ARGS` as its own process; killed at
    the end of the test if still running."""
    started: list[subprocess.Popen[bytes]] = []

    def start(url: str, prefix: str, *args: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        process = subprocess.Popen(
            [sys.executable, "-m", "iotmeter_tui.backend.simulator", "--mqtt-url", url,
             "--home", str(iotmeter_home), "--prefix", prefix, *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()
