"""A paho client configured the iotmeter way, for the few places that publish from a thread
(the dashboard's command publisher, test devices): MQTT 3.1.1, reconnect back-off, TLS for
mqtts://. The collector's intake and the simulator use `mqtt.codec` instead, for speed."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from iotmeter_tui.backend.mqtt.address import BrokerAddress


def make_client(address: BrokerAddress, client_id: str, *, persistent: bool) -> mqtt.Client:
    """A paho client for `address`, MQTT 3.1.1, with reconnect back-off."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=mqtt.MQTTv311,
    )
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    context = address.ssl_context()
    if context is not None:
        client.tls_set_context(context)
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    return client
