"""Hypothesis strategies for MQTT protocol v2, shared by the pure decoder properties
(tests/test_protocol.py) and the fuzzing of a running collector (tests/fuzz/).

The fuzz cases are drawn as `CaseSpec`s: a topic plus a recipe (envelope edits, text and byte
edits) that `render()` turns into the exact payload bytes. The message's identity (`boot`,
`seq`, `ts`) is filled in at render time by the caller, so a fuzz run can give every message a
fresh one and only the edits hypothesis chose can make two messages collide.
"""

from __future__ import annotations

import copy
import json
import random
import re
from dataclasses import dataclass
from typing import Any, Final

from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from iotmeter_tui.backend import protocol as p

# --- valid content ----------------------------------------------------------------------------

DC_DATA: Final[dict[str, Any]] = {
    "voltage_v": 748.2,
    "current_a": 1210.5,
    "power_kw": 905.7,
    "energy_import_kwh": 182733.41,
    "energy_export_kwh": 20311.02,
}
AC_DATA: Final[dict[str, Any]] = {
    "voltage_v": 25012.4,
    "current_a": 310.2,
    "active_power_kw": 7402.1,
    "reactive_power_kvar": 1203.3,
    "power_factor": 0.987,
    "frequency_hz": 50.01,
    "energy_import_kwh": 918273.5,
    "energy_export_kwh": 1022.75,
    "thd_pct": 2.3,
    "temperature_c": 41.5,
}
# A valid `data` object per msg_type.
VALID_DATA: Final[dict[str, dict[str, Any]]] = {
    p.TELEMETRY: DC_DATA,
    p.HELLO: {
        "device_type": "power_meter_dc",
        "fw_version": "2.4.1",
        "heartbeat_s": 60,
        "uptime_s": 12.5,
    },
    p.STATUS: {"state": "online"},
    p.COMMAND_ACK: {"command_id": "c-42", "result": "done", "detail": "pong"},
    p.OTA_STATUS: {
        "campaign_id": "fw-2.5.0",
        "fw_version": "2.5.0",
        "state": "downloading",
        "progress_pct": 40,
        "error": None,
    },
}

# Telemetry field names no store can hold (protocol.FIELD_NAME_PATTERN, reserved names): each
# one makes the message a bad_field at intake rather than a point the store refuses later.
BAD_FIELD_NAMES: Final[dict[str, str]] = {
    **{f"reserved-{name}": name for name in sorted(p.RESERVED_TELEMETRY_FIELDS)},
    "empty": "",
    "leading-underscore": "_private",
    "leading-dash": "-voltage",
    "leading-space": " voltage",
    "leading-dot": ".voltage",
    "129-chars": "v" * 129,
    "non-ascii": "temp\u00e9rature_c",
    "double-quote": 'a"b',
    "single-quote": "it's",
    "backslash": "a\\b",
    "semicolon": "a;b",
    "braces": "a{b}",
    "star": "a*",
    "newline": "volt\nage_v",
    "tab": "volt\tage",
    "nul": "v\x00",
    "del": "v\x7f",
}
# Names that look odd but every store holds (the time-series contract writes the same ones).
ODD_GOOD_FIELD_NAMES: Final[list[str]] = [
    "temp c", "a,b", "x=y", "L1.voltage/V", "thd%", "9lives", "a-b+c:d", "Time", "v" * 128, "0",
]

# --- building blocks --------------------------------------------------------------------------

device_ids = st.from_regex(p.DEVICE_ID_PATTERN, fullmatch=True)
topics = st.one_of(
    st.text(),
    st.builds(p.device_topic, device_ids, st.sampled_from(sorted(p.MSG_TYPES))),
    st.builds(lambda d, s: f"iot/{d}/{s}", st.text(), st.text()),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
field_names = st.from_regex(p.FIELD_NAME_PATTERN, fullmatch=True).filter(
    lambda name: name not in p.RESERVED_TELEMETRY_FIELDS
)
numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(
    min_value=-(2**1023), max_value=2**1023
)
any_field_names = st.one_of(
    st.text(max_size=12),
    st.from_regex(p.FIELD_NAME_PATTERN, fullmatch=True),
    st.sampled_from([*BAD_FIELD_NAMES.values(), *ODD_GOOD_FIELD_NAMES]),
)

# --- fuzz cases against a running collector ---------------------------------------------------

# A fixed set of valid device ids, edge cases included: a fuzz run talks to a few devices
# over and over (duplicates, boots, status repeats), not to one new device per message.
DEVICE_POOL: Final[tuple[str, ...]] = (
    "dc-0001", "dc-0002", "ac-0007", "meter_7", "0", "Z", "a" * 64, "Z9_-", "9-_", "x_y-z",
    "DC-0001",
)


def _shuffled(table: list[Any]) -> tuple[Any, ...]:
    """`table` in a fixed random order. Hypothesis draws low indices more often than high
    ones; shuffled, that lean favours no group of a weighted table."""
    shuffled = list(table)
    random.Random(len(shuffled)).shuffle(shuffled)
    return tuple(shuffled)


def _valid_field_name_pool(size: int = 240) -> tuple[str, ...]:
    """Valid telemetry field names: the known ones, the odd good ones, and random ones from
    FIELD_NAME_PATTERN (fixed seed). Bounded, so a long run stays far below the SQLite store's
    limit of field columns and every accepted point can be checked in the store."""
    rng = random.Random(20260207)
    first = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    rest = first + "_ .,=:/%+-"
    names = dict.fromkeys([*DC_DATA, *AC_DATA, *ODD_GOOD_FIELD_NAMES])
    while len(names) < size:
        length = rng.choice([1, 2, 5, 12, 40, 128])
        name = rng.choice(first) + "".join(rng.choice(rest) for _ in range(length - 1))
        if p.field_name_problem(name) is None:
            names[name] = None
    return tuple(names)


VALID_FIELD_NAMES: Final = _valid_field_name_pool()
# Field names (telemetry) or keys (elsewhere) that break a rule; arbitrary text is filtered to
# invalid names so the run never adds unbounded valid columns to the time-series store.
invalid_field_names = st.sampled_from(sorted(BAD_FIELD_NAMES.values())) | st.text(
    max_size=12).filter(lambda name: p.field_name_problem(name) is not None)
adversarial_field_names = st.sampled_from(VALID_FIELD_NAMES) | invalid_field_names

EDGE_NUMBERS: Final[tuple[int | float, ...]] = (
    0, -0.0, 1, -1, 2, 7, 0.5, 2.0, 100, 101, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63),
    2**64, p.MAX_TS_MS, p.MAX_TS_MS + 1, 10**308, 10**309, 1.7976931348623157e308, 5e-324,
    -5e-324, 1e-320, 1e308, -1e308, 1795740001250, 1795740001.25,
)
EDGE_STRINGS: Final[tuple[str, ...]] = (
    "", " ", "\x00", "\ud800", "\udc00", "a\ud83d", "\u2028", "\ufeff", "\u00e9", "\U0001f600",
    "online", "offline", "done", "telemetry", "hello", "status", "command_ack", "ota_status",
    "command/ack", "power_meter_dc", "2", "dc-0001", "-x", "a" * 65, "a" * 2000, "\n", "\r\n",
    "\\", '"', "NaN", "null", "\x7f", "\u0085",
)
# JSON text placed verbatim where a value goes (see Raw): what json.dumps never writes.
RAW_LITERALS: Final[tuple[str, ...]] = (
    "NaN", "Infinity", "-Infinity", "-NaN", "1e400", "-1e400", "1" + "0" * 400, "1" + "0" * 5000,
    "01", "1.", ".5", "+1", "0x10", "1e", "tru", "nul", "'x'", '"\\ud800"', '"\\u0000"',
    '"\\udfff\\ud800"', '"\\x41"', '"\\u00e9"', "[1,]", "{,}", '{"a" 1}', "[" * 5, "}", "",
)


@dataclass(frozen=True)
class Raw:
    """A value written into the JSON text exactly as given (NaN, 1e400, deep nesting...)."""

    text: str


# Nesting depths around protocol.MAX_JSON_DEPTH and Python's own recursion limit.
NEST_DEPTHS: Final[tuple[int, ...]] = (
    2, 10, p.MAX_JSON_DEPTH - 2, p.MAX_JSON_DEPTH - 1, p.MAX_JSON_DEPTH, p.MAX_JSON_DEPTH + 1,
    500, 900, 950, 980, 990, 1000, 1100, 5000, 30_000,
)
# Payload sizes near and over the 64 KiB limit (pad_to makes a payload exactly this long).
PAD_SIZES: Final[tuple[int, ...]] = (
    p.MAX_PAYLOAD_BYTES - 1, p.MAX_PAYLOAD_BYTES, p.MAX_PAYLOAD_BYTES + 1, 70_000,
)
INVALID_UTF8: Final[tuple[bytes, ...]] = (
    b"\xff", b"\xfe\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80",
    b"\x80", b"\xf8\x88\x80\x80\x80",
)
ENVELOPE_KEYS: Final[tuple[str, ...]] = ("v", "device_id", "msg_type", "boot", "seq", "ts", "data")


@dataclass(frozen=True)
class CaseSpec:
    """One fuzz case: its topic and how to make its payload (see render())."""

    family: str  # which generator made it, for reports
    topic: str
    msg_type: str  # the type the topic's suffix names; the base message is one of these
    ops: tuple[tuple[Any, ...], ...] = ()  # envelope and data edits, in order
    dumps: tuple[bool, Any] = (True, None)  # json.dumps ensure_ascii and indent
    text_ops: tuple[tuple[Any, ...], ...] = ()  # edits of the JSON text
    byte_ops: tuple[tuple[Any, ...], ...] = ()  # edits of the encoded bytes
    raw: bytes | None = None  # the payload as is, ignoring everything above


def _raw_slot(n: int) -> str:
    return f"@@raw{n}@@"


def render(spec: CaseSpec, *, boot: int, seq: int, ts: int) -> bytes:
    """The payload of `spec`, built on a valid message with this identity."""
    if spec.raw is not None:
        return spec.raw
    parsed = p.parse_topic(spec.topic)
    device_id = parsed[0] if parsed else spec.topic.split("/")[1] if "/" in spec.topic else ""
    obj: dict[str, Any] = {
        "v": p.VERSION, "device_id": device_id, "msg_type": spec.msg_type,
        "boot": boot, "seq": seq, "ts": ts, "data": dict(VALID_DATA[spec.msg_type]),
    }
    raws: list[str] = []

    def value(v: Any) -> Any:
        if isinstance(v, Raw):
            raws.append(v.text)
            return _raw_slot(len(raws) - 1)
        # A copy: a later edit of `data` must not change the shared table of values.
        return copy.deepcopy(v) if isinstance(v, dict | list) else v

    pad_to: int | None = None
    for op in spec.ops:
        match op:
            case ("set", key, v):
                obj[key] = value(v)
            case ("del", key):
                obj.pop(key, None)
            case ("data_set", key, v):
                if isinstance(obj.get("data"), dict):
                    obj["data"][key] = value(v)
            case ("data_del", key):
                if isinstance(obj.get("data"), dict):
                    obj["data"].pop(key, None)
            case ("pad_to", size):
                pad_to = size
            case _:
                raise ValueError(f"unknown op {op!r}")
    ensure_ascii, indent = spec.dumps
    text = json.dumps(obj, ensure_ascii=ensure_ascii, indent=indent)
    for n, raw in enumerate(raws):
        text = text.replace(json.dumps(_raw_slot(n)), raw, 1)
    for op in spec.text_ops:
        match op:
            case ("bom",):
                text = "\ufeff" + text
            case ("trailing_comma",):
                text = text[: text.rindex("}")] + ",}"
            case ("key_first", key, raw):  # a duplicate key the later one overrides
                text = "{" + json.dumps(key) + ":" + raw + "," + text[1:]
            case ("key_last", key, raw):  # a duplicate key that overrides the earlier one
                text = text[: text.rindex("}")] + "," + json.dumps(key) + ":" + raw + "}"
            case ("wrap", before, after):
                text = before + text + after
            case ("replace", old, new):
                text = text.replace(old, new, 1)
            case _:
                raise ValueError(f"unknown text op {op!r}")
    # Lone surrogates (from ensure_ascii=False) become their 3-byte forms: not UTF-8.
    data = text.encode("utf-8", "surrogatepass")
    if pad_to is not None:
        data = _padded(data, pad_to)
    for op in spec.byte_ops:
        match op:
            case ("truncate", fraction):
                data = data[: int(len(data) * fraction)]
            case ("insert", at, blob):
                cut = int(len(data) * at)
                data = data[:cut] + blob + data[cut:]
            case _:
                raise ValueError(f"unknown byte op {op!r}")
    return data


def _padded(data: bytes, size: int) -> bytes:
    """`data` (a JSON object) with a "pad" key making it exactly `size` bytes, if it can."""
    head, _, tail = data.rpartition(b"}")
    filler = b',"pad":""'
    missing = size - len(data) - len(filler)
    if not head or missing < 0:
        return data
    return head + filler[:-1] + b"x" * missing + b'"}' + tail


_TOPIC_FILTERS: Final = tuple(p.collector_subscriptions())


def delivered_to_collector(topic: str) -> bool:
    """True if the collector's subscriptions match `topic` (otherwise the broker never
    sends it there)."""
    return any(topic_matches_sub(f, topic) for f in _TOPIC_FILTERS)


# mosquitto_validate_utf8 (mosquitto 2.x): a PUBLISH whose topic holds one of these makes the
# broker close the connection.
_BROKER_REFUSED_RE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ud800-\udfff]|[\ufffe\uffff]"
)


def publish_problem(topic: str) -> str | None:
    """Why paho or the broker refuses to publish on `topic`, or None. Not the collector's
    concern: such a message never reaches it."""
    if not topic:
        return "paho: empty topic"
    if "+" in topic or "#" in topic:
        return "paho: wildcard in a publish topic"
    try:
        encoded = topic.encode("utf-8")
    except UnicodeEncodeError:
        return "paho: topic is not encodable as UTF-8"
    if len(encoded) > 65535:
        return "paho: topic longer than 65535 bytes"
    if _BROKER_REFUSED_RE.search(topic) or any(
            (ord(c) & 0xFFFF) in (0xFFFE, 0xFFFF) for c in topic if ord(c) > 0xFFFF):
        return "mosquitto: control character, non-character or surrogate in the topic"
    return None


# Telemetry twice as often as each other type: it is the collector's hot path.
_msg_types = st.sampled_from(
    (p.TELEMETRY, p.TELEMETRY, p.HELLO, p.STATUS, p.COMMAND_ACK, p.OTA_STATUS))
_pool_ids = st.sampled_from(DEVICE_POOL)
_BAD_SEGMENTS: Final[tuple[str, ...]] = (
    "", " ", "-x", "_x", "a" * 65, "dc.1", "dc 1", "\u00e9", "dc-0001 ", "\U0001f600", "$SYS",
    "dc-0001\u200b", "IOT", "a\\b", "a'b", "+", "#", "a+", "\x01", "\ufdd0", "x/ota", "x/command",
)
_bad_segments = st.sampled_from(_BAD_SEGMENTS) | st.text(max_size=20)


def _off_filter_topics(device: str, suffix: str) -> list[str]:
    return [
        f"iot/{device}/{suffix}/extra", f"iot/{device}", f"iot/{device}/command",
        f"iot/{device}/ota", f"IOT/{device}/{suffix}", f"iot/{device}/{suffix}/",
        f"/iot/{device}/{suffix}", f"iot/{device}/measurements", f"iot/{device}/command_ack",
        f"iot/{device}/+", f"iot/{device}/#", "",
    ]


_OFF_FILTER: Final = {
    kind: st.sampled_from([t for d in DEVICE_POOL[:3] for t in _off_filter_topics(d, suffix)])
    for kind, suffix in p.DEVICE_TOPIC_SUFFIX.items()
}


# (topic, msg_type) choices, one draw for the common case: device topics of the pool (85 in
# 100; telemetry twice as often as each other type), or a marker: a device heard of for the
# first time (3), a malformed device level, a bad_topic (9), a topic the collector does not
# subscribe to or that cannot be published at all (3).
_POOL_TOPICS: Final = [
    (p.device_topic(d, kind), kind)
    for kind in (p.TELEMETRY, *sorted(p.MSG_TYPES)) for d in DEVICE_POOL
]
_TOPIC_TABLE: Final = [
    *(_POOL_TOPICS[n % len(_POOL_TOPICS)] for n in range(85)),
    *[("new", "")] * 3, *[("bad", "")] * 9, *[("off", "")] * 3,
]


@st.composite
def _topic(draw: st.DrawFn) -> tuple[str, str]:
    """(topic, msg_type): mostly device topics of the collector's subscriptions; some with a
    malformed device level (bad_topic); a few the collector never hears of or that cannot
    be published at all."""
    topic, msg_type = draw(_topic_choices)
    if msg_type:
        return topic, msg_type
    msg_type = draw(_msg_types)
    if topic == "new":
        return p.device_topic(draw(device_ids), msg_type), msg_type
    if topic == "bad":
        return f"iot/{draw(_bad_segments)}/{p.DEVICE_TOPIC_SUFFIX[msg_type]}", msg_type
    return draw(_OFF_FILTER[msg_type]), msg_type


_topic_choices = st.sampled_from(_shuffled(_TOPIC_TABLE))
_topics = _topic()


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value (NaN and infinities included), scalars mostly."""
    roll = rng.random()
    if depth < 4 and roll < 0.15:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if depth < 4 and roll < 0.3:
        return {_random_text(rng, 8): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}
    if roll < 0.45:
        return rng.choice([None, True, False])
    if roll < 0.6:
        return rng.choice([rng.randrange(-(2**70), 2**70), rng.randrange(-100, 100),
                           rng.randrange(2**62, 2**66)])
    if roll < 0.8:
        return rng.choice([rng.uniform(-1e6, 1e6), rng.uniform(-1e308, 1e308),
                           rng.random() * 1e-310, float("nan"), float("inf"), float("-inf")])
    return _random_text(rng, 12)


# Unicode ranges random text is made of: ASCII, controls, Latin-1, BMP, surrogates (only
# representable as escapes), non-characters, astral planes.
_TEXT_RANGES: Final = ((0x20, 0x7E), (0x00, 0x1F), (0x7F, 0xFF), (0x100, 0xD7FF),
                       (0xD800, 0xDFFF), (0xFDD0, 0xFDEF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF))


def _random_text(rng: random.Random, max_size: int) -> str:
    chars = []
    for _ in range(rng.randrange(max_size + 1)):
        low, high = _TEXT_RANGES[0] if rng.random() < 0.6 else rng.choice(_TEXT_RANGES)
        chars.append(chr(rng.randint(low, high)))
    return "".join(chars)


def _value_table(size: int = 400) -> tuple[Any, ...]:
    """Values an edit puts anywhere: the edge cases, raw JSON literals, then random JSON
    values (fixed seed)."""
    rng = random.Random(20260208)
    values: list[Any] = [None, True, False, [], {}, *EDGE_NUMBERS, *EDGE_STRINGS,
                         *(Raw(text) for text in RAW_LITERALS)]
    values += [_random_json(rng) for _ in range(size)]
    values += [_random_text(rng, 24) for _ in range(size // 4)]
    return tuple(values)


VALUES: Final = _value_table()
# What a `data` edit names: the type's own keys, the valid telemetry names the run uses,
# names that break the field name rules, and keys a hello may carry extra.
_INVALID_NAMES: Final = tuple(sorted(
    {*BAD_FIELD_NAMES.values(),
     *(t for t in (_random_text(random.Random(n), 10) for n in range(200))
       if p.field_name_problem(t) is not None)}))
_EXTRA_KEYS: Final = ("nominal_v", "site", "model", "deep", "", "\u00e9", "data")


_STORE_NUMBERS: Final = (
    *(v for v in EDGE_NUMBERS if p._is_number(v)),
    -812.5, 750, 1e-300, 123456789012345678901234567890, -(2**1023), 2**1023,
)


def _weighted(groups: list[tuple[int, list[Any]]], size: int = 8000) -> tuple[Any, ...]:
    """A table to draw from with one sampled_from: each group gets its weight's share of
    the slots (members cycled, or a fixed-seed sample of them when they are more)."""
    rng = random.Random(size)
    total = sum(weight for weight, _ in groups)
    table: list[Any] = []
    for weight, members in groups:
        slots = max(1, size * weight // total)
        table += (rng.sample(members, slots) if len(members) > slots
                  else [members[n % len(members)] for n in range(slots)])
    return _shuffled(table)


def _envelope_table(msg_type: str) -> tuple[tuple[Any, ...], ...]:
    """Edits of the envelope, each a ready op: a key set to any value, a key removed, the
    msg_type or device_id of another message, boot/seq/ts set to a number, an unknown
    top-level key (ignored by the protocol, kept in the archive) holding anything."""
    other_types = [*sorted(p.MSG_TYPES - {msg_type}), "command/ack", "measurement"]
    return _weighted([
        (35, [("set", key, v) for key in ENVELOPE_KEYS for v in VALUES]),
        (10, [("del", key) for key in ENVELOPE_KEYS]),
        (10, [("set", "msg_type", t) for t in other_types]),
        (10, [("set", "device_id", d) for d in (*DEVICE_POOL, *EDGE_STRINGS)]),
        (20, [("set", key, n) for key in ("boot", "seq", "ts") for n in _STORE_NUMBERS]),
        (15, [("set", key, v) for key in ("extra", "x" * 40, "", "\u00e9") for v in VALUES]),
    ])


# A valid telemetry field set to a number the store must hold exactly: the number is one
# more draw (hypothesis floats included).
_STORE: Final = "store"


def _data_table(msg_type: str) -> tuple[tuple[Any, ...], ...]:
    """Edits of `data`: its own keys set to any value or removed; for telemetry, fields of
    the valid name pool set to numbers and names that break the rules; for the other types,
    extra keys (kept as sent) holding anything."""
    known = sorted(VALID_DATA[msg_type])
    names = [*_INVALID_NAMES] if msg_type == p.TELEMETRY else [*_EXTRA_KEYS]
    groups: list[tuple[int, list[Any]]] = [
        (35, [("data_set", key, v) for key in known for v in VALUES]),
        (10, [("data_del", key) for key in known]),
        (25, [("data_set", name, v) for name in names for v in VALUES]),
    ]
    if msg_type == p.TELEMETRY:
        groups.append((30, [(_STORE, name) for name in VALID_FIELD_NAMES[:40]]))
    return _weighted(groups)


_number_draws = st.sampled_from(_STORE_NUMBERS) | st.floats(allow_nan=False, allow_infinity=False)
_OPS: Final = {
    kind: (st.sampled_from(_envelope_table(kind)), st.sampled_from(_data_table(kind)))
    for kind in p.MSG_TYPES
}
_op_counts = st.integers(1, 3)


def _op(draw: st.DrawFn, op: tuple[Any, ...]) -> tuple[Any, ...]:
    if op[0] == _STORE:
        return ("data_set", op[1], draw(_number_draws))
    return op


_TEXT_OPS: Final[tuple[tuple[Any, ...], ...]] = (
    ("bom",), ("trailing_comma",),
    *(("key_first", key, raw) for key in ENVELOPE_KEYS for raw in ("1", '"x"', "null", "3")),
    *(("key_last", key, raw) for key in ENVELOPE_KEYS for raw in ("1", "null", "2", '"dc-0001"')),
    *(("wrap", before, after) for before in ("[", " ", "\n", "\r\n", "x", "{}")
      for after in ("]", " ", "", "x", "{}", "\x00")),
    *(("replace", old, new) for old in ('"v": 2', ": ", ", ", '"', "{", "}", "2")
      for new in ("", " ", ":", ",", '"v": 2.0', "\\", "\x00", "\u00a0")),
)
_text_ops = st.sampled_from(_TEXT_OPS)
_BYTE_OPS: Final[tuple[tuple[Any, ...], ...]] = (
    *(("truncate", n / 20) for n in range(20)),
    *(("insert", n / 10, blob) for n in range(11) for blob in INVALID_UTF8),
)
_byte_ops = st.sampled_from(_BYTE_OPS)
# json.dumps(ensure_ascii, indent): escapes or raw UTF-8 (lone surrogates then make invalid
# UTF-8), and whitespace with line breaks (valid JSON, which the archive keeps on one line).
_DUMPS: Final = ((True, None), (False, None), (True, None), (True, 2), (True, 0), (True, "\t"),
                 (False, "\r\n"))
_RAW_PAYLOADS: Final[tuple[bytes, ...]] = (
    b"", b"null", b"[]", b"42", b'"x"', b"{}", b"\xef\xbb\xbf{}", b" ", b"\x00", b"{\"v\":2}",
    b"\xff" * (p.MAX_PAYLOAD_BYTES + 1), b"{" * 70_000, b"x" * p.MAX_PAYLOAD_BYTES,
    *(json.dumps(v).encode() for v in VALUES[:200] if not isinstance(v, Raw)),
    *(_random_text(random.Random(n), 40).encode("utf-8", "surrogatepass") for n in range(100)),
    *(random.Random(n).randbytes(n % 64) for n in range(100)),
)
_raw_payloads = st.sampled_from(_RAW_PAYLOADS)
_pad_sizes = st.sampled_from(PAD_SIZES)
_nest = st.tuples(st.sampled_from(NEST_DEPTHS), st.sampled_from(["set", "data_set"]),
                  st.sampled_from([("[", "]"), ('{"a":', "}")]))
# Weights of the case families, out of 100: most cases are valid messages with a few edits,
# which is what reaches deep into the decoder.
FAMILY_WEIGHTS: Final[dict[str, int]] = {
    "data": 23, "envelope": 22, "valid": 20, "text": 10, "bytes": 8, "mixed": 7, "raw": 6,
    "nesting": 3, "size": 1,
}
# (family, json.dumps options): one draw.
_families = st.sampled_from(_shuffled([
    (family, dumps) for family, weight in FAMILY_WEIGHTS.items() for n in range(weight)
    for dumps in _DUMPS]))


@st.composite
def case_specs(draw: st.DrawFn) -> CaseSpec:
    """One adversarial case of a family picked by FAMILY_WEIGHTS. Edits and values come from
    precomputed tables (one draw each), so a case costs hypothesis about five draws, not
    dozens: a fuzz run makes 100,000 of them."""
    topic, msg_type = draw(_topics)
    family, dumps = draw(_families)
    envelope_ops, data_ops = _OPS[msg_type]
    if family == "valid":
        return CaseSpec(family, topic, msg_type, (), dumps)
    if family in ("envelope", "data"):
        table = envelope_ops if family == "envelope" else data_ops
        ops = tuple(_op(draw, draw(table)) for _ in range(draw(_op_counts)))
        return CaseSpec(family, topic, msg_type, ops, dumps)
    if family == "text":
        return CaseSpec(family, topic, msg_type, (), dumps, text_ops=(draw(_text_ops),))
    if family == "bytes":
        return CaseSpec(family, topic, msg_type, (), dumps, byte_ops=(draw(_byte_ops),))
    if family == "nesting":
        depth, where, (opening, closing) = draw(_nest)
        deep = Raw(opening * (depth - 1) + "1" + closing * (depth - 1))
        return CaseSpec(family, topic, msg_type, ((where, "deep", deep),), dumps)
    if family == "size":
        return CaseSpec(family, topic, msg_type, (("pad_to", draw(_pad_sizes)),), dumps)
    if family == "raw":
        return CaseSpec(family, topic, msg_type, raw=draw(_raw_payloads))
    ops = (_op(draw, draw(envelope_ops)), _op(draw, draw(data_ops)))
    text_ops = (draw(_text_ops),) if draw(st.booleans()) else ()
    byte_ops = (draw(_byte_ops),) if draw(st.booleans()) else ()
    return CaseSpec(family, topic, msg_type, ops, dumps, text_ops=text_ops, byte_ops=byte_ops)
