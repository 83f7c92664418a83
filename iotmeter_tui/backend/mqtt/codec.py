"""MQTT 3.1.1 wire format: pure encoders for every packet a client or a small broker sends, and
an incremental `Decoder` that turns byte chunks into packets. No I/O.

The decoder sits on hot paths (the simulator's 5,000 connections, the collector's intake), so
it parses whole packets straight out of each chunk with slicing, never a Python loop per byte,
and it buffers a partial packet without re-copying it on every chunk.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, NamedTuple

from iotmeter_tui.backend.errors import IotmeterError

CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
PUBREC: Final = 5
PUBREL: Final = 6
PUBCOMP: Final = 7
SUBSCRIBE: Final = 8
SUBACK: Final = 9
UNSUBSCRIBE: Final = 10
UNSUBACK: Final = 11
PINGREQ: Final = 12
PINGRESP: Final = 13
DISCONNECT: Final = 14

PROTOCOL_NAME: Final = b"MQTT"
PROTOCOL_LEVEL: Final = 4  # 3.1.1
MAX_REMAINING_LENGTH: Final = 268_435_455  # four length bytes of seven bits each
SUBACK_FAILURE: Final = 0x80

CONNACK_CODES: Final[dict[int, str]] = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

# The fixed-header flags every packet type but PUBLISH must carry (MQTT 3.1.1 table 2.2).
_REQUIRED_FLAGS: Final[dict[int, int]] = {
    CONNECT: 0, CONNACK: 0, PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0, SUBSCRIBE: 2,
    SUBACK: 0, UNSUBSCRIBE: 2, UNSUBACK: 0, PINGREQ: 0, PINGRESP: 0, DISCONNECT: 0,
}

_U16 = struct.Struct(">H")


class MqttProtocolError(IotmeterError, ValueError):
    """Bytes that are not valid MQTT 3.1.1; the connection carrying them must be dropped."""


# --- packets ---------------------------------------------------------------------------------


class Will(NamedTuple):
    """The Last Will the broker publishes when the connection ends without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class Connect(NamedTuple):
    client_id: str
    keepalive: int
    clean_session: bool
    will: Will | None
    username: str | None
    password: bytes | None


class ConnAck(NamedTuple):
    session_present: bool
    return_code: int


class Publish(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None  # None for QoS 0


class OversizedPublish(NamedTuple):
    """A PUBLISH larger than the decoder's `publish_cap`: its topic, packet id, the first
    `prefix_bytes` of its payload and its full size. The rest of it was skipped as it streamed
    in, never held whole."""

    topic: str
    prefix: bytes
    size: int  # the payload's length in bytes
    qos: int
    packet_id: int | None


class PubAck(NamedTuple):
    packet_id: int


class PubRec(NamedTuple):
    packet_id: int


class PubRel(NamedTuple):
    packet_id: int


class PubComp(NamedTuple):
    packet_id: int


class Subscribe(NamedTuple):
    packet_id: int
    filters: tuple[tuple[str, int], ...]


class SubAck(NamedTuple):
    packet_id: int
    return_codes: tuple[int, ...]


class Unsubscribe(NamedTuple):
    packet_id: int
    filters: tuple[str, ...]


class UnsubAck(NamedTuple):
    packet_id: int


class PingReq(NamedTuple):
    pass


class PingResp(NamedTuple):
    pass


class Disconnect(NamedTuple):
    pass


Packet = (
    Connect | ConnAck | Publish | OversizedPublish | PubAck | PubRec | PubRel | PubComp
    | Subscribe | SubAck | Unsubscribe | UnsubAck | PingReq | PingResp | Disconnect
)

PINGREQ_PACKET: Final = PingReq()
PINGRESP_PACKET: Final = PingResp()
DISCONNECT_PACKET: Final = Disconnect()


# --- encoding --------------------------------------------------------------------------------


def encode_remaining_length(length: int) -> bytes:
    """The variable-length 'remaining length' of the fixed header (1 to 4 bytes)."""
    if length < 128:
        if length < 0:
            raise MqttProtocolError(f"remaining length {length} is negative")
        return bytes((length,))
    if length > MAX_REMAINING_LENGTH:
        raise MqttProtocolError(f"remaining length {length} > {MAX_REMAINING_LENGTH}")
    out = bytearray()
    while True:
        digit = length & 0x7F
        length >>= 7
        if length:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _utf8(text: str, what: str) -> bytes:
    """`text` as an MQTT string's bytes. MQTT strings are well-formed UTF-8 without U+0000
    (a receiver must drop the connection on either), so neither is ever sent."""
    if "\x00" in text:
        raise MqttProtocolError(f"{what} contains U+0000, which MQTT strings must not")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise MqttProtocolError(f"{what} is not valid Unicode (a lone surrogate)") from None


def _string(text: str, what: str) -> bytes:
    return _binary(_utf8(text, what))


def _binary(raw: bytes) -> bytes:
    if len(raw) > 0xFFFF:
        raise MqttProtocolError(f"field of {len(raw)} bytes is over 65535")
    return _U16.pack(len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_remaining_length(len(body)) + body


def _check_qos(qos: int, allowed: tuple[int, ...] = (0, 1, 2)) -> None:
    if qos not in allowed:
        raise MqttProtocolError(f"QoS {qos} is not one of {allowed}")


def _check_packet_id(packet_id: int) -> None:
    if not 0 < packet_id <= 0xFFFF:
        raise MqttProtocolError(f"packet id {packet_id} is not in 1..65535")


def encode_connect(
    client_id: str,
    *,
    keepalive: int = 60,
    clean_session: bool = True,
    will: Will | None = None,
    username: str | None = None,
    password: bytes | str | None = None,
) -> bytes:
    if not 0 <= keepalive <= 0xFFFF:
        raise MqttProtocolError(f"keepalive {keepalive} is not in 0..65535")
    if password is not None and username is None:
        raise MqttProtocolError("MQTT 3.1.1 allows a password only with a user name")
    flags = 0x02 if clean_session else 0
    parts = [_string(client_id, "client id")]
    if will is not None:
        _check_qos(will.qos)
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        parts += [_string(will.topic, "will topic"), _binary(will.payload)]
    if username is not None:
        flags |= 0x80
        parts.append(_string(username, "user name"))
    if password is not None:
        flags |= 0x40
        parts.append(_binary(password.encode() if isinstance(password, str) else password))
    header = _binary(PROTOCOL_NAME) + bytes((PROTOCOL_LEVEL, flags)) + _U16.pack(keepalive)
    return _packet(CONNECT << 4, header + b"".join(parts))


def encode_connack(return_code: int = 0, *, session_present: bool = False) -> bytes:
    return bytes((CONNACK << 4, 2, 1 if session_present else 0, return_code))


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int = 0,
    *,
    retain: bool = False,
    dup: bool = False,
    packet_id: int | None = None,
) -> bytes:
    raw_topic = _utf8(topic, "topic")
    if len(raw_topic) > 0xFFFF:
        raise MqttProtocolError(f"topic of {len(raw_topic)} bytes is over 65535")
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    if qos:
        _check_qos(qos)
        if packet_id is None:
            raise MqttProtocolError(f"a QoS {qos} PUBLISH needs a packet id")
        _check_packet_id(packet_id)
        length = 4 + len(raw_topic) + len(payload)
        return b"".join((
            bytes((first,)), encode_remaining_length(length), _U16.pack(len(raw_topic)),
            raw_topic, _U16.pack(packet_id), payload,
        ))
    if dup:
        raise MqttProtocolError("the DUP flag must be 0 on a QoS 0 PUBLISH")
    length = 2 + len(raw_topic) + len(payload)
    return b"".join((
        bytes((first,)), encode_remaining_length(length), _U16.pack(len(raw_topic)), raw_topic,
        payload,
    ))


def _packet_id_only(kind: int, packet_id: int) -> bytes:
    _check_packet_id(packet_id)
    return bytes((kind << 4 | _REQUIRED_FLAGS[kind], 2)) + _U16.pack(packet_id)


def encode_puback(packet_id: int) -> bytes:
    return _packet_id_only(PUBACK, packet_id)


def encode_pubrec(packet_id: int) -> bytes:
    return _packet_id_only(PUBREC, packet_id)


def encode_pubrel(packet_id: int) -> bytes:
    return _packet_id_only(PUBREL, packet_id)


def encode_pubcomp(packet_id: int) -> bytes:
    return _packet_id_only(PUBCOMP, packet_id)


def encode_unsuback(packet_id: int) -> bytes:
    return _packet_id_only(UNSUBACK, packet_id)


def encode_subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    _check_packet_id(packet_id)
    if not filters:
        raise MqttProtocolError("SUBSCRIBE needs at least one topic filter")
    parts = [_U16.pack(packet_id)]
    for topic_filter, qos in filters:
        _check_qos(qos)
        parts += [_string(topic_filter, "topic filter"), bytes((qos,))]
    return _packet(SUBSCRIBE << 4 | 2, b"".join(parts))


def encode_suback(packet_id: int, return_codes: list[int]) -> bytes:
    _check_packet_id(packet_id)
    return _packet(SUBACK << 4, _U16.pack(packet_id) + bytes(return_codes))


def encode_unsubscribe(packet_id: int, filters: list[str]) -> bytes:
    _check_packet_id(packet_id)
    if not filters:
        raise MqttProtocolError("UNSUBSCRIBE needs at least one topic filter")
    body = b"".join(_string(f, "topic filter") for f in filters)
    return _packet(UNSUBSCRIBE << 4 | 2, _U16.pack(packet_id) + body)


def encode_pingreq() -> bytes:
    return bytes((PINGREQ << 4, 0))


def encode_pingresp() -> bytes:
    return bytes((PINGRESP << 4, 0))


def encode_disconnect() -> bytes:
    return bytes((DISCONNECT << 4, 0))


# --- decoding --------------------------------------------------------------------------------


class _Reader:
    """Field reader over one packet's body; every read checks the bounds."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data = data
        self.pos = start
        self.end = end

    def u8(self) -> int:
        if self.pos >= self.end:
            raise MqttProtocolError("packet ends inside a field")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        if self.pos + 2 > self.end:
            raise MqttProtocolError("packet ends inside a field")
        value = (self.data[self.pos] << 8) | self.data[self.pos + 1]
        self.pos += 2
        return value

    def binary(self) -> bytes:
        length = self.u16()
        if self.pos + length > self.end:
            raise MqttProtocolError("string or binary field runs past the packet")
        value = self.data[self.pos:self.pos + length]
        self.pos += length
        return value

    def string(self, what: str) -> str:
        try:
            text = self.binary().decode("utf-8")
        except UnicodeDecodeError:
            raise MqttProtocolError(f"{what} is not UTF-8") from None
        if "\x00" in text:
            raise MqttProtocolError(f"{what} contains U+0000, which MQTT strings must not")
        return text

    @property
    def left(self) -> int:
        return self.end - self.pos

    def done(self, what: str) -> None:
        if self.pos != self.end:
            raise MqttProtocolError(f"{what} has {self.end - self.pos} unexpected trailing bytes")


def _parse_connect(r: _Reader) -> Connect:
    if r.binary() != PROTOCOL_NAME:
        raise MqttProtocolError("CONNECT protocol name is not MQTT")
    level = r.u8()
    if level != PROTOCOL_LEVEL:
        raise MqttProtocolError(f"CONNECT protocol level {level}, expected {PROTOCOL_LEVEL}")
    flags = r.u8()
    if flags & 0x01:
        raise MqttProtocolError("CONNECT reserved flag is set")
    keepalive = r.u16()
    client_id = r.string("CONNECT client id")
    will = None
    if flags & 0x04:
        topic = r.string("CONNECT will topic")
        payload = r.binary()
        qos = (flags >> 3) & 3
        if qos == 3:
            raise MqttProtocolError("CONNECT will QoS 3")
        will = Will(topic, payload, qos, bool(flags & 0x20))
    elif flags & 0x38:
        raise MqttProtocolError("CONNECT will QoS/retain set without a will")
    username = r.string("CONNECT user name") if flags & 0x80 else None
    password = r.binary() if flags & 0x40 else None
    r.done("CONNECT")
    return Connect(client_id, keepalive, bool(flags & 0x02), will, username, password)


def _parse_connack(r: _Reader) -> ConnAck:
    ack_flags = r.u8()
    code = r.u8()
    r.done("CONNACK")
    if ack_flags & 0xFE:
        raise MqttProtocolError("CONNACK reserved flags are set")
    return ConnAck(bool(ack_flags & 1), code)


def _parse_subscribe(r: _Reader) -> Subscribe:
    packet_id = r.u16()
    filters = []
    while r.left:
        topic_filter = r.string("SUBSCRIBE topic filter")
        qos = r.u8()
        if qos > 2:
            raise MqttProtocolError(f"SUBSCRIBE requested QoS byte {qos:#x}")
        filters.append((topic_filter, qos))
    if not filters:
        raise MqttProtocolError("SUBSCRIBE without topic filters")
    return Subscribe(packet_id, tuple(filters))


def _parse_suback(r: _Reader) -> SubAck:
    packet_id = r.u16()
    codes = tuple(r.data[r.pos:r.end])
    if not codes:
        raise MqttProtocolError("SUBACK without return codes")
    return SubAck(packet_id, codes)


def _parse_unsubscribe(r: _Reader) -> Unsubscribe:
    packet_id = r.u16()
    filters = []
    while r.left:
        filters.append(r.string("UNSUBSCRIBE topic filter"))
    if not filters:
        raise MqttProtocolError("UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id, tuple(filters))


def _id_parser(
    kind: type[PubAck | PubRec | PubRel | PubComp | UnsubAck], name: str
) -> Callable[[_Reader], Packet]:
    def parse(r: _Reader) -> Packet:
        packet_id = r.u16()
        r.done(name)
        return kind(packet_id)

    return parse


def _empty_parser(
    packet: PingReq | PingResp | Disconnect, name: str
) -> Callable[[_Reader], Packet]:
    def parse(r: _Reader) -> Packet:
        r.done(name)
        return packet

    return parse


_PARSERS: Final[dict[int, Callable[[_Reader], Packet]]] = {
    CONNECT: _parse_connect,
    CONNACK: _parse_connack,
    PUBACK: _id_parser(PubAck, "PUBACK"),
    PUBREC: _id_parser(PubRec, "PUBREC"),
    PUBREL: _id_parser(PubRel, "PUBREL"),
    PUBCOMP: _id_parser(PubComp, "PUBCOMP"),
    SUBSCRIBE: _parse_subscribe,
    SUBACK: _parse_suback,
    UNSUBSCRIBE: _parse_unsubscribe,
    UNSUBACK: _id_parser(UnsubAck, "UNSUBACK"),
    PINGREQ: _empty_parser(PINGREQ_PACKET, "PINGREQ"),
    PINGRESP: _empty_parser(PINGRESP_PACKET, "PINGRESP"),
    DISCONNECT: _empty_parser(DISCONNECT_PACKET, "DISCONNECT"),
}


_NUL_TOPIC: Final = "PUBLISH topic contains U+0000, which MQTT strings must not"


class Decoder:
    """Incremental decoder: `feed()` a chunk as it comes off the socket, get the complete
    packets in it. A partial packet is kept until the rest arrives.

    After a MqttProtocolError the stream is out of step; drop the connection and the decoder.
    """

    __slots__ = ("_cap", "_max_packet", "_need", "_pending", "_pending_len", "_prefix_bytes",
                 "_publish_cap", "_skip")

    def __init__(self, max_packet_size: int = MAX_REMAINING_LENGTH + 5, *,
                 publish_cap: int | None = None, prefix_bytes: int = 1024) -> None:
        """`max_packet_size`: a larger packet is a protocol error (the connection must go).
        `publish_cap`: a PUBLISH packet larger than this is returned as an OversizedPublish
        and its bytes skipped as they arrive, so one huge message costs no memory and does not
        end the connection (the collector's intake)."""
        self._max_packet = max_packet_size
        self._publish_cap = publish_cap
        self._prefix_bytes = prefix_bytes
        # Any packet over _cap takes the slow path below; none does on a normal stream.
        self._cap = max_packet_size if publish_cap is None else min(max_packet_size, publish_cap)
        self._skip = 0  # bytes of an oversized PUBLISH still to discard
        self._pending: list[bytes] = []
        self._pending_len = 0
        # Bytes needed before the held partial packet can be complete: lets a large packet
        # arriving in many chunks be joined once, instead of re-copied on every chunk.
        self._need = 0

    @property
    def buffered(self) -> int:
        """Bytes held from an incomplete packet."""
        return self._pending_len

    def feed(self, chunk: bytes) -> list[Packet]:
        if self._skip:
            if len(chunk) <= self._skip:
                self._skip -= len(chunk)
                return []
            chunk = chunk[self._skip:]
            self._skip = 0
        if self._pending:
            self._pending.append(chunk)
            self._pending_len += len(chunk)
            if self._pending_len < self._need:
                return []
            data = b"".join(self._pending)
            self._pending = []
            self._pending_len = 0
        else:
            data = bytes(chunk)
        if not data:
            return []
        packets, consumed = self._parse(data)
        if consumed < len(data):
            rest = data[consumed:]
            self._pending = [rest]
            self._pending_len = len(rest)
        return packets

    def _parse(self, data: bytes) -> tuple[list[Packet], int]:
        out: list[Packet] = []
        append = out.append
        end = len(data)
        pos = 0
        self._need = 0
        while end - pos >= 2:
            first = data[pos]
            # Remaining length: one byte covers every packet under 128 bytes (nearly all).
            byte = data[pos + 1]
            if byte < 128:
                length = byte
                body = pos + 2
            else:
                length = byte & 0x7F
                shift = 7
                cursor = pos + 2
                while True:
                    if cursor >= end:
                        return out, pos
                    byte = data[cursor]
                    length |= (byte & 0x7F) << shift
                    cursor += 1
                    if byte < 128:
                        break
                    shift += 7
                    if shift > 21:
                        raise MqttProtocolError("remaining length is longer than 4 bytes")
                body = cursor
            stop = body + length
            if stop - pos > self._cap:
                if stop - pos > self._max_packet or first >> 4 != PUBLISH:
                    raise MqttProtocolError(
                        f"packet of {stop - pos} bytes is over the limit of {self._max_packet}"
                    )
                oversized = self._oversized(data, pos, body, stop, first)
                if oversized is None:
                    return out, pos  # its head is not all here yet (self._need says how much)
                append(oversized)
                if stop > end:
                    self._skip = stop - end  # the rest is skipped as it streams in
                    return out, end
                pos = stop
                continue
            if stop > end:
                self._need = stop - pos
                return out, pos
            kind = first >> 4
            if kind == PUBLISH:
                qos = (first >> 1) & 3
                if body + 2 > stop:
                    raise MqttProtocolError("PUBLISH ends inside its topic length")
                topic_end = body + 2 + ((data[body] << 8) | data[body + 1])
                if qos:
                    if qos == 3:
                        raise MqttProtocolError("PUBLISH with QoS 3")
                    if topic_end + 2 > stop:
                        raise MqttProtocolError("PUBLISH ends inside its topic or packet id")
                    packet_id: int | None = (data[topic_end] << 8) | data[topic_end + 1]
                    if not packet_id:
                        raise MqttProtocolError("PUBLISH with packet id 0")
                    payload_start = topic_end + 2
                else:
                    if topic_end > stop:
                        raise MqttProtocolError("PUBLISH topic runs past the packet")
                    if first & 0x08:
                        raise MqttProtocolError("QoS 0 PUBLISH with the DUP flag")
                    packet_id = None
                    payload_start = topic_end
                try:
                    topic = data[body + 2:topic_end].decode("utf-8")
                except UnicodeDecodeError:
                    raise MqttProtocolError("PUBLISH topic is not UTF-8") from None
                if "\x00" in topic:
                    raise MqttProtocolError(_NUL_TOPIC)
                append(Publish(
                    topic, data[payload_start:stop], qos, bool(first & 1), bool(first & 8),
                    packet_id,
                ))
            else:
                parser = _PARSERS.get(kind)
                if parser is None:
                    raise MqttProtocolError(f"unknown packet type {kind}")
                if first & 0x0F != _REQUIRED_FLAGS[kind]:
                    raise MqttProtocolError(f"packet type {kind} with flags {first & 0x0F:#x}")
                append(parser(_Reader(data, body, stop)))
            pos = stop
        return out, pos

    def _oversized(self, data: bytes, pos: int, body: int, stop: int,
                   first: int) -> OversizedPublish | None:
        """The head of an oversized PUBLISH at `pos` (topic, packet id, payload prefix), or None
        with `_need` set when `data` does not hold that head yet. Only the head is ever
        buffered: at most a 64 KiB topic plus `prefix_bytes`."""
        end = len(data)
        if body + 2 > end:
            self._need = body + 2 - pos
            return None
        topic_end = body + 2 + ((data[body] << 8) | data[body + 1])
        qos = (first >> 1) & 3
        if qos == 3:
            raise MqttProtocolError("PUBLISH with QoS 3")
        payload_start = topic_end + 2 if qos else topic_end
        if payload_start > stop:
            raise MqttProtocolError("PUBLISH ends inside its topic or packet id")
        want = min(stop, payload_start + self._prefix_bytes)
        if want > end:
            self._need = want - pos
            return None
        packet_id: int | None = None
        if qos:
            packet_id = (data[topic_end] << 8) | data[topic_end + 1]
            if not packet_id:
                raise MqttProtocolError("PUBLISH with packet id 0")
        try:
            topic = data[body + 2:topic_end].decode("utf-8")
        except UnicodeDecodeError:
            raise MqttProtocolError("PUBLISH topic is not UTF-8") from None
        if "\x00" in topic:
            raise MqttProtocolError(_NUL_TOPIC)
        return OversizedPublish(topic, data[payload_start:want], stop - payload_start, qos,
                                packet_id)
