"""The collector's MQTT intake against a real broker: what it acknowledges is gone from the
session, what it does not is sent again, and a quiet connection stays up."""

from __future__ import annotations

import contextlib
import queue
import socket
import time

import pytest

from iotmeter_tui.backend.collector.intake import Delivery, MqttIntake, _Dropped
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
        assert intake.connected.is_set() and intake._connection == 1
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
        assert intake._connection == 1
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
    heard nothing for half the keepalive, and gives up only on an unanswered ping."""
    ours, broker = socket.socketpair()
    intake = MqttIntake("mqtt://127.0.0.1:1", "keepalive-test", queue.SimpleQueue(),
                        keepalive=30)
    intake._sock = ours
    try:
        now = 1000.0
        intake._last_sent = now - 1  # acks went out a second ago
        intake._keep_alive(now, last_heard=now - 14)
        broker.settimeout(0.2)
        with pytest.raises(TimeoutError):
            broker.recv(16)  # heard from 14 s ago: no ping yet
        intake._keep_alive(now, last_heard=now - 15)
        assert broker.recv(16) == b"\xc0\x00"  # PINGREQ
        intake._keep_alive(now + 20, last_heard=now - 15)  # unanswered, within keepalive
        with pytest.raises(TimeoutError):
            broker.recv(16)  # and no second ping meanwhile
        with pytest.raises(_Dropped, match="did not answer a ping"):
            intake._keep_alive(now + 31, last_heard=now - 15)
    finally:
        ours.close()
        broker.close()
