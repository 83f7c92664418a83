"""The broker as the collector sees it: mosquitto's `$SYS/broker/...` topics, read on a light side
connection of its own (clean session, QoS 0, client id `{client_id}-sys`), so the intake session
and its ack-after-fsync path never see them. The latest value of each topic is exported as a
gauge or, for the broker's own cumulative counts, a counter."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from iotmeter_tui.backend.mqtt.address import BrokerAddress

log = logging.getLogger(__name__)

# $SYS topic -> (metric name, type, help). Topics mosquitto 2.0 publishes every sys_interval.
SYS_TOPICS: Final[dict[str, tuple[str, str, str]]] = {
    "$SYS/broker/clients/connected": (
        "iotmeter_broker_clients_connected", "gauge", "Clients connected to the broker"),
    "$SYS/broker/messages/received": (
        "iotmeter_broker_messages_received", "counter",
        "MQTT packets the broker received (all types), since it started"),
    "$SYS/broker/messages/sent": (
        "iotmeter_broker_messages_sent", "counter",
        "MQTT packets the broker sent (all types), since it started"),
    "$SYS/broker/publish/messages/dropped": (
        "iotmeter_broker_publish_dropped", "counter",
        "PUBLISH messages the broker dropped (queue limits), since it started"),
    "$SYS/broker/store/messages/count": (
        "iotmeter_broker_messages_stored", "gauge",
        "Messages held by the broker (retained and queued for sessions)"),
    "$SYS/broker/subscriptions/count": (
        "iotmeter_broker_subscriptions", "gauge", "Subscriptions on the broker"),
    "$SYS/broker/bytes/received": (
        "iotmeter_broker_received_bytes", "counter", "Bytes the broker received, since it started"),
    "$SYS/broker/bytes/sent": (
        "iotmeter_broker_sent_bytes", "counter", "Bytes the broker sent, since it started"),
}
AGE_METRIC: Final = "iotmeter_broker_sys_age_seconds"


def parse_sys_value(payload: bytes) -> float | None:
    """A $SYS payload is a decimal number as text; anything else is ignored (the broker is
    trusted more than a device, but a proxy or a foreign broker might send anything)."""
    if len(payload) > 32:
        return None
    try:
        value = float(payload.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


class BrokerSysCollector:
    """Holds the latest $SYS values and exports them; `update` is called by the side client."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._values: dict[str, float] = {}
        self._updated = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def update(self, topic: str, payload: bytes) -> None:
        if topic not in SYS_TOPICS:
            return
        value = parse_sys_value(payload)
        if value is None:
            return
        with self._lock:
            self._values[topic] = value
            self._updated = time.time()

    def describe(self) -> Iterator[Metric]:
        # Described up front so the registry (and the docs test) know every name before the
        # broker has published anything.
        for name, kind, doc in SYS_TOPICS.values():
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, doc)
        yield GaugeMetricFamily(AGE_METRIC, "Seconds since the broker's last $SYS update")

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            values, updated = dict(self._values), self._updated
        # Families without a sample until the broker has published one (never a made-up 0).
        for topic, (name, kind, doc) in SYS_TOPICS.items():
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, doc)
            if topic in values:
                family.add_metric([], values[topic])
            yield family
        age = GaugeMetricFamily(AGE_METRIC, "Seconds since the broker's last $SYS update")
        if updated:
            age.add_metric([], max(0.0, time.time() - updated))
        yield age


def broker_sys_url(sys_url: str | None, mqtt_url: str, dispatch_url: str | None) -> str | None:
    """Where to read $SYS: its own URL when configured, else the collector's, unless the
    dispatcher has a user of its own. That says the broker ties client ids to users (the
    shipped `use_username_as_clientid`, dynamic security), where a second connection under the
    collector's user would take the intake's session: the side connection needs its own user."""
    if sys_url is not None:
        return sys_url
    return mqtt_url if dispatch_url is None else None


class BrokerSysMonitor:
    """The side connection. Failures are logged once and retried by paho; the collector's
    own work never waits for it."""

    def __init__(self, mqtt_url: str, client_id: str, sink: BrokerSysCollector) -> None:
        from iotmeter_tui.backend.mqtt.paho_session import make_client

        self.address = BrokerAddress.parse(mqtt_url)
        self.sink = sink
        self._client = make_client(self.address, client_id, persistent=False)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    def start(self) -> None:
        self._client.connect_async(self.address.host, self.address.port, 30)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any,
                    _properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("broker $SYS connection refused", extra={
                "event": "broker_sys_refused", "reason": str(reason)})
            return
        client.subscribe([(topic, 0) for topic in SYS_TOPICS])

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        self.sink.update(message.topic, message.payload)
