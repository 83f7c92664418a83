"""MQTT intake: a persistent QoS 1 session whose network thread only hands messages on.

paho runs the socket in its own thread; `on_message` just timestamps and queues the message,
so decoding and storage never stall the connection. Acknowledgements are manual: the pipeline
calls `ack()` once a message is durable in the spool (CONTRACT section 5).
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from iotmeter_tui.backend import protocol

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Arrival:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received_ms: int


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
        )


def make_client(address: BrokerAddress, client_id: str, *, persistent: bool,
                manual_ack: bool = False) -> mqtt.Client:
    """A paho client for `address`, MQTT 3.1.1, with reconnect back-off."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    return client


class MqttIntake:
    """Subscribes the collector's persistent session and feeds `inbox`."""

    def __init__(
        self,
        url: str,
        client_id: str,
        inbox: queue.SimpleQueue[Arrival],
        *,
        share_group: str | None = None,
        keepalive: int = 30,
    ) -> None:
        self.address = BrokerAddress.parse(url)
        self.inbox = inbox
        self.share_group = share_group
        self.keepalive = keepalive
        self.connected = threading.Event()
        self.last_error: str | None = None
        self._client = make_client(self.address, client_id, persistent=True, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self) -> None:
        self._client.connect_async(self.address.host, self.address.port, self.keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly: unacknowledged messages stay with the broker's session."""
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def ack(self, arrivals: list[Arrival]) -> None:
        for arrival in arrivals:
            if arrival.qos > 0:
                self._client.ack(arrival.mid, arrival.qos)

    # --- paho callbacks (network thread) ----------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: object, flags: mqtt.ConnectFlags,
                    reason: mqtt.ReasonCode, _props: object) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.warning("mqtt connect refused", extra={"event": "mqtt_refused",
                                                       "reason": str(reason)})
            return
        self.last_error = None
        # With a session present the broker kept our subscriptions; subscribing again would
        # make it resend every retained status message.
        log.info("mqtt connected", extra={"event": "mqtt_connected",
                                          "session_present": flags.session_present})
        if flags.session_present:
            self.connected.set()
        else:
            # "connected" means ready to receive: only once the broker confirmed the
            # subscription (what is published before that has no session to wait in).
            client.subscribe([(f, 1) for f in protocol.collector_subscriptions(self.share_group)])

    def _on_subscribe(self, _client: mqtt.Client, _userdata: object, _mid: int,
                      reasons: list[mqtt.ReasonCode], _props: object) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self.last_error = f"broker refused the subscription: {', '.join(failed)}"
            log.error("mqtt subscription refused", extra={"event": "mqtt_subscribe_refused",
                                                          "reasons": failed})
            return
        self.connected.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object,
                       _flags: mqtt.DisconnectFlags, reason: mqtt.ReasonCode,
                       _props: object) -> None:
        self.connected.clear()
        if reason.is_failure:
            self.last_error = f"disconnected from broker: {reason}"
            log.warning("mqtt disconnected", extra={"event": "mqtt_disconnected",
                                                    "reason": str(reason)})

    def _on_message(self, _client: mqtt.Client, _userdata: object,
                    msg: mqtt.MQTTMessage) -> None:
        # msg.topic would raise on a topic that is not UTF-8; decode leniently and let the
        # protocol reject it as bad_topic.
        topic = msg._topic.decode("utf-8", "replace")
        self.inbox.put(Arrival(topic, bytes(msg.payload), msg.mid, msg.qos,
                               int(time.time() * 1000)))
