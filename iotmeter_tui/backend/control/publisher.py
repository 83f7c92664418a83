"""Server -> device publishing: the one place that sends commands and firmware offers.

`ServerPublisher` holds a clean-session paho connection (the server keeps no session state
of its own: what must survive is in the metadata store) and publishes at QoS 1, returning
only once the broker has acknowledged (PUBACK). A publish that cannot be confirmed raises
`PublishError`; the caller leaves its command or offer as it was and tries again later, which
is safe because devices act once per command_id / campaign_id.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import paho.mqtt.client as mqtt

from iotmeter_tui.backend.errors import IotmeterError
from iotmeter_tui.backend.mqtt.address import BrokerAddress
from iotmeter_tui.backend.mqtt.paho_session import make_client

log = logging.getLogger(__name__)

PUBACK_TIMEOUT_S = 5.0


class PublishError(IotmeterError):
    """The broker did not take the message (not connected, refused, no PUBACK in time).
    Always worth retrying later."""


class Publisher(Protocol):
    """What the command and OTA services need. They publish only while `connected`, so a
    broker outage leaves commands and offers untouched instead of counting failed tries."""

    @property
    def connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1; return once the broker has it, else raise PublishError."""


class ServerPublisher:
    """A QoS 1 publisher. `start()` connects in the background (and reconnects with back-off);
    `publish()` waits up to `connect_wait_s` for a connection, then for the PUBACK."""

    def __init__(self, url: str, client_id: str, *, connect_wait_s: float = 0.0,
                 puback_timeout_s: float = PUBACK_TIMEOUT_S, keepalive: int = 30) -> None:
        self.address = BrokerAddress.parse(url)
        self.client_id = client_id
        self.connect_wait_s = connect_wait_s
        self.puback_timeout_s = puback_timeout_s
        self.keepalive = keepalive
        self.last_error: str | None = None
        self._connected = threading.Event()
        self._started = False
        self._lock = threading.Lock()
        self._client = make_client(self.address, client_id, persistent=False)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self._client.connect_async(self.address.host, self.address.port, self.keepalive)
            self._client.loop_start()

    def wait_connected(self, timeout_s: float) -> bool:
        self.start()
        return self._connected.wait(timeout_s)

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK; PublishError otherwise."""
        if not self.wait_connected(self.connect_wait_s):
            # Not handed to paho: it would keep the message and send it whenever it
            # reconnects, behind the back of a caller who was told it failed.
            raise PublishError(f"not connected to the MQTT broker at {self._where}"
                               + (f": {self.last_error}" if self.last_error else ""))
        info = self._client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(self.puback_timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise PublishError(f"publishing to {topic} failed: {exc}") from None
        if not info.is_published():
            raise PublishError(f"no PUBACK for {topic} from {self._where} within "
                               f"{self.puback_timeout_s:g} s")

    def close(self) -> None:
        with self._lock:
            if not self._started:
                return
            self._started = False
            self._client.disconnect()
            self._client.loop_stop()
            self._connected.clear()

    @property
    def _where(self) -> str:
        return f"{self.address.host}:{self.address.port}"

    # --- paho callbacks (network thread) ----------------------------------------------------

    def _on_connect(self, _client: mqtt.Client, _userdata: object, _flags: mqtt.ConnectFlags,
                    reason: mqtt.ReasonCode, _props: object) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.warning("publisher connect refused", extra={
                "event": "publisher_refused", "client_id": self.client_id,
                "reason": str(reason)})
            return
        self.last_error = None
        self._connected.set()

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        self.last_error = "cannot reach the broker"

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object,
                       _flags: mqtt.DisconnectFlags, reason: mqtt.ReasonCode,
                       _props: object) -> None:
        self._connected.clear()
        if reason.is_failure:
            self.last_error = f"disconnected: {reason}"
