"""The asyncio MQTT client: against the real broker for delivery, retain and the Last Will;
against a scripted broker (built on the same codec) for what a real one will not do on cue:
withhold PUBACKs, refuse a connection, stay silent."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from iotmeter_tui.backend.broker import free_port
from iotmeter_tui.backend.mqtt import codec
from iotmeter_tui.backend.mqtt.address import BrokerAddress
from iotmeter_tui.backend.mqtt.client import (
    MqttClient,
    MqttConnectionError,
    MqttConnectionRefused,
    MqttNotConnected,
)
from iotmeter_tui.backend.mqtt.codec import Publish, Will


def test_broker_address_parsing() -> None:
    a = BrokerAddress.parse("mqtt://user:p%40ss@broker:1884")
    assert (a.host, a.port, a.username, a.password, a.tls) == ("broker", 1884, "user", "p@ss",
                                                                False)
    assert BrokerAddress.parse("mqtts://h").port == 8883
    assert BrokerAddress.parse("mqtt://h").url == "mqtt://h:1883"
    for bad in ("http://h", "mqtt://", "mqtt://h:x"):
        with pytest.raises(ValueError):
            BrokerAddress.parse(bad)


class PahoWatcher:
    def __init__(self, url: str, topic: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.messages: list[mqtt.MQTTMessage] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        self.client.connect(host, int(port))
        self.client.subscribe(topic, 1)
        self.client.loop_start()
        assert self.ready.wait(10)

    def wait(self, count: int, timeout: float = 10.0) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.messages

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_publish_subscribe_retain_and_will_through_mosquitto(mosquitto: Any) -> None:
    watcher = PahoWatcher(mosquitto.url, "clienttest/#")
    received: list[Publish] = []

    async def scenario() -> None:
        address = BrokerAddress.parse(mosquitto.url)
        listener = MqttClient(address, "clienttest-listener", on_message=received.append)
        await listener.connect()
        assert await listener.subscribe([("clienttest/in", 1)]) == (1,)
        client = MqttClient(address, "clienttest-pub")
        await client.connect(will=Will("clienttest/will", b"gone", 1, False))
        for i in range(500):
            client.publish("clienttest/in", b"%d" % i, 1)
        client.publish("clienttest/retained", b"kept", 1, retain=True)
        assert await client.drain(10)
        assert client.inflight_count == 0
        client.abort()  # no DISCONNECT: the broker must publish the will
        await client.wait_closed()
        assert not client.connected
        with pytest.raises(MqttNotConnected):
            client.publish("clienttest/in", b"late", 1)
        polite = MqttClient(address, "clienttest-polite")
        await polite.connect(will=Will("clienttest/will", b"never", 1, False))
        await polite.disconnect()
        await asyncio.sleep(0.3)
        await listener.disconnect()

    asyncio.run(scenario())
    assert [p.payload for p in received] == [b"%d" % i for i in range(500)]
    messages = watcher.wait(502)
    watcher.close()
    wills = [m.payload for m in messages if m.topic == "clienttest/will"]
    assert wills == [b"gone"]
    assert [m.payload for m in messages if m.topic == "clienttest/retained"] == [b"kept"]


def test_connect_to_a_closed_port_is_a_connection_error() -> None:
    async def scenario() -> None:
        client = MqttClient(BrokerAddress("127.0.0.1", free_port()), "nobody")
        with pytest.raises(MqttConnectionError):
            await client.connect()
        assert not client.connected

    asyncio.run(scenario())


class ScriptedBroker:
    """A broker that records packets and answers as the test says."""

    def __init__(self, *, connack: int = 0, puback: bool = True, pingresp: bool = True) -> None:
        self.connack = connack
        self.puback = puback
        self.pingresp = pingresp
        self.received: list[list[codec.Packet]] = []  # per connection
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = codec.Decoder()
        packets: list[codec.Packet] = []
        self.received.append(packets)
        self.writers.append(writer)
        while data := await reader.read(65536):
            for packet in decoder.feed(data):
                packets.append(packet)
                if isinstance(packet, codec.Connect):
                    writer.write(codec.encode_connack(self.connack))
                elif isinstance(packet, Publish) and packet.qos and self.puback:
                    assert packet.packet_id is not None
                    writer.write(codec.encode_puback(packet.packet_id))
                elif isinstance(packet, codec.PingReq) and self.pingresp:
                    writer.write(codec.encode_pingresp())
        writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[BrokerAddress]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield BrokerAddress("127.0.0.1", self.port)
            for writer in self.writers:
                writer.close()


def test_unacknowledged_publishes_are_resent_with_dup_after_reconnect() -> None:
    broker = ScriptedBroker(puback=False)

    async def scenario() -> None:
        async with broker.running() as address:
            client = MqttClient(address, "resender", clean_session=False)
            await client.connect()
            for i in range(3):
                client.publish("t", b"%d" % i, 1)
            await asyncio.sleep(0.1)
            assert client.inflight_count == 3
            broker.writers[0].close()  # the broker goes away; the client keeps its inflight
            await client.wait_closed()
            broker.puback = True
            await client.connect()
            assert await client.drain(5)
            await client.disconnect()

    asyncio.run(scenario())
    first = [p for p in broker.received[0] if isinstance(p, Publish)]
    second = [p for p in broker.received[1] if isinstance(p, Publish)]
    assert [(p.payload, p.dup) for p in first] == [(b"0", False), (b"1", False), (b"2", False)]
    assert [(p.payload, p.dup, p.packet_id) for p in second] == \
        [(p.payload, True, p.packet_id) for p in first]
    connect = broker.received[1][0]
    assert isinstance(connect, codec.Connect) and connect.clean_session is False


def test_refused_connection_says_why() -> None:
    broker = ScriptedBroker(connack=5)

    async def scenario() -> None:
        async with broker.running() as address:
            client = MqttClient(address, "refused")
            with pytest.raises(MqttConnectionRefused, match="not authorized"):
                await client.connect()
            assert not client.connected

    asyncio.run(scenario())


def test_keepalive_pings_when_idle_and_drops_a_silent_broker() -> None:
    broker = ScriptedBroker(pingresp=False)

    async def scenario() -> None:
        async with broker.running() as address:
            client = MqttClient(address, "pinger", keepalive=1)
            await client.connect()
            async with asyncio.timeout(5):
                await client.wait_closed()  # no PINGRESP: the client gives up on the link

    asyncio.run(scenario())
    assert any(isinstance(p, codec.PingReq) for p in broker.received[0])
