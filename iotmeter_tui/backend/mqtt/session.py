"""The MQTT 3.1.1 client session without I/O, shared by the project's two own clients: the
asyncio client (`client.py`, the simulator's meters) and the collector's blocking intake
(`collector/intake.py`). Each of them keeps only its I/O: a socket, a thread or an event loop.

The session turns calls into the bytes to send and the bytes received into packets and events,
and it keeps the state between them: the CONNECT/CONNACK handshake, packet ids, QoS 1 publishes
waiting for their PUBACK (sent again, DUP set, after a reconnect), SUBSCRIBEs waiting for their
SUBACK, and the keep-alive clock. It never touches a socket and never reads a clock: the caller
writes what it is given and passes `now` (seconds on any monotonic clock) to every call that
depends on time, so the whole protocol logic is tested by feeding bytes and reading bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

from iotmeter_tui.backend.errors import IotmeterError
from iotmeter_tui.backend.mqtt import codec
from iotmeter_tui.backend.mqtt.codec import (
    CONNACK_CODES,
    SUBACK_FAILURE,
    ConnAck,
    MqttProtocolError,
    OversizedPublish,
    PubAck,
    Publish,
    SubAck,
    UnsubAck,
    Will,
)

DEFAULT_HANDSHAKE_TIMEOUT_S: Final = 10.0
_MAX_PACKET_ID: Final = 0xFFFF
_PINGREQ: Final = codec.encode_pingreq()
_PUBACK_WORD: Final = codec.PUBACK << 28 | 2 << 16  # fixed header of a PUBACK, its id below


class MqttError(IotmeterError):
    """Base of the MQTT session's errors."""


class MqttConnectionError(MqttError):
    """The broker could not be reached, or the connection dropped or stopped answering:
    reconnect after a back-off."""


class MqttConnectionRefused(MqttError):
    """The broker answered CONNACK with a refusal; `return_code` says why."""

    def __init__(self, return_code: int) -> None:
        reason = CONNACK_CODES.get(return_code, "unknown reason")
        super().__init__(f"broker refused the connection: {reason} (code {return_code})")
        self.return_code = return_code


class MqttSubscriptionRefused(MqttError):
    """The broker answered SUBACK with a failure for some of the filters."""

    def __init__(self, client_id: str, filters: Sequence[str]) -> None:
        super().__init__(f"{client_id}: broker refused the subscription to {list(filters)}")
        self.filters = tuple(filters)


class MqttNotConnected(MqttError):
    """publish() or subscribe() while the session has no accepted connection."""


class Connected(NamedTuple):
    """The broker accepted the CONNECT. `session_present`: it kept our session (and with it
    our subscriptions) from an earlier connection."""

    session_present: bool


class Subscribed(NamedTuple):
    """The SUBACK of a SUBSCRIBE: the QoS granted per filter, and the filters refused."""

    packet_id: int
    granted: tuple[int, ...]
    refused: tuple[str, ...]


class Unsubscribed(NamedTuple):
    """The UNSUBACK of an UNSUBSCRIBE: the broker no longer delivers on those filters."""

    packet_id: int


Event = Connected | Subscribed | Unsubscribed


class Inbound(NamedTuple):
    """What one read of received bytes brought."""

    publishes: list[Publish]  # in arrival order; QoS 1 ones wait for puback()/pubacks()
    oversized: list[OversizedPublish]  # over the decoder's publish cap: only their head
    acked: list[int]  # ids of our QoS 1 publishes the broker has now acknowledged
    events: list[Event]
    reply: bytes  # to send at once: after a CONNACK, the unacknowledged publishes again


class Session:
    """One client's MQTT session across its connections. Call `connect()` for each new
    connection, `receive()` with every chunk read, `sent()` after every write, `tick()` when
    `next_deadline()` comes, and `connection_lost()` when the connection ends."""

    def __init__(
        self,
        client_id: str,
        *,
        keepalive: int = 60,
        clean_session: bool = True,
        username: str | None = None,
        password: str | None = None,
        handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
        publish_cap: int | None = None,
        prefix_bytes: int = 1024,
    ) -> None:
        """`handshake_timeout_s`: how long CONNECT and each SUBSCRIBE may go unanswered.
        `publish_cap`, `prefix_bytes`: see `codec.Decoder`."""
        if not 0 <= keepalive <= 0xFFFF:
            raise MqttProtocolError(f"keepalive {keepalive} is not in 0..65535")
        self.client_id = client_id
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.username = username
        self.password = password
        self.handshake_timeout_s = handshake_timeout_s
        self._publish_cap = publish_cap
        self._prefix_bytes = prefix_bytes
        self.connection = 0  # counts connect() calls: which connection a message came on
        self.connected = False  # CONNACK accepted, connection not lost since
        # Insertion-ordered, so the resend after a reconnect keeps the original order.
        self.inflight: dict[int, tuple[str, bytes, bool]] = {}
        self._subscribing: dict[int, tuple[tuple[str, ...], float]] = {}  # id -> filters, due
        self._next_id = 0
        self._decoder: codec.Decoder | None = None
        self._handshake_due: float | None = None
        self._last_sent = 0.0
        self._last_heard = 0.0
        self._ping_sent: float | None = None  # an unanswered PINGREQ's time

    # --- the connection's life -------------------------------------------------------------

    def connect(self, now: float, will: Will | None = None) -> bytes:
        """Start a new connection (whatever the last one left behind is dropped, except the
        QoS 1 publishes awaiting their PUBACK); the CONNECT to send first."""
        packet = codec.encode_connect(
            self.client_id, keepalive=self.keepalive, clean_session=self.clean_session,
            will=will, username=self.username, password=self.password,
        )
        self.connection_lost()
        self.connection += 1
        self._decoder = codec.Decoder(publish_cap=self._publish_cap,
                                      prefix_bytes=self._prefix_bytes)
        self._handshake_due = now + self.handshake_timeout_s
        self._last_sent = self._last_heard = now
        return packet

    def connection_lost(self) -> None:
        """The connection is gone. SUBSCRIBEs not answered are forgotten (the caller's
        waiters must fail); QoS 1 publishes stay in `inflight` for the next connection."""
        self.connected = False
        self._decoder = None
        self._handshake_due = None
        self._ping_sent = None
        self._subscribing.clear()

    def disconnect(self) -> bytes:
        """The DISCONNECT to send before closing: the broker then discards the Last Will."""
        return codec.encode_disconnect()

    # --- receiving -------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> Inbound:
        """Decode a chunk read from the connection. Raises MqttProtocolError when the bytes
        are not MQTT (drop the connection) and MqttConnectionRefused on a refusing CONNACK."""
        decoder = self._decoder
        if decoder is None:
            raise MqttNotConnected(f"{self.client_id}: bytes received with no connection")
        packets = decoder.feed(data)
        self._last_heard = now
        self._ping_sent = None  # anything heard answers the question a ping asks
        # The collector's hot path: a read of nothing but PUBLISH packets.
        publishes = [p for p in packets if type(p) is Publish]
        if len(publishes) == len(packets) and (self.connected or not packets):
            return Inbound(publishes, [], [], [], b"")
        return self._control(packets, publishes)

    def _control(self, packets: list[codec.Packet], publishes: list[Publish]) -> Inbound:
        oversized: list[OversizedPublish] = []
        acked: list[int] = []
        events: list[Event] = []
        reply = b""
        for packet in packets:
            if isinstance(packet, Publish):
                if not self.connected:
                    raise MqttProtocolError("PUBLISH before the CONNACK")
            elif isinstance(packet, PubAck):
                if self.inflight.pop(packet.packet_id, None) is not None:
                    acked.append(packet.packet_id)
            elif isinstance(packet, OversizedPublish):
                if not self.connected:
                    raise MqttProtocolError("PUBLISH before the CONNACK")
                oversized.append(packet)
            elif isinstance(packet, ConnAck):
                events.append(self._connack(packet))
                reply = self._resend()
            elif isinstance(packet, SubAck):
                subscribed = self._suback(packet)
                if subscribed is not None:
                    events.append(subscribed)
            elif (isinstance(packet, UnsubAck)
                  and self._subscribing.pop(packet.packet_id, None) is not None):
                events.append(Unsubscribed(packet.packet_id))
            # PINGRESP needs nothing more than being heard; the rest (QoS 2 flows, packets
            # only a broker receives) concerns no client of this project and is ignored.
        return Inbound(publishes, oversized, acked, events, reply)

    def _connack(self, packet: ConnAck) -> Connected:
        if self.connected or self._handshake_due is None:
            raise MqttProtocolError("CONNACK on a connection that has one already")
        if packet.return_code:
            raise MqttConnectionRefused(packet.return_code)
        self.connected = True
        self._handshake_due = None
        return Connected(packet.session_present)

    def _resend(self) -> bytes:
        # Unacknowledged QoS 1 publishes go again, DUP set, ahead of anything new.
        return b"".join(
            codec.encode_publish(topic, payload, 1, retain=retain, dup=True, packet_id=packet_id)
            for packet_id, (topic, payload, retain) in self.inflight.items()
        )

    def _suback(self, packet: SubAck) -> Subscribed | None:
        pending = self._subscribing.pop(packet.packet_id, None)
        if pending is None:
            return None  # not ours, or of a SUBSCRIBE given up: nobody waits for it
        filters = pending[0]
        if len(packet.return_codes) != len(filters):
            raise MqttProtocolError(f"SUBACK has {len(packet.return_codes)} return codes for "
                                    f"{len(filters)} topic filters")
        refused = tuple(f for f, code in zip(filters, packet.return_codes, strict=True)
                        if code == SUBACK_FAILURE)
        return Subscribed(packet.packet_id, packet.return_codes, refused)

    # --- sending ---------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bytes:
        """The PUBLISH to send. A QoS 1 one stays in `inflight` until its PUBACK arrives."""
        if not self.connected:
            raise MqttNotConnected(f"{self.client_id}: not connected")
        if qos == 0:
            return codec.encode_publish(topic, payload, 0, retain=retain)
        if qos != 1:
            raise MqttError(f"{self.client_id}: QoS {qos} publishing is not supported")
        packet_id = self._allocate_id()
        # Encoded before it is tracked: a message the codec refuses is never resent.
        packet = codec.encode_publish(topic, payload, 1, retain=retain, packet_id=packet_id)
        self.inflight[packet_id] = (topic, payload, retain)
        return packet

    def subscribe(self, filters: Sequence[tuple[str, int]], now: float) -> tuple[int, bytes]:
        """The SUBSCRIBE to send and its packet id; its SUBACK comes as a `Subscribed` event,
        or `tick()` gives up on the connection after `handshake_timeout_s`."""
        if not self.connected:
            raise MqttNotConnected(f"{self.client_id}: not connected")
        packet_id = self._allocate_id()
        packet = codec.encode_subscribe(packet_id, list(filters))
        self._subscribing[packet_id] = (tuple(f for f, _ in filters),
                                        now + self.handshake_timeout_s)
        return packet_id, packet

    def unsubscribe(self, filters: Sequence[str], now: float) -> tuple[int, bytes]:
        """The UNSUBSCRIBE to send and its packet id; its UNSUBACK comes as an
        `Unsubscribed` event, within `handshake_timeout_s` like a SUBACK."""
        if not self.connected:
            raise MqttNotConnected(f"{self.client_id}: not connected")
        packet_id = self._allocate_id()
        packet = codec.encode_unsubscribe(packet_id, list(filters))
        self._subscribing[packet_id] = (tuple(filters), now + self.handshake_timeout_s)
        return packet_id, packet

    def puback(self, packet_id: int) -> bytes:
        """The acknowledgement of a QoS 1 message received."""
        return codec.encode_puback(packet_id)

    def pubacks(self, packet_ids: Iterable[int]) -> bytes:
        """The acknowledgements of many QoS 1 messages in one buffer (one write for a whole
        turn of the collector): four bytes each, packed in one call."""
        ids = packet_ids if isinstance(packet_ids, list) else list(packet_ids)
        if not ids:
            return b""
        if min(ids) < 1 or max(ids) > _MAX_PACKET_ID:
            raise MqttProtocolError("a packet id to acknowledge is not in 1..65535")
        return struct.pack(f">{len(ids)}I", *[_PUBACK_WORD | packet_id for packet_id in ids])

    def sent(self, now: float) -> None:
        """Bytes went out at `now` (the broker counts the keep-alive from what it hears)."""
        self._last_sent = now

    def _allocate_id(self) -> int:
        # Ids still in use (a publish awaiting its PUBACK, a SUBSCRIBE its SUBACK) are skipped.
        for _ in range(_MAX_PACKET_ID):
            self._next_id = self._next_id % _MAX_PACKET_ID + 1
            if self._next_id not in self.inflight and self._next_id not in self._subscribing:
                return self._next_id
        raise MqttError(f"{self.client_id}: all 65535 packet ids are in flight")

    # --- time ------------------------------------------------------------------------------

    def tick(self, now: float) -> bytes:
        """What is due at `now`: a PINGREQ to send, or b"". Raises MqttConnectionError when
        the broker has left CONNECT, a SUBSCRIBE or a ping unanswered for too long.

        A ping goes out when nothing was sent for half the keepalive (the broker's rule: it
        drops a client silent for 1.5 keepalives) or nothing was heard for as long (ours: a
        stream of outgoing acks proves nothing about the way in). The connection is dead
        only once a ping goes unanswered for a whole keepalive."""
        if self._handshake_due is not None and now >= self._handshake_due:
            raise MqttConnectionError("the broker did not answer CONNECT in time")
        for _filters, due in self._subscribing.values():
            if now >= due:
                raise MqttConnectionError("the broker did not answer SUBSCRIBE in time")
        if not self.connected or not self.keepalive:
            return b""
        if self._ping_sent is not None:
            if now - self._ping_sent >= self.keepalive:
                raise MqttConnectionError("the broker did not answer a ping")
            return b""
        half = self.keepalive / 2
        if now - self._last_sent >= half or now - self._last_heard >= half:
            self._ping_sent = now
            return _PINGREQ
        return b""

    def next_deadline(self) -> float | None:
        """When `tick()` next has something to do (None: nothing is pending)."""
        dues = [due for _filters, due in self._subscribing.values()]
        if self._handshake_due is not None:
            dues.append(self._handshake_due)
        if self.connected and self.keepalive:
            if self._ping_sent is not None:
                dues.append(self._ping_sent + self.keepalive)
            else:
                dues.append(min(self._last_sent, self._last_heard) + self.keepalive / 2)
        return min(dues) if dues else None

    def idle_ping(self, now: float) -> bytes:
        """For a reader that has stopped reading (its consumer is full): a PINGREQ when
        nothing was sent for half the keepalive, so the broker keeps the connection. No
        answer is awaited, as none can be read until reading resumes."""
        if self.connected and self.keepalive and now - self._last_sent >= self.keepalive / 2:
            return _PINGREQ
        return b""
