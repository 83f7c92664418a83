"""The MQTT session core without a broker or a socket: bytes in, bytes and events out, and the
keep-alive and handshake deadlines on a clock the test holds. What both of the project's own
clients (the asyncio client, the collector's intake) rely on is pinned down here; their tests
against a real broker are in test_mqtt_client.py and tests/collector/test_intake.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotmeter_tui.backend.mqtt import codec
from iotmeter_tui.backend.mqtt.codec import (
    Connect,
    Decoder,
    MqttProtocolError,
    OversizedPublish,
    PingReq,
    Publish,
    Subscribe,
    Will,
)
from iotmeter_tui.backend.mqtt.session import (
    Connected,
    Inbound,
    MqttConnectionError,
    MqttConnectionRefused,
    MqttError,
    MqttNotConnected,
    Session,
    Subscribed,
)

T0 = 1000.0


def sent(wire: bytes) -> list[codec.Packet]:
    """What the broker would read from these bytes."""
    return Decoder().feed(wire)


def connected(session: Session | None = None, *, now: float = T0,
              session_present: bool = False) -> Session:
    session = session or Session("dc-0001", keepalive=30)
    session.connect(now)
    inbound = session.receive(codec.encode_connack(0, session_present=session_present), now)
    assert inbound.events == [Connected(session_present)]
    return session


# --- connecting ----------------------------------------------------------------------------


def test_connect_builds_the_connect_packet_from_the_session_settings() -> None:
    session = Session("dc-0001", keepalive=45, clean_session=False, username="dc-0001",
                      password="s3cret")
    will = Will("iot/dc-0001/status", b'{"state":"offline"}', 1, True)
    assert sent(session.connect(T0, will)) == [
        Connect("dc-0001", 45, False, will, "dc-0001", b"s3cret")
    ]
    assert session.connection == 1 and not session.connected
    session.connect(T0 + 1)
    assert session.connection == 2  # each connect() is a new connection


def test_an_accepted_connack_connects_and_says_whether_the_session_was_kept() -> None:
    session = Session("c")
    session.connect(T0)
    inbound = session.receive(codec.encode_connack(0, session_present=True), T0)
    assert inbound == Inbound([], [], [], [Connected(True)], b"")
    assert session.connected


def test_a_refused_connack_raises_with_the_reason() -> None:
    session = Session("c")
    session.connect(T0)
    with pytest.raises(MqttConnectionRefused, match="bad user name or password") as refused:
        session.receive(codec.encode_connack(4), T0)
    assert refused.value.return_code == 4
    assert not session.connected


@pytest.mark.parametrize(("wire", "problem"), [
    (codec.encode_connack(0) + codec.encode_connack(0), "CONNACK on a connection that has one"),
    (codec.encode_publish("iot/x/command", b"{}", 1, packet_id=1), "PUBLISH before the CONNACK"),
])
def test_a_broker_breaking_the_handshake_is_a_protocol_error(wire: bytes, problem: str) -> None:
    session = Session("c")
    session.connect(T0)
    with pytest.raises(MqttProtocolError, match=problem):
        session.receive(wire, T0)


def test_bytes_without_a_connection_are_refused() -> None:
    with pytest.raises(MqttNotConnected):
        Session("c").receive(codec.encode_connack(0), T0)
    session = connected()
    session.connection_lost()
    with pytest.raises(MqttNotConnected):
        session.receive(codec.encode_pingresp(), T0)


def test_a_client_id_with_u0000_is_refused_before_anything_changes() -> None:
    session = Session("dc-\x00")
    with pytest.raises(MqttProtocolError, match="client id contains U\\+0000"):
        session.connect(T0)
    assert session.connection == 0


# --- publishing and acknowledgements ---------------------------------------------------------


def test_qos1_publishes_wait_in_inflight_until_their_puback() -> None:
    session = connected()
    wires = [session.publish("iot/dc-0001/telemetry", b"%d" % i, 1) for i in range(3)]
    assert [p for w in wires for p in sent(w)] == [
        Publish("iot/dc-0001/telemetry", b"%d" % i, 1, False, False, i + 1) for i in range(3)
    ]
    assert list(session.inflight) == [1, 2, 3]
    inbound = session.receive(codec.encode_puback(2) + codec.encode_puback(9), T0)
    assert inbound.acked == [2]  # 9 was never ours: ignored
    assert list(session.inflight) == [1, 3]
    qos0 = session.publish("iot/dc-0001/status", b"online", 0, retain=True)
    assert sent(qos0) == [Publish("iot/dc-0001/status", b"online", 0, True, False, None)]
    assert list(session.inflight) == [1, 3]


def test_after_a_reconnect_unacknowledged_publishes_go_again_first_with_dup() -> None:
    session = connected(Session("c", clean_session=False))
    for i in range(4):
        session.publish("t", b"%d" % i, 1, retain=i == 0)
    session.receive(codec.encode_puback(2), T0)
    session.connection_lost()
    with pytest.raises(MqttNotConnected):
        session.publish("t", b"late", 1)
    session.connect(T0 + 5)
    inbound = session.receive(codec.encode_connack(0, session_present=True), T0 + 5)
    assert sent(inbound.reply) == [
        Publish("t", b"0", 1, True, True, 1),
        Publish("t", b"2", 1, False, True, 3),
        Publish("t", b"3", 1, False, True, 4),
    ]
    assert session.publish("t", b"new", 1) == codec.encode_publish("t", b"new", 1, packet_id=5)


def test_packet_ids_skip_those_in_use_wrap_and_run_out() -> None:
    session = connected()
    session._next_id = 65534
    assert [sent(session.publish("t", b"", 1))[0].packet_id for _ in range(3)] == [65535, 1, 2]
    session.subscribe([("a", 1)], T0)  # takes 3
    session.inflight.update({i: ("t", b"", False) for i in range(4, 65536)})
    session.inflight.pop(40)
    assert sent(session.publish("t", b"", 1))[0].packet_id == 40
    with pytest.raises(MqttError, match="all 65535 packet ids are in flight"):
        session.publish("t", b"", 1)


def test_a_publish_the_codec_refuses_is_not_tracked() -> None:
    session = connected()
    with pytest.raises(MqttProtocolError, match="topic contains U\\+0000"):
        session.publish("iot/\x00/telemetry", b"{}", 1)
    assert session.inflight == {}
    with pytest.raises(MqttError, match="QoS 2"):
        session.publish("t", b"", 2)


def test_pubacks_pack_many_acknowledgements_into_one_buffer() -> None:
    session = Session("c")
    ids = [1, 2, 255, 256, 4660, 65535]
    assert session.pubacks(ids) == b"".join(codec.encode_puback(i) for i in ids)
    assert session.pubacks(iter(ids)) == session.pubacks(ids)
    assert session.pubacks([]) == b""
    assert session.puback(7) == codec.encode_puback(7)
    for bad in ([0], [1, 65536], [-1]):
        with pytest.raises(MqttProtocolError, match=r"not in 1\.\.65535"):
            session.pubacks(bad)


# --- receiving -------------------------------------------------------------------------------


def test_a_read_of_publishes_comes_out_in_order_with_nothing_else() -> None:
    session = connected()
    wire = b"".join(codec.encode_publish(f"iot/d{i}/telemetry", b"x", 1, packet_id=i + 1)
                    for i in range(50))
    inbound = session.receive(wire, T0 + 1)
    assert [p.topic for p in inbound.publishes] == [f"iot/d{i}/telemetry" for i in range(50)]
    assert (inbound.oversized, inbound.acked, inbound.events, inbound.reply) == ([], [], [], b"")


def test_an_oversized_publish_comes_out_as_its_head() -> None:
    session = connected(Session("collector", publish_cap=1000, prefix_bytes=8))
    wire = (codec.encode_publish("a", b"small", 1, packet_id=1)
            + codec.encode_publish("iot/x/telemetry", b"y" * 5000, 1, packet_id=2))
    inbound = session.receive(wire, T0)
    assert inbound.publishes == [Publish("a", b"small", 1, False, False, 1)]
    assert inbound.oversized == [OversizedPublish("iot/x/telemetry", b"y" * 8, 5000, 1, 2)]


def test_a_malformed_packet_is_a_protocol_error_with_its_reason() -> None:
    session = connected()
    topic = b"iot/\x00/telemetry"
    bad = b"\x30" + bytes((2 + len(topic) + 2,)) + len(topic).to_bytes(2, "big") + topic + b"{}"
    with pytest.raises(MqttProtocolError, match="PUBLISH topic contains U\\+0000"):
        session.receive(bad, T0)


packets = st.lists(st.one_of(
    st.builds(lambda i: (codec.encode_publish("iot/x/telemetry", b"%d" % i, 1, packet_id=i),
                         "publish", i), st.integers(1, 65535)),
    st.builds(lambda i: (codec.encode_puback(i), "puback", i), st.integers(1, 8)),
    st.just((codec.encode_pingresp(), "pingresp", 0)),
), max_size=30)


@settings(max_examples=150, deadline=None)
@given(packets, st.lists(st.integers(0, 2000), max_size=6))
def test_how_the_bytes_are_split_into_reads_changes_nothing(
        items: list[tuple[bytes, str, int]], cuts: list[int]) -> None:
    def run(pieces: list[bytes]) -> tuple[list[Publish], list[int]]:
        session = connected()
        for _ in range(8):
            session.publish("t", b"", 1)
        publishes: list[Publish] = []
        acked: list[int] = []
        for piece in pieces:
            inbound = session.receive(piece, T0)
            publishes += inbound.publishes
            acked += inbound.acked
        return publishes, acked

    wire = b"".join(w for w, _, _ in items)
    points = sorted({min(c, len(wire)) for c in cuts})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    publishes, acked = run(pieces)
    assert (publishes, acked) == run([wire])
    assert [p.packet_id for p in publishes] == [i for _, kind, i in items if kind == "publish"]
    first_acks = list(dict.fromkeys(i for _, kind, i in items if kind == "puback"))
    assert acked == first_acks  # each publish acknowledged once, a repeat PUBACK ignored


# --- subscribing -----------------------------------------------------------------------------


def test_a_suback_answers_its_subscribe_and_names_refused_filters() -> None:
    session = connected()
    packet_id, wire = session.subscribe([("iot/+/telemetry", 1), ("$SYS/#", 1)], T0)
    assert sent(wire) == [Subscribe(packet_id, (("iot/+/telemetry", 1), ("$SYS/#", 1)))]
    inbound = session.receive(codec.encode_suback(packet_id, [1, 0x80]), T0)
    assert inbound.events == [Subscribed(packet_id, (1, 0x80), ("$SYS/#",))]
    again = session.receive(codec.encode_suback(packet_id, [1, 1]), T0)
    assert again.events == []  # answered already: nobody waits for a second one


def test_a_suback_with_the_wrong_number_of_codes_is_a_protocol_error() -> None:
    session = connected()
    packet_id, _ = session.subscribe([("a", 1), ("b", 1)], T0)
    with pytest.raises(MqttProtocolError, match="1 return codes for 2 topic filters"):
        session.receive(codec.encode_suback(packet_id, [1]), T0)


def test_subscribing_needs_a_connection() -> None:
    with pytest.raises(MqttNotConnected):
        Session("c").subscribe([("a", 1)], T0)


# --- time ------------------------------------------------------------------------------------


def test_no_connack_in_time_ends_the_connection() -> None:
    session = Session("c", handshake_timeout_s=10)
    session.connect(T0)
    assert session.next_deadline() == T0 + 10
    assert session.tick(T0 + 9.9) == b""
    with pytest.raises(MqttConnectionError, match="did not answer CONNECT"):
        session.tick(T0 + 10)


def test_no_suback_in_time_ends_the_connection() -> None:
    session = connected(Session("c", keepalive=60, handshake_timeout_s=5))
    session.subscribe([("a", 1)], T0 + 1)
    assert session.next_deadline() == T0 + 6
    with pytest.raises(MqttConnectionError, match="did not answer SUBSCRIBE"):
        session.tick(T0 + 6)


def test_a_ping_goes_when_nothing_was_sent_for_half_the_keepalive() -> None:
    session = connected()  # keepalive 30, heard and sent at T0
    assert session.next_deadline() == T0 + 15
    assert session.tick(T0 + 14) == b""
    session.receive(codec.encode_puback(99), T0 + 14)  # heard; still nothing sent
    assert sent(session.tick(T0 + 15)) == [PingReq()]


def test_a_ping_goes_when_nothing_was_heard_for_half_the_keepalive() -> None:
    """Outgoing acks prove nothing about the way in."""
    session = connected()
    session.sent(T0 + 14)
    assert session.tick(T0 + 14.9) == b""
    assert sent(session.tick(T0 + 15)) == [PingReq()]


def test_an_unanswered_ping_ends_the_connection_after_a_keepalive() -> None:
    session = connected()
    assert session.tick(T0 + 15) == codec.encode_pingreq()
    assert session.next_deadline() == T0 + 45
    assert session.tick(T0 + 30) == b""  # no second ping while one is out
    with pytest.raises(MqttConnectionError, match="did not answer a ping"):
        session.tick(T0 + 45)


def test_anything_heard_answers_a_ping() -> None:
    session = connected()
    session.tick(T0 + 15)
    session.receive(codec.encode_publish("t", b"", 0), T0 + 20)
    session.sent(T0 + 20)
    assert session.next_deadline() == T0 + 35
    assert session.tick(T0 + 44) == codec.encode_pingreq()  # a new ping, no error


def test_keepalive_zero_never_pings() -> None:
    session = connected(Session("c", keepalive=0))
    assert session.next_deadline() is None
    assert session.tick(T0 + 10_000) == b""


def test_a_reader_that_stopped_reading_still_pings_when_quiet() -> None:
    session = connected()
    assert session.idle_ping(T0 + 14) == b""
    assert session.idle_ping(T0 + 15) == codec.encode_pingreq()
    assert session.tick(T0 + 15.5) == codec.encode_pingreq()  # idle pings await no answer
    session.connection_lost()
    assert session.idle_ping(T0 + 100) == b""
    assert session.next_deadline() is None
