"""A scripted fleet for tests and benches: publishes exact protocol-v2 messages at QoS 1 over a
real paho connection and waits for the broker's PUBACKs, so a test knows what was sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.mqtt.address import BrokerAddress
from iotmeter_tui.backend.mqtt.paho_session import make_client

DC_DATA = {"voltage_v": 748.2, "current_a": 1210.5, "power_kw": 905.7,
           "energy_import_kwh": 182733.41, "energy_export_kwh": 20311.02}


def telemetry(device_id: str, boot: int, seq: int, *, ts: int | None = None,
              data: dict[str, Any] | None = None) -> tuple[str, bytes]:
    ts = ts if ts is not None else 1_795_740_000_000 + boot * 10_000_000 + seq * 1000
    payload = protocol.encode_device_message(device_id, protocol.TELEMETRY,
                                             data or dict(DC_DATA, seq_marker=seq),
                                             ts=ts, boot=boot, seq=seq)
    return protocol.device_topic(device_id, protocol.TELEMETRY), payload


def hello(device_id: str, boot: int, seq: int, *, device_type: str = "power_meter_dc",
          fw_version: str = "1.0.0", heartbeat_s: float = 30.0) -> tuple[str, bytes]:
    payload = protocol.encode_device_message(
        device_id, protocol.HELLO,
        {"device_type": device_type, "fw_version": fw_version, "heartbeat_s": heartbeat_s,
         "uptime_s": 0},
        ts=int(time.time() * 1000), boot=boot, seq=seq)
    return protocol.device_topic(device_id, protocol.HELLO), payload


def status(device_id: str, state: str, *, boot: int | None = None) -> tuple[str, bytes]:
    payload = protocol.encode_device_message(device_id, protocol.STATUS, {"state": state},
                                             ts=int(time.time() * 1000), boot=boot)
    return protocol.device_topic(device_id, protocol.STATUS), payload


class Publisher:
    """One MQTT connection that publishes and waits until the broker has every message.
    `persistent` keeps the session across a broker restart, so paho re-sends what the broker
    had not acknowledged."""

    def __init__(self, url: str, client_id: str = "iotmeter-test-publisher", *,
                 persistent: bool = False) -> None:
        self._client = make_client(BrokerAddress.parse(url), client_id, persistent=persistent)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._connected = threading.Event()
        self._acked: set[int] = set()
        self._acked_changed = threading.Condition()
        self._client.on_connect = lambda *a: self._connected.set()
        self._client.on_publish = self._on_publish
        address = BrokerAddress.parse(url)
        self._client.connect(address.host, address.port)
        self._client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError(f"could not connect to {url}")

    def publish(self, items: Iterable[tuple[str, bytes]], *, qos: int = 1,
                retain: bool = False, timeout_s: float = 60.0) -> int:
        infos = [self._client.publish(topic, payload, qos=qos, retain=retain)
                 for topic, payload in items]
        # Not wait_for_publish(): it raises when the broker is away, whereas paho keeps a
        # QoS 1 message queued and sends it again once it has reconnected. PUBACKs are
        # counted by message id in on_publish instead.
        if qos == 0:
            return len(infos)
        pending = {info.mid for info in infos}
        deadline = time.monotonic() + timeout_s
        with self._acked_changed:
            while not pending <= self._acked:
                if not self._acked_changed.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("broker did not acknowledge every message")
            self._acked -= pending
        return len(infos)

    def _on_publish(self, _client: object, _userdata: object, mid: int, *_rest: object) -> None:
        with self._acked_changed:
            self._acked.add(mid)
            self._acked_changed.notify_all()

    def set_will(self, topic: str, payload: bytes) -> None:
        self._client.will_set(topic, payload, qos=1, retain=True)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Device:
    """A device connection with its own client id and Last Will, for offline tests."""

    def __init__(self, url: str, device_id: str, *, boot: int = 0) -> None:
        self.device_id = device_id
        address = BrokerAddress.parse(url)
        self._client = make_client(address, device_id, persistent=False)
        topic, will = status(device_id, "offline", boot=boot)
        self._client.will_set(topic, will, qos=1, retain=True)
        self._client.connect(address.host, address.port, keepalive=5)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def drop(self) -> None:
        """Vanish without DISCONNECT, as a meter losing power does: the broker fires the
        Last Will."""
        sock = self._client.socket()
        self._client.loop_stop()
        if sock is not None:
            sock.close()


def wait_for(predicate: Any, *, timeout_s: float = 30.0, interval_s: float = 0.1,
             what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy and return it; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


class SteadyLoad(threading.Thread):
    """Publishes telemetry for `devices` at `rate` messages/s in the background until stopped;
    `sent` lists each (device_id, boot, seq) the broker acknowledged."""

    def __init__(self, url: str, devices: list[str], *, rate: float = 100.0, boot: int = 1,
                 client_id: str = "iotmeter-test-load") -> None:
        super().__init__(daemon=True, name="steady-load")
        self.publisher = Publisher(url, client_id, persistent=True)
        self.devices = devices
        self.rate = rate
        self.boot = boot
        self.sent: list[tuple[str, int, int]] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        seq = 0
        period = len(self.devices) / self.rate
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                batch = [telemetry(d, self.boot, seq) for d in self.devices]
                self.publisher.publish(batch, timeout_s=120)
                self.sent.extend((d, self.boot, seq) for d in self.devices)
                seq += 1
                self.stopping.wait(max(0.0, period - (time.monotonic() - started)))
        except BaseException as exc:
            self.error = exc

    def stop(self) -> list[tuple[str, int, int]]:
        self.stopping.set()
        self.join(180)
        self.publisher.close()
        if self.error is not None:
            raise self.error
        return self.sent
