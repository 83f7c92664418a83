"""MQTT intake: the collector's persistent QoS 1 session, on one blocking socket and one thread.

Why not paho: its receive path costs about 60-70 µs of CPU per message here (one packet per
read, a callback and a lock per message, one PUBACK write per message), which alone would use
most of two cores at 20,000 msg/s (docs/decisions/0001-own-mqtt-client.md). This intake
reads up to 256 KiB per system call, parses every packet in it in one pass and hands the whole
read to the pipeline as one `Delivery`; the pipeline acknowledges a whole turn with one
`sendall` of concatenated PUBACKs, once the turn is durable in the spool (the delivery
guarantee). The protocol's rules (handshake, subscription, keep-alive, acknowledgements) are
the MQTT session's (`mqtt/session.py`, shared with the simulator's asyncio client); this module
is the socket, the thread and the hand-over.

The session is persistent (clean session off, fixed client id), so whatever is not acknowledged
when the connection drops is sent again by the broker after the reconnect, and the pipeline's
duplicate detection recognises what it had already spooled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.mqtt.address import BrokerAddress
from iotmeter_tui.backend.mqtt.codec import MqttProtocolError, OversizedPublish, Publish
from iotmeter_tui.backend.mqtt.session import (
    Connected,
    Event,
    MqttConnectionError,
    MqttConnectionRefused,
    MqttNotConnected,
    Session,
    Subscribed,
)

log = logging.getLogger(__name__)

READ_SIZE = 256 << 10  # one read takes about a thousand telemetry messages
CONNECT_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 30.0  # a broker that takes no bytes for this long is gone
# Reads waiting for the pipeline, at most (service.py sizes the queue): at 256 KiB a read,
# about 16 MiB of payloads. When they are all waiting, the intake stops reading the socket, so
# TCP holds the broker back: QoS 1 stays in the broker's session, QoS 0 is the broker's to
# drop, and the collector's memory stays bounded however fast devices publish.
INBOX_MAX_READS = 64
_PUT_WAIT_S = 1.0  # how often a blocked intake checks for stop() and keeps the connection up


@dataclass(slots=True)
class Delivery:
    """The PUBLISH packets of one read off the socket, all received at `received_ms`."""

    publishes: list[Publish]
    received_ms: int
    connection: int  # which connection brought them: acks go back only on that one
    # PUBLISH packets over protocol.MAX_PACKET_BYTES: their bytes were skipped as they arrived
    # (a 256 MB message would otherwise be buffered whole), only their head is here. They are
    # spooled as too_large rejections and acknowledged like any rejected message, once that
    # record is durable: not acknowledging would leave them with the broker, which would hand
    # them back after every reconnect, for ever, each holding an in-flight slot.
    oversized: list[OversizedPublish] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.publishes) + len(self.oversized)


Inbox = queue.Queue[Delivery] | queue.SimpleQueue[Delivery]


class _Dropped(Exception):
    """The connection is gone (or never came up); reconnect after a back-off."""


class MqttIntake:
    """Subscribes the collector's persistent session and feeds `inbox` with deliveries."""

    def __init__(
        self,
        url: str,
        client_id: str,
        inbox: Inbox,
        *,
        share_group: str | None = None,
        keepalive: int = 30,
        max_backoff_s: float = 10.0,
        subscription_file: Path | None = None,
        retiring: bool = False,
    ) -> None:
        self.address = BrokerAddress.parse(url)
        self.client_id = client_id
        self.inbox = inbox
        self.share_group = share_group
        # The filters this session should hold: none for a retiring worker, which only takes
        # what its session still queues. `subscription_file` records what the broker's
        # session holds, so a session kept across a change of form (plain <-> $share, or
        # retired) is brought to the new one instead of keeping both.
        self.filters = [] if retiring else protocol.collector_subscriptions(share_group)
        self.subscription_file = subscription_file
        self._retired_forms = (protocol.collector_subscriptions(None)
                               + protocol.collector_subscriptions(share_group)) if retiring else []
        self._to_unsubscribe: list[str] = []
        self.max_backoff_s = max_backoff_s
        self.session = Session(
            client_id, keepalive=keepalive, clean_session=False,
            username=self.address.username, password=self.address.password,
            handshake_timeout_s=CONNECT_TIMEOUT_S,
            # A PUBLISH larger than a valid message can be is skipped as it streams in.
            publish_cap=protocol.MAX_PACKET_BYTES, prefix_bytes=protocol.TOO_LARGE_PREFIX_BYTES,
        )
        self.connected = threading.Event()  # subscribed and receiving
        self.last_error: str | None = None
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="iotmeter-intake", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop_reading(self) -> None:
        """Take nothing more from the broker; acks for what was taken can still be sent."""
        self._stopping.set()
        self._thread.join(5)

    def disconnect(self) -> None:
        """Say goodbye cleanly: unacknowledged messages stay with the broker's session."""
        self.stop_reading()
        self._close(self.session.disconnect())

    def stop(self) -> None:
        self.disconnect()

    def ack(self, deliveries: list[Delivery]) -> None:
        """Acknowledge every QoS 1 message of `deliveries` in one write. Messages from an
        earlier connection are not acknowledged here: the broker has sent them again on this
        one (with the same session), and they are acknowledged as the duplicates they are."""
        current = self.session.connection
        ids = [p.packet_id for d in deliveries if d.connection == current
               for p in d.publishes if p.packet_id is not None]
        ids += [o.packet_id for d in deliveries if d.oversized and d.connection == current
                for o in d.oversized if o.packet_id is not None]
        acks = self.session.pubacks(ids)
        if acks:
            # On failure the reading thread sees the broken connection and reconnects.
            with contextlib.suppress(OSError):
                self._send(acks, connection=current)

    # --- the reading thread -----------------------------------------------------------------

    def _run(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                self._session()
                backoff = 1.0
            except _Dropped as exc:
                self.connected.clear()
                self.session.connection_lost()
                self._close()
                if self._stopping.is_set():
                    return
                self.last_error = str(exc)
                log.warning("mqtt connection lost", extra={"event": "mqtt_disconnected",
                                                           "reason": str(exc)})
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    def _session(self) -> None:
        session = self.session
        # The new connection's number before its socket: from here on, acks of deliveries
        # of the last connection are not sent (their packet ids were that connection's).
        hello = session.connect(time.monotonic())
        connection = session.connection
        sock = self._open()
        self._send_or_drop(hello)
        while not self._stopping.is_set():
            try:
                # Wait at most a second, so the thread notices stop() and pings when idle.
                # (TLS may hold decrypted bytes the socket no longer shows as readable.)
                pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
                ready = pending or select.select([sock], [], [], 1.0)[0]
                chunk = sock.recv(READ_SIZE) if ready else None
            except OSError as exc:
                raise _Dropped(f"disconnected from broker: {exc}") from None
            now = time.monotonic()
            if chunk is None:
                self._keep_alive(now)
                continue
            if not chunk:
                raise _Dropped("disconnected from broker: connection closed")
            try:
                inbound = session.receive(chunk, now)
            except MqttConnectionRefused as exc:
                log.warning("mqtt connect refused", extra={"event": "mqtt_refused",
                                                           "reason": str(exc)})
                raise _Dropped(str(exc)) from None
            except (MqttProtocolError, MqttNotConnected) as exc:
                # A broker never forwards what MQTT forbids (a non-UTF-8 topic, say): the
                # stream is out of step, so start over on a new connection.
                raise _Dropped(f"protocol error from broker: {exc}") from None
            if inbound.publishes or inbound.oversized:
                self._hand_over(Delivery(inbound.publishes, int(time.time() * 1000),
                                         connection, inbound.oversized))
            if inbound.events:
                self._on_events(inbound.events, now)
            self._keep_alive(now)

    def _hand_over(self, delivery: Delivery) -> None:
        """Queue a read for the pipeline; while its queue is full, read nothing more (the
        socket's buffers fill and TCP holds the broker back) but keep the connection alive:
        the broker drops a client it hears nothing from for 1.5 keepalives."""
        # Checked four times a keepalive at least: the ping is due after half of one, and the
        # broker's patience ends after one and a half.
        wait_s = min(_PUT_WAIT_S, self.session.keepalive / 4 or _PUT_WAIT_S)
        while True:
            try:
                self.inbox.put(delivery, timeout=wait_s)
                return
            except queue.Full:
                if self._stopping.is_set():
                    return  # unacknowledged: the broker sends it again on the next session
                ping = self.session.idle_ping(time.monotonic())
                if ping:
                    self._send_or_drop(ping)

    def _on_events(self, events: list[Event], now: float) -> None:
        for event in events:
            if isinstance(event, Connected):
                self.last_error = None
                log.info("mqtt connected", extra={"event": "mqtt_connected",
                                                  "session_present": event.session_present})
                self._reconcile(event.session_present, now)
            elif isinstance(event, Subscribed):
                if event.refused:
                    self.last_error = "broker refused the subscription"
                    log.error("mqtt subscription refused", extra={
                        "event": "mqtt_subscribe_refused", "codes": list(event.granted)})
                    raise _Dropped(self.last_error)
                self._after_subscribe(now)
            else:
                self._subscribed_as_wanted()

    def _reconcile(self, session_present: bool, now: float) -> None:
        """Bring the broker's session to `filters`. The new filters are subscribed before the
        old ones are dropped: meanwhile a message may come twice, to this same session, where
        the pipeline's duplicate window recognises it; the other order would lose what is
        published in between. A kept session already holding plain filters is not subscribed
        again: that would make the broker resend every retained status message. Shared
        filters are subscribed again on every connect: a broker gets no retained messages
        for them, and mosquitto restarted from its persistence file brings the session back
        without its shared subscriptions."""
        held = self._held() if session_present else []
        if held is None:  # a session from before subscriptions were recorded
            held = self._retired_forms or list(self.filters)
        add = [f for f in self.filters if f not in held or f.startswith("$share/")]
        self._to_unsubscribe = [f for f in held if f not in self.filters]
        if add:
            _packet_id, packet = self.session.subscribe([(f, 1) for f in add], now)
            self._send_or_drop(packet)
        else:
            self._after_subscribe(now)

    def _after_subscribe(self, now: float) -> None:
        if self._to_unsubscribe:
            log.info("mqtt subscription changed", extra={
                "event": "mqtt_unsubscribe", "filters": self._to_unsubscribe})
            _packet_id, packet = self.session.unsubscribe(self._to_unsubscribe, now)
            self._to_unsubscribe = []
            self._send_or_drop(packet)
        else:
            self._subscribed_as_wanted()

    def _subscribed_as_wanted(self) -> None:
        # Recorded once the broker confirmed; a crash before that only repeats the change.
        if self.subscription_file is not None and self._held() != self.filters:
            tmp = self.subscription_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.filters))
            os.replace(tmp, self.subscription_file)
        # "connected" means ready to receive as configured.
        self.connected.set()

    def _held(self) -> list[str] | None:
        """The filters the broker's session holds, as last recorded (None: not recorded)."""
        if self.subscription_file is None:
            return None
        try:
            held = json.loads(self.subscription_file.read_text())
        except (OSError, ValueError):
            return None
        return [f for f in held if isinstance(f, str)] if isinstance(held, list) else None

    def _keep_alive(self, now: float) -> None:
        """What the session says is due: a ping, or giving up on a silent broker."""
        try:
            ping = self.session.tick(now)
        except MqttConnectionError as exc:
            raise _Dropped(str(exc)) from None
        if ping:
            self._send_or_drop(ping)

    def _send_or_drop(self, data: bytes) -> None:
        try:
            self._send(data)
        except OSError as exc:
            raise _Dropped(f"disconnected from broker: {exc}") from None

    # --- the socket -------------------------------------------------------------------------

    def _open(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.address.host, self.address.port),
                                            timeout=CONNECT_TIMEOUT_S)
            context = self.address.ssl_context()
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=self.address.host)
        except OSError as exc:
            raise _Dropped(f"cannot reach the broker at {self.address.url}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(SEND_TIMEOUT_S)
        with self._send_lock:
            self._sock = sock
        return sock

    def _send(self, data: bytes, *, connection: int | None = None) -> None:
        """Send all of `data`; with `connection`, only while that connection is current
        (checked under the lock that a reconnect takes to swap the socket)."""
        with self._send_lock:
            if self._sock is None:
                raise OSError("not connected")
            if connection is not None and connection != self.session.connection:
                return
            try:
                self._sock.sendall(data)
            except OSError:
                # Part of a packet may have gone out: the stream is unusable. Shutting it
                # down makes the reading thread reconnect.
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
                raise
            self.session.sent(time.monotonic())

    def _close(self, goodbye: bytes = b"") -> None:
        with self._send_lock:
            sock, self._sock = self._sock, None
        self.connected.clear()
        if sock is None:
            return
        try:
            if goodbye:
                sock.sendall(goodbye)
        except OSError:
            pass
        finally:
            sock.close()
