"""MQTT protocol v2: the one place that owns topics and envelopes.

Pure functions over values, no I/O. `decode` turns what arrives on a topic into a validated
`Message` or a `Rejection` carrying a machine-readable reason; it is on the collector's
per-message path, so it is written for speed and it never raises. A well-formed telemetry
message (nearly all traffic) is validated while it is parsed, into a typed structure
(msgspec); anything that does not fit goes through `decode_reference`, which parses first
and then checks step by step, and which alone decides every rejection and its reason.
What the stores can hold is decided here too (field names, tag values, counts, times), so a
message the stores would refuse is rejected at intake; stores/timeseries.py takes these
rules from this module.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, TypeGuard

import msgspec
import orjson

VERSION: Final = 2
MAX_PAYLOAD_BYTES: Final = 64 * 1024
# The largest MQTT packet a valid message needs: its payload, its topic (under 100 bytes) and
# the headers, with room to spare. The collector's decoder skips a larger PUBLISH as it streams
# in, keeping only its head, and rejects it as too_large: one huge message costs no memory.
MAX_PACKET_BYTES: Final = MAX_PAYLOAD_BYTES + 512
# The broker's own cap (mosquitto max_packet_size in the embedded, test and shipped configs):
# a client sending a larger packet is disconnected and the packet never queued. Above
# MAX_PACKET_BYTES on purpose, so a meter's moderately oversized message still reaches the
# collector and is counted and archived as too_large (an operator sees why), while nothing
# huge ever sits in the broker's queues.
BROKER_MAX_PACKET_BYTES: Final = 256 * 1024
# What a too_large rejection keeps of its payload, with the payload's length in its detail:
# archiving (and spooling) a huge payload whole multiplied its cost several times.
TOO_LARGE_PREFIX_BYTES: Final = 1024
# The longest string a hello, status, command_ack or ota_status may carry (a command's detail,
# an OTA error): far beyond an honest message, short enough for a terminal line and a log.
MAX_TEXT_CHARS: Final = 1024
# Fields in one telemetry message: a meter sends about ten. Bounds what one message can add to
# the stores' field names (a series per name); the collector also bounds them per device type.
MAX_TELEMETRY_FIELDS: Final = 64
TOPIC_ROOT: Final = "iot"

DEVICE_ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
# device_type, fw_version, command_id, campaign_id and command names: short, printable tokens
# that are safe as an InfluxDB tag, a database key and in a log line.
LABEL_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}"
_LABEL_RE = re.compile(LABEL_PATTERN)
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_SIGNATURE_RE = re.compile(r"[A-Za-z0-9+/]{86}==")

# boot, seq and sizes must fit a signed 64-bit integer (PostgreSQL BIGINT, SQLite INTEGER,
# an InfluxDB integer field).
MAX_COUNT: Final = 2**63 - 1
# ts must be a time InfluxDB can store and a query can reach, its exclusive end (ts + 1 ms)
# included, both as nanoseconds in an int64: the year 2262.
MAX_TS_MS: Final = MAX_COUNT // 1_000_000 - 1
# A JSON integer beyond this cannot become a float (telemetry is stored as floats).
_FLOAT_MAX: Final = sys.float_info.max
# Deepest nesting of arrays and objects a message may have (its top-level object is depth 1).
# Python's json parser alone gives up where the caller's stack runs out, so without a fixed
# limit the same payload would be accepted on a shallow stack and refused on a deeper one, and
# a sink re-parsing an accepted payload deeper in its own stack could fail on it for ever.
# Far below any caller's remaining recursion budget; far above what a meter sends.
MAX_JSON_DEPTH: Final = 128

TELEMETRY: Final = "telemetry"
HELLO: Final = "hello"
STATUS: Final = "status"
COMMAND_ACK: Final = "command_ack"
OTA_STATUS: Final = "ota_status"

# msg_type -> the topic suffix after iot/{device_id}/ (device -> server direction).
DEVICE_TOPIC_SUFFIX: Final[dict[str, str]] = {
    TELEMETRY: "telemetry",
    HELLO: "hello",
    STATUS: "status",
    COMMAND_ACK: "command/ack",
    OTA_STATUS: "ota/status",
}
_SUFFIX_TO_TYPE: Final = {suffix: kind for kind, suffix in DEVICE_TOPIC_SUFFIX.items()}
MSG_TYPES: Final = frozenset(DEVICE_TOPIC_SUFFIX)

COMMAND_SUFFIX: Final = "command"
OTA_SUFFIX: Final = "ota"

COMMAND_NAMES: Final = frozenset({"ping", "reboot", "set_interval", "set_config"})
COMMAND_RESULTS: Final = frozenset({"accepted", "done", "rejected", "failed"})
OTA_STATES: Final = frozenset(
    {"downloading", "verifying", "installing", "rebooting", "done", "failed"}
)
STATUS_STATES: Final = frozenset({"online", "offline"})
DEVICE_TYPES: Final = frozenset({"power_meter_dc", "power_meter_ac"})

# Telemetry field names: safe as a double-quoted InfluxQL identifier (no quote, backslash or
# control character) and in line protocol once commas, spaces and '=' are escaped.
FIELD_NAME_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_ .,=:/%+-]{0,127}"
_FIELD_NAME_RE = re.compile(FIELD_NAME_PATTERN)
# Names a stored point already uses for something else: InfluxDB's time column, the integer
# fields boot/seq and the tags. A meter sending one would collide with them: a bad_field.
RESERVED_TELEMETRY_FIELDS: Final = frozenset({"time", "boot", "seq", "device_id", "device_type"})
# Tag values (device_id, device_type): a backslash has no escape that InfluxDB 1.x, 2.x and
# 3.x read alike, and line protocol cannot carry a line break at all. DEVICE_ID_PATTERN and
# LABEL_PATTERN (the device_type of a hello) lie within these rules.
MAX_TAG_LENGTH: Final = 256
_BAD_TAG_CHAR_RE = re.compile(r"[\\\x00-\x1f\x7f]")

# Every reason a device -> server message can be rejected for, with what it means.
# docs/protocol.md lists the same table; a test keeps the two in step.
REJECTION_REASONS: Final[dict[str, str]] = {
    "bad_topic": "the topic is not iot/{device_id}/{telemetry|hello|status|command/ack|ota/status}",
    "too_large": f"the payload is over {MAX_PAYLOAD_BYTES} bytes (only its first "
    f"{TOO_LARGE_PREFIX_BYTES} bytes are kept, its length is in the detail)",
    "not_utf8": "the payload is not valid UTF-8",
    "not_json": "the payload is not JSON",
    "not_object": "the payload is JSON but not an object",
    "bad_version": 'the "v" field is missing or not the integer 2',
    "bad_device_id": 'the "device_id" field is missing or does not match the device id pattern',
    "device_mismatch": 'the "device_id" field differs from the topic\'s device segment',
    "type_mismatch": 'the "msg_type" field is missing, unknown, or does not match the topic',
    "bad_seq": '"boot" or "seq" is missing (allowed on status only) or not an integer '
    "0 .. 2^63-1",
    "bad_ts": f'"ts" is missing or not an integer of milliseconds 0 .. {MAX_TS_MS}',
    "bad_field": '"data" is missing or not an object, a field in it has the wrong type or '
    "value, a telemetry field name breaks the field name rules, the payload holds "
    f"NaN/Infinity, telemetry has more than {MAX_TELEMETRY_FIELDS} fields, or a string holds "
    "a control, format or separator character (escape sequences included) or is longer than "
    f"{MAX_TEXT_CHARS} characters",
    "unknown_device": "the device is not registered and auto-registration is off (collector)",
    "field_budget": "the telemetry brings field names its device type has no room for: each "
    "type may use IOTMETER_FIELD_BUDGET distinct names (collector)",
}


class Message(msgspec.Struct, frozen=True):
    """A validated device -> server message. `raw` is the payload exactly as received.
    `boot` and `seq` are None for status messages: they take no part in dedup or gaps.
    A frozen msgspec Struct rather than a frozen dataclass: one is made per message, and a
    frozen dataclass's __init__ cost as much as parsing the payload."""

    device_id: str
    msg_type: str
    boot: int | None
    seq: int | None
    ts: int
    data: dict[str, Any]
    raw: bytes


@dataclass(slots=True, frozen=True)
class Rejection:
    """Why a message was refused, with enough context to archive it under `_rejected/`."""

    reason: str
    detail: str
    topic: str
    raw: bytes = field(repr=False)
    device_id: str | None = None


def device_topic(device_id: str, msg_type: str) -> str:
    """The topic a device publishes `msg_type` on."""
    return f"{TOPIC_ROOT}/{device_id}/{DEVICE_TOPIC_SUFFIX[msg_type]}"


def command_topic(device_id: str) -> str:
    return f"{TOPIC_ROOT}/{device_id}/{COMMAND_SUFFIX}"


def ota_topic(device_id: str) -> str:
    return f"{TOPIC_ROOT}/{device_id}/{OTA_SUFFIX}"


def collector_subscriptions(share_group: str | None = None) -> list[str]:
    """The five device -> server topic filters, optionally as an MQTT shared subscription."""
    filters = [f"{TOPIC_ROOT}/+/{suffix}" for suffix in DEVICE_TOPIC_SUFFIX.values()]
    if share_group:
        return [f"$share/{share_group}/{f}" for f in filters]
    return filters


def device_subscriptions(device_id: str) -> list[str]:
    """What a device subscribes to: its command and OTA topics."""
    return [command_topic(device_id), ota_topic(device_id)]


def is_valid_device_id(device_id: str) -> bool:
    return _DEVICE_ID_RE.fullmatch(device_id) is not None


def is_valid_label(text: str) -> bool:
    """A device type, firmware version, command or campaign id, or command name."""
    return _LABEL_RE.fullmatch(text) is not None


def field_name_problem(name: object) -> str | None:
    """Why `name` cannot be a telemetry field name (in a message or a store), or None."""
    if type(name) is not str or _FIELD_NAME_RE.fullmatch(name) is None:
        return f"field name {_show(name)} does not match {FIELD_NAME_PATTERN}"
    if name in RESERVED_TELEMETRY_FIELDS:
        return f"field name {name!r} is reserved"
    return None


def tag_problem(tag: str, value: object) -> str | None:
    """Why `value` cannot be the value of tag `tag` in the time-series store, or None."""
    if type(value) is not str or not value or len(value) > MAX_TAG_LENGTH:
        return f"{tag} {_show(value)} must be a non-empty string of at most {MAX_TAG_LENGTH}"
    if _BAD_TAG_CHAR_RE.search(value):
        return f"{tag} {_show(value)} contains a backslash or a control character"
    return None


def parse_topic(topic: str) -> tuple[str, str] | None:
    """(device_id, msg_type) for a device -> server topic, or None."""
    parts = topic.split("/", 2)
    if len(parts) != 3 or parts[0] != TOPIC_ROOT:
        return None
    kind = _SUFFIX_TO_TYPE.get(parts[2])
    if kind is None or _DEVICE_ID_RE.fullmatch(parts[1]) is None:
        return None
    return parts[1], kind


# Parsed device topics: a fleet publishes on a few topics each, over and over. Bounded so a
# stream of distinct topics cannot grow it without end; only valid topics are kept.
_TOPIC_CACHE: dict[str, tuple[str, str]] = {}
_TOPIC_CACHE_MAX: Final = 1 << 16
# Telemetry field names found good: a fleet sends the same few dozen over and over, so each
# is checked once (and a message's names are looked up at C speed). Bounded like the topic
# cache.
_GOOD_FIELD_NAMES: set[str] = set()
_GOOD_FIELD_NAMES_MAX: Final = 1 << 16


def _is_count(value: object, limit: int = MAX_COUNT) -> TypeGuard[int]:
    # bool is an int subclass; True is not a sequence number.
    return type(value) is int and 0 <= value <= limit


def _is_number(value: object) -> TypeGuard[float]:
    # Finite and representable as a float; NaN fails both comparisons.
    kind = type(value)
    return (kind is float or kind is int) and -_FLOAT_MAX <= value <= _FLOAT_MAX  # type: ignore[operator]


def _is_label(value: object) -> bool:
    return type(value) is str and _LABEL_RE.fullmatch(value) is not None


def _show(value: object) -> str:
    # Details are archived with the rejected payload; a 60 KiB repr helps no one.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str) -> float:
    # json accepts NaN/Infinity; the protocol does not. Raising here rejects the message as
    # bad_field wherever the constant sits, before any of it is looked at.
    raise _NonFinite(name)


_decode_json = json.JSONDecoder(parse_constant=_reject_constant).decode


class Unparsable(ValueError):
    """A payload that is not a JSON text a message can be: `reason` is a rejection reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def loads(payload: bytes) -> Any:
    """The payload parsed as JSON, or Unparsable. Integers beyond 64 bits come back as the
    nearest float (the stores keep numbers as floats); everything else is exactly what the
    standard library's parser gives."""
    try:
        # orjson parses a meter's message about three times as fast as json, which made it
        # the largest single cost of the collector's pipeline (docs/performance.md). What it
        # refuses goes to json below, which says why or takes what orjson is stricter about
        # (lone surrogates, 1e400 as inf, nesting past 1024), so verdicts do not change.
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _loads_slowly(payload)
    if _too_deep(payload, obj):
        raise Unparsable("not_json", _TOO_DEEP)
    return obj


def _loads_slowly(payload: bytes) -> Any:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unparsable("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        obj = _decode_json(text)
    except _NonFinite as exc:
        raise Unparsable("bad_field", f"non-finite number {exc.args[0]}") from None
    except RecursionError:
        # Deeper than the parser could go from here, so deeper than MAX_JSON_DEPTH: the same
        # verdict and detail as the check below gives, whatever the caller's stack depth.
        raise Unparsable("not_json", _TOO_DEEP) from None
    except ValueError as exc:
        raise Unparsable("not_json", str(exc)[:200]) from None
    if _too_deep(payload, obj):
        raise Unparsable("not_json", _TOO_DEEP)
    return obj


_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
_FiniteFloat = Annotated[float, msgspec.Meta(ge=-_FLOAT_MAX, le=_FLOAT_MAX)]
# Integers the reference parser keeps as ints (it reads one beyond 64 bits as the nearest
# float); the few above int64 it also keeps take the reference path.
_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=MAX_COUNT)]


class _Telemetry(msgspec.Struct, forbid_unknown_fields=True):
    """A telemetry payload as a meter sends it, checked as it is parsed. Only the envelope's
    own keys, so nothing nested or unchecked can pass; names and values that still need a
    look (v, device_id, msg_type, field names) are compared in `_telemetry`."""

    v: int
    device_id: str
    msg_type: str
    boot: _Count
    seq: _Count
    ts: Annotated[int, msgspec.Meta(ge=0, le=MAX_TS_MS)]
    # int or float as written, as the reference parser gives them (numeric_fields makes
    # floats); a float outside the finite range (1e400) fails the bound.
    data: Annotated[dict[str, _Int64 | _FiniteFloat],
                    msgspec.Meta(min_length=1, max_length=MAX_TELEMETRY_FIELDS)]


_decode_telemetry = msgspec.json.Decoder(_Telemetry).decode


def _telemetry(device_id: str, payload: bytes) -> Message | None:
    """The Message of a well-formed telemetry payload on `device_id`'s topic, or None when
    anything about it needs decode_reference (which then accepts it or says why not)."""
    try:
        t = _decode_telemetry(payload)
    except msgspec.DecodeError:  # ValidationError included
        return None
    data = t.data
    # Field names are known good only once decode_reference has checked them, so a new
    # name takes the reference path once.
    if (t.device_id != device_id or t.v != VERSION or t.msg_type != TELEMETRY
            or not _GOOD_FIELD_NAMES.issuperset(data)):
        return None
    return Message(device_id, TELEMETRY, t.boot, t.seq, t.ts, data, payload)


def decode(topic: str, payload: bytes) -> Message | Rejection:
    """Validate one device -> server message. Never raises: any flaw is a Rejection.
    The same verdict as decode_reference, faster for telemetry."""
    parsed = _TOPIC_CACHE.get(topic)
    if parsed is not None and parsed[1] == TELEMETRY and len(payload) <= MAX_PAYLOAD_BYTES:
        message = _telemetry(parsed[0], payload)
        if message is not None:
            return message
    return decode_reference(topic, payload)


def decode_reference(topic: str, payload: bytes) -> Message | Rejection:
    """Validate one device -> server message by parsing it and then checking each rule in
    turn: every rejection's reason and detail come from here. Never raises."""
    parsed = _TOPIC_CACHE.get(topic)
    if parsed is None:
        parsed = parse_topic(topic)
        if parsed is None:
            if len(payload) > MAX_PAYLOAD_BYTES:  # kept bounded, whatever the reason
                return too_large(topic, payload, len(payload))
            detail = f"topic {_show(topic)} is not a device topic"
            return Rejection("bad_topic", detail, topic, payload)
        if len(_TOPIC_CACHE) >= _TOPIC_CACHE_MAX:
            _TOPIC_CACHE.clear()
        _TOPIC_CACHE[topic] = parsed
    topic_device, msg_type = parsed

    if len(payload) > MAX_PAYLOAD_BYTES:
        return too_large(topic, payload[:TOO_LARGE_PREFIX_BYTES], len(payload))
    try:
        obj = loads(payload)
    except Unparsable as exc:
        return Rejection(exc.reason, exc.detail, topic, payload, topic_device)
    if type(obj) is not dict:
        detail = f"JSON {type(obj).__name__}, expected an object"
        return Rejection("not_object", detail, topic, payload, topic_device)

    v = obj.get("v")
    if type(v) is not int or v != VERSION:
        detail = f"v={_show(v)}, expected {VERSION}"
        return Rejection("bad_version", detail, topic, payload, topic_device)
    device_id = obj.get("device_id")
    if device_id != topic_device:
        # The topic's segment already matched the pattern, so equal means valid.
        if type(device_id) is not str or _DEVICE_ID_RE.fullmatch(device_id) is None:
            detail = f"device_id={_show(device_id)}"
            return Rejection("bad_device_id", detail, topic, payload, topic_device)
        detail = f"device_id {device_id!r} on a topic of {topic_device!r}"
        return Rejection("device_mismatch", detail, topic, payload, topic_device)
    if obj.get("msg_type") != msg_type:
        detail = f"msg_type={_show(obj.get('msg_type'))} on a {msg_type} topic"
        return Rejection("type_mismatch", detail, topic, payload, topic_device)

    boot = obj.get("boot")
    seq = obj.get("seq")
    if not (
        type(boot) is int and type(seq) is int and 0 <= boot <= MAX_COUNT and 0 <= seq <= MAX_COUNT
    ) and (
        # The Last Will is composed at connect time, so status may omit them; present, they
        # must still be well formed.
        msg_type != STATUS
        or not (boot is None or _is_count(boot))
        or not (seq is None or _is_count(seq))
    ):
        detail = f"boot={_show(boot)} seq={_show(seq)}"
        return Rejection("bad_seq", detail, topic, payload, topic_device)
    ts = obj.get("ts")
    if type(ts) is not int or not 0 <= ts <= MAX_TS_MS:
        return Rejection("bad_ts", f"ts={_show(ts)}", topic, payload, topic_device)
    data = obj.get("data")
    if type(data) is not dict:
        detail = f"data is {type(data).__name__}, expected an object"
        return Rejection("bad_field", detail, topic, payload, topic_device)

    problem: str | None = None
    if msg_type == TELEMETRY and len(data) > MAX_TELEMETRY_FIELDS:
        problem = f"telemetry has {len(data)} fields, more than {MAX_TELEMETRY_FIELDS}"
    elif msg_type == TELEMETRY:
        # Inline: this loop runs for every field of every measurement.
        for name, value in data.items():
            kind = type(value)
            if (kind is not float and kind is not int) or not -_FLOAT_MAX <= value <= _FLOAT_MAX:
                problem = f"data[{_show(name)}]={_show(value)} is not a finite number"
                break
        else:
            # Names matching FIELD_NAME_PATTERN are ASCII without control characters and the
            # values are numbers, so telemetry leaves nothing for _text_problem to find.
            if not data:
                problem = "telemetry data is empty"
            elif not _GOOD_FIELD_NAMES.issuperset(data):
                problem = _field_names_problem(data)
    else:
        problem = _DATA_CHECKS[msg_type](data)
        # Every string of these (rare) messages: what a device writes here reaches stores,
        # logs and operators' terminals.
        if problem is None:
            problem = _text_problem(data)
    if problem is not None:
        return Rejection("bad_field", problem, topic, payload, topic_device)

    if msg_type == STATUS:
        boot = seq = None
    return Message(device_id, msg_type, boot, seq, ts, data, payload)


def too_large(topic: str, prefix: bytes, size: int) -> Rejection:
    """The rejection of a payload of `size` bytes over MAX_PAYLOAD_BYTES, of which only `prefix`
    (at most TOO_LARGE_PREFIX_BYTES) is kept. A topic that is no device topic is a bad_topic,
    as it would be for a small payload."""
    prefix = prefix[:TOO_LARGE_PREFIX_BYTES]
    parsed = _TOPIC_CACHE.get(topic) or parse_topic(topic)
    kept = f"{size} bytes > {MAX_PAYLOAD_BYTES}; the first {len(prefix)} kept"
    if parsed is None:
        detail = f"topic {_show(topic)} is not a device topic; {kept}"
        return Rejection("bad_topic", detail, topic, prefix)
    return Rejection("too_large", kept, topic, prefix, parsed[0])


_TOO_DEEP: Final = f"nesting deeper than {MAX_JSON_DEPTH} levels"


def _too_deep(payload: bytes, obj: object) -> bool:
    """True if `obj`, parsed from `payload`, nests deeper than MAX_JSON_DEPTH."""
    # Nesting that deep takes that many opening and as many closing brackets: a short
    # payload cannot, and in a longer one they are counted at C speed, so the walk below
    # runs only for payloads holding more than MAX_JSON_DEPTH of them (never for a meter's).
    if (len(payload) <= 2 * MAX_JSON_DEPTH
            or payload.count(b"[") + payload.count(b"{") <= MAX_JSON_DEPTH):
        return False
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if type(item) is dict else item if type(item) is list else ()
        for child in children:
            if type(child) is dict or type(child) is list:
                if depth + 1 > MAX_JSON_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def _field_names_problem(data: dict[str, Any]) -> str | None:
    """Why a telemetry field name in `data` cannot be stored, or None; good names are
    remembered."""
    for name in data:
        if name not in _GOOD_FIELD_NAMES:
            problem = field_name_problem(name)
            if problem is not None:
                return problem
            if len(_GOOD_FIELD_NAMES) >= _GOOD_FIELD_NAMES_MAX:
                _GOOD_FIELD_NAMES.clear()
            _GOOD_FIELD_NAMES.add(name)
    return None


def _text_problem(data: dict[str, Any]) -> str | None:
    """Strings a store cannot hold: lone surrogates (not encodable as UTF-8) and NUL (refused
    by PostgreSQL text); strings an operator's terminal must not get: control, format (bidi
    override) and separator characters, escape sequences included (they would rewrite the
    screen); and
    strings longer than MAX_TEXT_CHARS."""
    stack: list[Any] = [data]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            for key, value in item.items():
                stack.append(key)
                stack.append(value)
        elif type(item) is list:
            stack.extend(item)
        elif type(item) is str:
            if item.isprintable() and len(item) <= MAX_TEXT_CHARS:
                continue  # nearly every string: one check at C speed
            if len(item) > MAX_TEXT_CHARS:
                return f"string {_show(item)} is longer than {MAX_TEXT_CHARS} characters"
            if "\x00" in item:
                return f"string {_show(item)} holds a NUL character"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"string {_show(item)} holds a lone surrogate"
            return f"string {_show(item)} holds a control or unprintable character"
    return None


def _check_hello(data: dict[str, Any]) -> str | None:
    if not _is_label(data.get("device_type")):
        return f"data.device_type={_show(data.get('device_type'))}"
    if not _is_label(data.get("fw_version")):
        return f"data.fw_version={_show(data.get('fw_version'))}"
    heartbeat = data.get("heartbeat_s")
    if not _is_number(heartbeat) or heartbeat <= 0:
        return f"data.heartbeat_s={_show(heartbeat)}"
    uptime = data.get("uptime_s")
    if not _is_number(uptime) or uptime < 0:
        return f"data.uptime_s={_show(uptime)}"
    return None


def _check_status(data: dict[str, Any]) -> str | None:
    state = data.get("state")
    # Type first: an unhashable value (a list) must not reach the set lookup.
    if type(state) is not str or state not in STATUS_STATES:
        return f"data.state={_show(state)}"
    return None


def _check_command_ack(data: dict[str, Any]) -> str | None:
    if not _is_label(data.get("command_id")):
        return f"data.command_id={_show(data.get('command_id'))}"
    result = data.get("result")
    if type(result) is not str or result not in COMMAND_RESULTS:
        return f"data.result={_show(result)}"
    detail = data.get("detail", "")
    if type(detail) is not str:
        return f"data.detail={_show(detail)}"
    return None


def _check_ota_status(data: dict[str, Any]) -> str | None:
    if not _is_label(data.get("campaign_id")):
        return f"data.campaign_id={_show(data.get('campaign_id'))}"
    if not _is_label(data.get("fw_version")):
        return f"data.fw_version={_show(data.get('fw_version'))}"
    state = data.get("state")
    if type(state) is not str or state not in OTA_STATES:
        return f"data.state={_show(state)}"
    progress = data.get("progress_pct", 0)
    if not _is_number(progress) or not 0 <= progress <= 100:
        return f"data.progress_pct={_show(progress)}"
    error = data.get("error")
    if error is not None and type(error) is not str:
        return f"data.error={_show(error)}"
    return None


_DATA_CHECKS = {
    HELLO: _check_hello,
    STATUS: _check_status,
    COMMAND_ACK: _check_command_ack,
    OTA_STATUS: _check_ota_status,
}


def numeric_fields(data: dict[str, Any]) -> dict[str, float]:
    """Telemetry values as floats: a JSON 750 becomes 750.0, so InfluxDB never meets a
    field-type conflict."""
    return {name: float(value) for name, value in data.items()}


# --- encoding -----------------------------------------------------------------------------

def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def encode_device_message(
    device_id: str,
    msg_type: str,
    data: dict[str, Any],
    *,
    ts: int,
    boot: int | None = None,
    seq: int | None = None,
) -> bytes:
    """A device -> server payload (used by the simulator and tests)."""
    obj: dict[str, Any] = {"v": VERSION, "device_id": device_id, "msg_type": msg_type}
    if boot is not None:
        obj["boot"] = boot
    if seq is not None:
        obj["seq"] = seq
    obj["ts"] = ts
    obj["data"] = data
    return _dumps(obj)


def _envelope_problem(obj: dict[str, Any], id_key: str) -> str | None:
    v = obj.get("v")
    if type(v) is not int or v != VERSION:
        return f"v={_show(v)}, expected {VERSION}"
    if not _is_label(obj.get(id_key)):
        return f"{id_key}={_show(obj.get(id_key))}"
    ts, expires_ts = obj.get("ts"), obj.get("expires_ts")
    if not _is_count(ts, MAX_TS_MS):
        return f"ts={_show(ts)}"
    if not _is_count(expires_ts, MAX_TS_MS) or expires_ts <= ts:
        return f"expires_ts={_show(expires_ts)} is not after ts={ts}"
    return None


def _command_problem(obj: dict[str, Any]) -> str | None:
    problem = _envelope_problem(obj, "command_id")
    if problem is None and not _is_label(obj.get("name")):
        problem = f"name={_show(obj.get('name'))}"
    if problem is None and type(obj.get("params")) is not dict:
        problem = f"params={_show(obj.get('params'))}, expected an object"
    return problem


def _ota_problem(obj: dict[str, Any]) -> str | None:
    problem = _envelope_problem(obj, "campaign_id")
    if problem is not None:
        return problem
    if not _is_label(obj.get("fw_version")):
        return f"fw_version={_show(obj.get('fw_version'))}"
    url = obj.get("url")
    if type(url) is not str or not url.startswith(("https://", "http://")):
        return f"url={_show(url)}, expected http(s)://..."
    sha256 = obj.get("sha256")
    if type(sha256) is not str or _SHA256_RE.fullmatch(sha256) is None:
        return f"sha256={_show(sha256)}, expected 64 lowercase hex digits"
    size = obj.get("size")
    if not _is_count(size) or size == 0:
        return f"size={_show(size)}, expected a byte count > 0"
    signature = obj.get("signature")
    if signature is not None and not _is_signature(signature):
        return f"signature={_show(signature)}, expected a base64 Ed25519 signature"
    return None


def _is_signature(value: Any) -> bool:
    # 64 bytes in base64: 86 characters and two '=' of padding.
    return type(value) is str and _SIGNATURE_RE.fullmatch(value) is not None


def encode_command(
    command_id: str, name: str, params: dict[str, Any], *, ts: int, expires_ts: int
) -> bytes:
    """A server -> device command on iot/{device_id}/command. Raises ValueError on a value
    the protocol does not allow (unknown command name, expiry not after ts, ...)."""
    obj = {
        "v": VERSION,
        "command_id": command_id,
        "ts": ts,
        "expires_ts": expires_ts,
        "name": name,
        "params": params,
    }
    problem = _command_problem(obj)
    if problem is None and name not in COMMAND_NAMES:
        problem = f"unknown command {name!r}; one of {sorted(COMMAND_NAMES)}"
    if problem is not None:
        raise ValueError(f"command: {problem}")
    return _dumps(obj)


def encode_ota_offer(
    campaign_id: str,
    *,
    fw_version: str,
    url: str,
    sha256: str,
    size: int,
    ts: int,
    expires_ts: int,
    signature: str | None = None,
) -> bytes:
    """A server -> device firmware offer on iot/{device_id}/ota. Raises ValueError on a value
    the protocol does not allow. `signature` (base64 Ed25519, see control.signing) is left
    out for an unsigned image."""
    obj = {
        "v": VERSION,
        "campaign_id": campaign_id,
        "ts": ts,
        "expires_ts": expires_ts,
        "fw_version": fw_version,
        "url": url,
        "sha256": sha256,
        "size": size,
    }
    if signature is not None:
        obj["signature"] = signature
    problem = _ota_problem(obj)
    if problem is not None:
        raise ValueError(f"OTA offer: {problem}")
    return _dumps(obj)


@dataclass(slots=True, frozen=True)
class ServerMessage:
    """A server -> device message as a device reads it."""

    kind: str  # "command" or "ota"
    id: str  # command_id or campaign_id
    ts: int
    expires_ts: int
    body: dict[str, Any]


_SERVER_KINDS: Final = {
    COMMAND_SUFFIX: ("command_id", _command_problem),
    OTA_SUFFIX: ("campaign_id", _ota_problem),
}


def decode_server_message(topic: str, payload: bytes) -> ServerMessage | None:
    """Parse a command or OTA offer on iot/{device_id}/command|ota; None if it is not a
    well-formed one. Unknown command names pass: the device acks them `rejected`."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != TOPIC_ROOT or not is_valid_device_id(parts[1]):
        return None
    kind = _SERVER_KINDS.get(parts[2])
    if kind is None or len(payload) > MAX_PAYLOAD_BYTES:
        return None
    id_key, check = kind
    try:
        obj = loads(payload)
    except Unparsable:
        return None
    if type(obj) is not dict or check(obj) is not None:
        return None
    return ServerMessage(parts[2], obj[id_key], obj["ts"], obj["expires_ts"], obj)
