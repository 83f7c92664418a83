"""The collector's MQTT intake against a real broker: what it acknowledges is gone from the
session, what it does not is sent again, and a quiet connection stays up."""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time

import pytest

from iotmeter_tui.backend.collector.intake import Delivery, MqttIntake, _Dropped
from iotmeter_tui.backend.mqtt import codec
from iotmeter_tui.backend.mqtt.address import BrokerAddress
from testsupport import MosquittoServer
from testsupport.fleet import Publisher, telemetry, wait_for


def _take(inbox: queue.SimpleQueue[Delivery], count: int,
          timeout_s: float = 15.0) -> list[Delivery]:
    """Deliveries until they hold `count` messages."""
    deliveries: list[Delivery] = []
    deadline = time.monotonic() + timeout_s
    while sum(len(d.publishes) for d in deliveries) < count:
        deliveries.append(inbox.get(timeout=max(0.01, deadline - time.monotonic())))
    return deliveries


def _seqs(deliveries: list[Delivery]) -> list[int]:
    return sorted(int(p.payload.split(b'"seq":')[1].split(b",")[0])
                  for d in deliveries for p in d.publishes)


def _intake(broker: MosquittoServer, inbox: queue.SimpleQueue[Delivery] | queue.Queue[Delivery],
            **kwargs: int) -> MqttIntake:
    intake = MqttIntake(broker.url, "intake-test", inbox, **kwargs)
    intake.start()
    assert intake.connected.wait(15), intake.last_error
    return intake


def _publish(broker: MosquittoServer, seqs: range) -> None:
    publisher = Publisher(broker.url, "intake-test-device")
    try:
        publisher.publish([telemetry("dc-0001", 1, s) for s in seqs])
    finally:
        publisher.close()


def test_acknowledged_messages_are_not_sent_again(private_mosquitto: MosquittoServer) -> None:
    inbox: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
    intake = _intake(private_mosquitto, inbox)
    _publish(private_mosquitto, range(2000))
    deliveries = _take(inbox, 2000)
    # Many messages per read: the point of this intake.
    assert len(deliveries) < 2000
    assert _seqs(deliveries) == list(range(2000))
    intake.ack(deliveries)
    intake.stop()

    again = _intake(private_mosquitto, inbox)
    try:
        _publish(private_mosquitto, range(2000, 2010))
        assert _seqs(_take(inbox, 10)) == list(range(2000, 2010))
        time.sleep(0.5)
        assert inbox.empty()
    finally:
        again.stop()


def test_unacknowledged_messages_come_back_after_a_reconnect(
        private_mosquitto: MosquittoServer) -> None:
    inbox: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
    intake = _intake(private_mosquitto, inbox)
    _publish(private_mosquitto, range(300))
    deliveries = _take(inbox, 300)
    acked = deliveries[:1]
    intake.ack(acked)
    intake.stop()

    again = _intake(private_mosquitto, inbox)
    try:
        redelivered = _take(inbox, 300 - sum(len(d.publishes) for d in acked))
        assert _seqs(redelivered) == _seqs(deliveries)[len(_seqs(acked)):]
        assert all(p.dup for d in redelivered for p in d.publishes)
    finally:
        again.stop()


def test_after_a_broker_restart_unacknowledged_messages_come_again(
        private_mosquitto: MosquittoServer) -> None:
    """Deliveries of a dropped connection are not acknowledged on the new one (their packet
    ids belonged to the old); the broker sends them again, and acking those copies clears
    them for good."""
    inbox: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
    intake = _intake(private_mosquitto, inbox)
    try:
        _publish(private_mosquitto, range(50))
        first = _take(inbox, 50)
        private_mosquitto.restart()
        wait_for(lambda: intake.connected.is_set(), timeout_s=30, what="intake reconnected")
        intake.ack(first)  # of the old connection: not sent
        second = _take(inbox, 50)
        assert _seqs(second) == list(range(50))
        intake.ack(second)
        time.sleep(0.5)
        assert inbox.empty()
    finally:
        intake.stop()


def test_an_idle_connection_is_kept_alive(private_mosquitto: MosquittoServer) -> None:
    inbox: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
    # The broker drops a client silent for 1.5 keepalives (3 s): pings must keep it.
    intake = _intake(private_mosquitto, inbox, keepalive=2)
    try:
        time.sleep(6)
        assert intake.connected.is_set()
        _publish(private_mosquitto, range(5))
        assert _seqs(_take(inbox, 5)) == list(range(5))
        assert intake.last_error is None
    finally:
        intake.stop()


def test_a_held_pipeline_bounds_the_queue_under_a_qos0_flood(
        private_mosquitto: MosquittoServer) -> None:
    """Issue 15 item 7: the intake queue was unbounded, so a QoS 0 flood (which no in-flight
    window holds back) while the spool was full or slow grew it until memory ran out. With a
    bounded queue the intake stops reading the socket: the queue never holds more than its
    bound, the connection stays up (pings), and every QoS 1 message sent meanwhile arrives
    once the pipeline takes again."""
    bound = 4
    inbox: queue.Queue[Delivery] = queue.Queue(maxsize=bound)
    intake = _intake(private_mosquitto, inbox, keepalive=2)
    flooder = Publisher(private_mosquitto.url, "flooder")
    try:
        flooder.publish([telemetry("dc-0000", 0, s) for s in range(30_000)], qos=0)
        _publish(private_mosquitto, range(200))  # QoS 1, boot 1, queued by the broker
        most = 0
        deadline = time.monotonic() + 6  # three keepalives: the broker would have dropped us
        while time.monotonic() < deadline:
            most = max(most, inbox.qsize())
            time.sleep(0.05)
        assert most == bound  # it filled, and went no further
        assert intake.connected.is_set() and intake.session.connection == 1
        taken: list[Delivery] = []
        qos1: set[int] = set()
        end = time.monotonic() + 60
        while len(qos1) < 200 and time.monotonic() < end:
            with contextlib.suppress(queue.Empty):
                delivery = inbox.get(timeout=0.5)
                taken.append(delivery)
                intake.ack([delivery])
                qos1 |= {int(p.payload.split(b'"seq":')[1].split(b",")[0])
                         for p in delivery.publishes if p.qos == 1}
        assert qos1 == set(range(200))  # nothing the broker took for us is lost
        flood = [p.payload for d in taken for p in d.publishes if p.qos == 0]
        assert len(flood) == len(set(flood))  # and nothing is handed over twice
        assert intake.session.connection == 1
    finally:
        flooder.close()
        intake.stop()


def test_an_unreachable_broker_is_reported_and_retried(
        private_mosquitto: MosquittoServer) -> None:
    inbox: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
    private_mosquitto.stop()
    intake = MqttIntake(private_mosquitto.url, "intake-test", inbox, max_backoff_s=1)
    intake.start()
    try:
        wait_for(lambda: intake.last_error is not None, timeout_s=10, what="an error")
        assert "cannot reach the broker" in (intake.last_error or "")
        assert not intake.connected.is_set()
        private_mosquitto.start()
        assert intake.connected.wait(15)
    finally:
        intake.stop()


def test_a_connection_that_only_sends_acks_still_checks_the_broker_is_there() -> None:
    """While a backlog is acknowledged nothing may come in: the intake pings when it has
    heard nothing for half the keepalive, and gives up only on an unanswered ping. (The rule
    is the session's, tests/mqtt/test_mqtt_session.py; this is the intake acting on it.)"""
    ours, broker = socket.socketpair()
    intake = MqttIntake("mqtt://127.0.0.1:1", "keepalive-test", queue.SimpleQueue(),
                        keepalive=30)
    intake._sock = ours
    try:
        now = 1000.0
        intake.session.connect(now - 15)
        intake.session.receive(codec.encode_connack(), now - 15)  # last heard 15 s ago
        intake.session.sent(now - 1)  # acks went out a second ago
        intake._keep_alive(now - 1)
        broker.settimeout(0.2)
        with pytest.raises(TimeoutError):
            broker.recv(16)  # heard from 14 s ago: no ping yet
        intake._keep_alive(now)
        assert broker.recv(16) == b"\xc0\x00"  # PINGREQ
        intake._keep_alive(now + 20)  # unanswered, within keepalive
        with pytest.raises(TimeoutError):
            broker.recv(16)  # and no second ping meanwhile
        with pytest.raises(_Dropped, match="did not answer a ping"):
            intake._keep_alive(now + 31)
    finally:
        ours.close()
        broker.close()


def test_a_device_publishing_u0000_in_a_topic_never_disturbs_the_intake(
        private_mosquitto: MosquittoServer) -> None:
    """MQTT forbids U+0000 in strings: mosquitto disconnects the sender, so the intake sees
    neither the packet nor any hiccup, and the device's next good message arrives."""
    inbox: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
    intake = _intake(private_mosquitto, inbox)
    address = BrokerAddress.parse(private_mosquitto.url)
    device = socket.create_connection((address.host, address.port))
    try:
        device.sendall(codec.encode_connect("dc-nul", username=address.username,
                                            password=address.password))
        device.settimeout(5)
        assert codec.Decoder().feed(device.recv(64)) == [codec.ConnAck(False, 0)]
        topic = b"iot/dc-0001\x00/telemetry"
        body = len(topic).to_bytes(2, "big") + topic + b"\x00\x01" + telemetry("dc-0001", 1, 0)[1]
        device.sendall(b"\x32" + codec.encode_remaining_length(len(body)) + body)
        assert device.recv(64) == b""  # no PUBACK: the broker closed the connection
        _publish(private_mosquitto, range(1, 3))
        assert _seqs(_take(inbox, 2)) == [1, 2]
        assert intake.session.connection == 1 and intake.last_error is None
    finally:
        device.close()
        intake.stop()


class _ForwardingBroker:
    """A broker that does not check strings: it forwards a PUBLISH whose topic holds U+0000
    on the first connection, and a good one on the next."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        bad_topic = b"iot/dc-0001\x00/telemetry"
        bad = (bad_topic, b"\x00\x01{}")
        good = (b"iot/dc-0001/telemetry", b"\x00\x02" + telemetry("dc-0001", 1, 5)[1])
        for topic, rest in (bad, good):
            conn, _ = self.listener.accept()
            self.connections += 1
            with conn:
                decoder = codec.Decoder()
                while not any(isinstance(p, codec.Connect) for p in decoder.feed(conn.recv(512))):
                    pass
                body = len(topic).to_bytes(2, "big") + topic + rest
                conn.sendall(codec.encode_connack(0, session_present=True) + b"\x32"
                             + codec.encode_remaining_length(len(body)) + body)
                with contextlib.suppress(OSError):
                    while conn.recv(512):  # until the intake hangs up
                        pass

    def close(self) -> None:
        self.listener.close()


def test_a_broker_forwarding_u0000_costs_a_reconnect_with_the_reason_not_the_intake(
        caplog: pytest.LogCaptureFixture) -> None:
    """Were a broker to forward a forbidden string, the intake drops that connection (as MQTT
    requires), says why, and carries on with a new one: its thread does not die."""
    caplog.set_level(logging.WARNING, logger="iotmeter_tui.backend.collector.intake")
    broker = _ForwardingBroker()
    inbox: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
    intake = MqttIntake(f"mqtt://127.0.0.1:{broker.port}", "nul-test", inbox, max_backoff_s=1)
    intake.start()
    try:
        wait_for(lambda: broker.connections == 2, timeout_s=15, what="a reconnect")
        delivery = inbox.get(timeout=15)
        assert [p.topic for p in delivery.publishes] == ["iot/dc-0001/telemetry"]
        assert delivery.connection == 2
        assert inbox.empty()  # nothing of the first connection was handed over
        reasons = [getattr(r, "reason", None) for r in caplog.records
                   if getattr(r, "event", None) == "mqtt_disconnected"]
        assert reasons == ["protocol error from broker: PUBLISH topic contains U+0000, which "
                           "MQTT strings must not"]
        assert intake.connected.is_set() and intake._thread.is_alive()
    finally:
        intake.stop()
        broker.close()
