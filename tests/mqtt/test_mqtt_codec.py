"""The MQTT 3.1.1 codec: every packet round-trips, the decoder copes with any fragmentation,
remaining-length edges are exact, and malformed input is refused, never misread."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotmeter_tui.backend.mqtt import codec
from iotmeter_tui.backend.mqtt.codec import (
    ConnAck,
    Connect,
    Decoder,
    MqttProtocolError,
    OversizedPublish,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
)

ROUND_TRIPS = [
    (codec.encode_connect("dev-1"), Connect("dev-1", 60, True, None, None, None)),
    (
        codec.encode_connect("dc-0001", keepalive=30, clean_session=False,
                             will=Will("iot/dc-0001/status", b'{"state":"offline"}', 1, True),
                             username="user", password="s3cret"),
        Connect("dc-0001", 30, False, Will("iot/dc-0001/status", b'{"state":"offline"}', 1, True),
                "user", b"s3cret"),
    ),
    (codec.encode_connect("", keepalive=0, will=Will("w", b"", 0, False), username="u"),
     Connect("", 0, True, Will("w", b"", 0, False), "u", None)),
    (codec.encode_connack(0, session_present=True), ConnAck(True, 0)),
    (codec.encode_connack(5), ConnAck(False, 5)),
    (codec.encode_publish("a/b", b"x"), Publish("a/b", b"x", 0, False, False, None)),
    (codec.encode_publish("a/b", b"", 1, retain=True, packet_id=7),
     Publish("a/b", b"", 1, True, False, 7)),
    (codec.encode_publish("t", b"\x00\xff", 1, dup=True, packet_id=65535),
     Publish("t", b"\x00\xff", 1, False, True, 65535)),
    (codec.encode_publish("q2", b"p", 2, packet_id=3), Publish("q2", b"p", 2, False, False, 3)),
    (codec.encode_publish("ünï/cødé", b"{}"), Publish("ünï/cødé", b"{}", 0, False, False, None)),
    (codec.encode_puback(1), PubAck(1)),
    (codec.encode_pubrec(2), PubRec(2)),
    (codec.encode_pubrel(3), PubRel(3)),
    (codec.encode_pubcomp(4), PubComp(4)),
    (codec.encode_subscribe(9, [("iot/+/command", 1), ("iot/#", 0)]),
     Subscribe(9, (("iot/+/command", 1), ("iot/#", 0)))),
    (codec.encode_suback(9, [1, 0, 0x80]), SubAck(9, (1, 0, 0x80))),
    (codec.encode_unsubscribe(10, ["a", "b/c"]), Unsubscribe(10, ("a", "b/c"))),
    (codec.encode_unsuback(10), UnsubAck(10)),
    (codec.encode_pingreq(), codec.PINGREQ_PACKET),
    (codec.encode_pingresp(), codec.PINGRESP_PACKET),
    (codec.encode_disconnect(), codec.DISCONNECT_PACKET),
]


@pytest.mark.parametrize(("wire", "packet"), ROUND_TRIPS)
def test_every_packet_round_trips(wire: bytes, packet: codec.Packet) -> None:
    assert Decoder().feed(wire) == [packet]


def test_known_bytes() -> None:
    # Hand-checked against the MQTT 3.1.1 specification's examples.
    assert codec.encode_pingreq() == b"\xc0\x00"
    assert codec.encode_disconnect() == b"\xe0\x00"
    assert codec.encode_puback(0x1234) == b"\x40\x02\x12\x34"
    assert codec.encode_publish("a/b", b"hi", 1, retain=True, packet_id=10) == \
        b"\x33\x09\x00\x03a/b\x00\x0ahi"
    assert codec.encode_connect("c", keepalive=10) == \
        b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x0a\x00\x01c"


@pytest.mark.parametrize(("length", "encoded"), [
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"),
    (2_097_151, b"\xff\xff\x7f"),
    (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
])
def test_remaining_length_edges(length: int, encoded: bytes) -> None:
    assert codec.encode_remaining_length(length) == encoded


def test_remaining_length_beyond_four_bytes_is_refused() -> None:
    with pytest.raises(MqttProtocolError):
        codec.encode_remaining_length(268_435_456)
    with pytest.raises(MqttProtocolError):
        Decoder().feed(b"\x30\xff\xff\xff\xff\x01")


@pytest.mark.parametrize("remaining", [127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
def test_publish_at_remaining_length_edges(remaining: int) -> None:
    topic = "iot/x/telemetry"
    payload = b"p" * (remaining - 2 - len(topic) - 2)
    wire = codec.encode_publish(topic, payload, 1, packet_id=1)
    header = 1 + len(codec.encode_remaining_length(remaining))
    assert len(wire) == header + remaining
    decoder = Decoder()
    # Split inside the length bytes and inside the body: both must wait for the rest.
    assert decoder.feed(wire[:2]) == []
    assert decoder.feed(wire[2:len(wire) // 2]) == []
    assert decoder.feed(wire[len(wire) // 2:]) == [Publish(topic, payload, 1, False, False, 1)]
    assert decoder.buffered == 0


def _stream() -> tuple[bytes, list[codec.Packet]]:
    wire = b"".join(w for w, _ in ROUND_TRIPS)
    return wire, [p for _, p in ROUND_TRIPS]


def test_fragmented_at_every_split_point() -> None:
    wire, packets = _stream()
    for split in range(len(wire) + 1):
        decoder = Decoder()
        got = decoder.feed(wire[:split]) + decoder.feed(wire[split:])
        assert got == packets, split
        assert decoder.buffered == 0


def test_byte_at_a_time() -> None:
    wire, packets = _stream()
    decoder = Decoder()
    got: list[codec.Packet] = []
    for i in range(len(wire)):
        got += decoder.feed(wire[i:i + 1])
    assert got == packets


def test_many_packets_from_one_buffer() -> None:
    wire = b"".join(
        codec.encode_publish(f"iot/dc-{i:04d}/telemetry", b'{"seq":%d}' % i, 1, packet_id=i + 1)
        for i in range(5000)
    )
    packets = Decoder().feed(wire)
    assert len(packets) == 5000
    assert packets[4999] == Publish("iot/dc-4999/telemetry", b'{"seq":4999}', 1, False, False,
                                    5000)


# MQTT strings: any Unicode text but U+0000 (the codec refuses it, tested below).
def mqtt_strings(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=max_size)


publishes = st.builds(
    lambda topic, payload, qos, retain, dup, pid: (
        topic, payload, qos, retain, dup and qos > 0, pid if qos else None
    ),
    mqtt_strings(40),
    st.binary(max_size=300),
    st.sampled_from([0, 1, 2]),
    st.booleans(),
    st.booleans(),
    st.integers(1, 65535),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(publishes, min_size=1, max_size=12), st.lists(st.integers(0, 4000), max_size=8))
def test_any_publishes_any_chunking(items: list[tuple], cuts: list[int]) -> None:
    wire = b"".join(
        codec.encode_publish(t, p, q, retain=r, dup=d, packet_id=i) for t, p, q, r, d, i in items
    )
    points = sorted({min(c, len(wire)) for c in cuts})
    decoder = Decoder()
    got: list[codec.Packet] = []
    start = 0
    for point in [*points, len(wire)]:
        got += decoder.feed(wire[start:point])
        start = point
    assert got == [Publish(t, p, q, r, d, i) for t, p, q, r, d, i in items]


@settings(max_examples=200, deadline=None)
@given(
    mqtt_strings(30), st.integers(0, 65535), st.booleans(),
    st.one_of(st.none(), st.tuples(mqtt_strings(20), st.binary(max_size=50),
                                   st.sampled_from([0, 1, 2]), st.booleans())),
    st.one_of(st.none(), mqtt_strings(20)), st.one_of(st.none(), st.binary(max_size=20)),
)
def test_any_connect_round_trips(client_id: str, keepalive: int, clean: bool,
                                 will: tuple | None, username: str | None,
                                 password: bytes | None) -> None:
    if username is None:
        password = None
    will_packet = Will(*will) if will else None
    wire = codec.encode_connect(client_id, keepalive=keepalive, clean_session=clean,
                                will=will_packet, username=username, password=password)
    assert Decoder().feed(wire) == [Connect(client_id, keepalive, clean, will_packet, username,
                                            password)]


@pytest.mark.parametrize(("wire", "problem"), [
    (b"\x00\x00", "unknown packet type 0"),
    (b"\xf0\x00", "unknown packet type 15"),
    (b"\x36\x05\x00\x01a\x00\x01", "QoS 3"),
    (b"\x32\x05\x00\x01a\x00\x00", "packet id 0"),
    (b"\x38\x03\x00\x01a", "DUP"),
    (b"\x30\x03\x00\x05a", "topic runs past"),
    (b"\x30\x04\x00\x02\xff\xfe", "not UTF-8"),
    (b"\x41\x02\x00\x01", "flags"),
    (b"\x40\x03\x00\x01\x00", "trailing"),
    (b"\x82\x03\x00\x01\x00", "packet ends"),
    (b"\x90\x02\x00\x01", "without return codes"),
    (b"\x20\x02\x02\x00", "reserved"),
    # U+0000 in any string: a PUBLISH topic, and each string of CONNECT, SUBSCRIBE, UNSUBSCRIBE.
    (b"\x30\x05\x00\x03a\x00b", "PUBLISH topic contains U\\+0000"),
    (b"\x32\x07\x00\x03a\x00b\x00\x01", "PUBLISH topic contains U\\+0000"),
    (b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x0a\x00\x03c\x00d",
     "CONNECT client id contains U\\+0000"),
    (b"\x10\x12\x00\x04MQTT\x04\x06\x00\x0a\x00\x01c\x00\x01\x00\x00\x00",
     "CONNECT will topic contains U\\+0000"),
    (b"\x10\x10\x00\x04MQTT\x04\x82\x00\x0a\x00\x01c\x00\x01\x00",
     "CONNECT user name contains U\\+0000"),
    (b"\x82\x07\x00\x01\x00\x02a\x00\x01", "SUBSCRIBE topic filter contains U\\+0000"),
    (b"\xa2\x06\x00\x01\x00\x02\x00a", "UNSUBSCRIBE topic filter contains U\\+0000"),
    (b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x0a\x00\x02\xc3\x28", "client id is not UTF-8"),
])
def test_malformed_input_is_refused(wire: bytes, problem: str) -> None:
    with pytest.raises(MqttProtocolError, match=problem):
        Decoder().feed(wire)


def test_packet_size_limit() -> None:
    wire = codec.encode_publish("t", b"x" * 1000)
    with pytest.raises(MqttProtocolError, match="over the limit"):
        Decoder(max_packet_size=500).feed(wire[:10])  # refused before the body arrives


def _oversized_stream(size: int = 300_000) -> tuple[bytes, list[object]]:
    """A normal message, a huge QoS 1 one, a QoS 0 one just over the cap, another normal one."""
    packets = [
        (codec.encode_publish("a", b"before", 1, packet_id=1), Publish("a", b"before", 1, False,
                                                                       False, 1)),
        (codec.encode_publish("iot/x/telemetry", b"y" * size, 1, packet_id=2),
         OversizedPublish("iot/x/telemetry", b"y" * 64, size, 1, 2)),
        (codec.encode_publish("q0", b"z" * 2000, 0), OversizedPublish("q0", b"z" * 64, 2000, 0,
                                                                     None)),
        (codec.encode_publish("b", b"after", 1, packet_id=3), Publish("b", b"after", 1, False,
                                                                      False, 3)),
    ]
    return b"".join(w for w, _ in packets), [p for _, p in packets]


@pytest.mark.parametrize("chunk", [1, 7, 100, 4096, 1 << 20])
def test_an_oversized_publish_is_skipped_without_buffering_it(chunk: int) -> None:
    """Issue 15 item 2: the collector's decoder buffered a packet up to 256 MB whole (or the
    connection had to go). With a publish cap, an oversized PUBLISH comes out as its head and
    size, the packets around it are intact, and the decoder never holds more than the head."""
    wire, expected = _oversized_stream()
    decoder = Decoder(publish_cap=1024, prefix_bytes=64)
    got: list[object] = []
    most = 0
    for start in range(0, len(wire), chunk):
        got += decoder.feed(wire[start:start + chunk])
        most = max(most, decoder.buffered)
    assert got == expected
    assert most < 1024 + chunk


def test_an_oversized_publish_over_the_absolute_limit_is_still_an_error() -> None:
    wire = codec.encode_publish("t", b"x" * 5000, 1, packet_id=1)
    with pytest.raises(MqttProtocolError, match="over the limit"):
        Decoder(max_packet_size=4000, publish_cap=100).feed(wire[:10])
    # Other packet kinds over the cap are not skipped: only PUBLISH carries device data.
    suback = codec.encode_suback(1, [1] * 200)
    with pytest.raises(MqttProtocolError, match="over the limit"):
        Decoder(publish_cap=100).feed(suback)


@pytest.mark.parametrize("call", [
    lambda: codec.encode_publish("t", b"", 1),
    lambda: codec.encode_publish("t", b"", 0, dup=True),
    lambda: codec.encode_publish("t", b"", 3, packet_id=1),
    lambda: codec.encode_puback(0),
    lambda: codec.encode_puback(65536),
    lambda: codec.encode_subscribe(1, []),
    lambda: codec.encode_connect("c", password=b"x"),
    lambda: codec.encode_connect("c", keepalive=70000),
    lambda: codec.encode_publish("t" * 70000, b""),
])
def test_encoders_refuse_what_the_protocol_forbids(call) -> None:
    with pytest.raises(MqttProtocolError):
        call()


@pytest.mark.parametrize(("call", "field"), [
    (lambda: codec.encode_publish("iot/a\x00b/telemetry", b"{}", 1, packet_id=1), "topic"),
    (lambda: codec.encode_publish("\x00", b""), "topic"),
    (lambda: codec.encode_connect("dc-\x00"), "client id"),
    (lambda: codec.encode_connect("c", will=Will("w\x00", b"")), "will topic"),
    (lambda: codec.encode_connect("c", username="u\x00"), "user name"),
    (lambda: codec.encode_subscribe(1, [("ok", 1), ("iot/\x00/#", 1)]), "topic filter"),
    (lambda: codec.encode_unsubscribe(1, ["\x00"]), "topic filter"),
])
def test_encoders_never_send_u0000(call, field: str) -> None:
    """MQTT strings must not hold U+0000 (a receiver drops the connection on one): refused
    with a reason naming the field, before any byte is built."""
    with pytest.raises(MqttProtocolError, match=f"{field} contains U\\+0000"):
        call()


def test_encoders_refuse_a_lone_surrogate_with_a_protocol_error() -> None:
    """Not a UnicodeEncodeError escaping from deep inside: a reason the caller can report."""
    with pytest.raises(MqttProtocolError, match="topic is not valid Unicode"):
        codec.encode_publish("iot/\ud800/telemetry", b"")
    with pytest.raises(MqttProtocolError, match="client id is not valid Unicode"):
        codec.encode_connect("\udc00")


@settings(max_examples=200, deadline=None)
@given(mqtt_strings(20), mqtt_strings(20), st.integers(0, 3000))
def test_u0000_anywhere_in_a_topic_is_refused_however_the_bytes_arrive(
        head: str, tail: str, cut: int) -> None:
    """The same topic without the U+0000 passes: only the null character is refused, wherever
    it sits and however the packet is split into reads."""
    good = codec.encode_publish(head + tail, b"payload", 1, packet_id=9)
    assert Decoder().feed(good) == [Publish(head + tail, b"payload", 1, False, False, 9)]
    topic = (head + "\x00" + tail).encode()
    bad = (b"\x32" + codec.encode_remaining_length(len(topic) + 11) + len(topic).to_bytes(2, "big")
           + topic + b"\x00\x09payload")
    decoder = Decoder()
    cut = min(cut, len(bad))
    with pytest.raises(MqttProtocolError, match="U\\+0000"):
        decoder.feed(bad[:cut])
        decoder.feed(bad[cut:])


def test_an_oversized_publish_with_u0000_in_its_topic_is_refused() -> None:
    topic = b"iot/\x00/telemetry"
    body = len(topic).to_bytes(2, "big") + topic + b"\x00\x01" + b"x" * 5000
    wire = b"\x32" + codec.encode_remaining_length(len(body)) + body
    with pytest.raises(MqttProtocolError, match="PUBLISH topic contains U\\+0000"):
        Decoder(publish_cap=1024, prefix_bytes=64).feed(wire)
