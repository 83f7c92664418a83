"""Faults a simulated device injects to exercise the collector: the `--faults` spec parser and
the per-message decisions, drawn from a seeded RNG so a run can be repeated.

    drop=P        the message takes its seq but is never published: a real gap
    dup=P         the message is published twice (same boot and seq)
    reorder=P     the message is held back and published right after the next one
    disconnect=P  after publishing, the TCP connection is dropped without DISCONNECT, so the
                  broker fires the Last Will; the device reconnects and replays its buffer
    malformed=P   a garbage payload (one the collector must reject) is published on the
                  telemetry topic before the message; it takes no seq
    clock_skew=S  every device's clock runs S seconds off (negative: behind); added to `ts`

P is a probability per message in [0, 1], drawn independently for each message with a seq.

Data faults (labelled episodes, for scoring anomaly detection): P is the probability per
telemetry reading that an episode starts while none runs on the device. Each episode is
recorded as a label (kind, field, start, end, when it became observable) in the summary.

    drift=P               voltage_v reads high by an offset growing 0.2 % of nominal a second
    stuck=P               voltage_v repeats the episode's first reading
    counter_regression=P  energy_import_kwh steps back by 1 % (and stays back)
    counter_jump=P        energy_import_kwh steps forward by 5 % (and stays ahead)
    interval_change=P     the reporting interval is five times longer
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields
from typing import Any, Final

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.errors import IotmeterError

PROBABILITIES: Final = ("drop", "dup", "reorder", "disconnect", "malformed")
EPISODES: Final = ("drift", "stuck", "counter_regression", "counter_jump", "interval_change")
EPISODE_MS: Final = 300_000  # simulated time an episode lasts
DRIFT_PER_S: Final = 0.002  # of the field's value at the episode's start
DRIFT_OBSERVABLE: Final = 0.05  # a drift is "observable" once 5 % off (the label says when)
INTERVAL_SCALE: Final = 5.0
MAX_CLOCK_SKEW_S: Final = 366 * 86400.0


class FaultSpecError(IotmeterError, ValueError):
    """A bad --faults spec; `str()` is the one line shown to the operator."""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    drop: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    disconnect: float = 0.0
    malformed: float = 0.0
    clock_skew: float = 0.0  # seconds
    drift: float = 0.0
    stuck: float = 0.0
    counter_regression: float = 0.0
    counter_jump: float = 0.0
    interval_change: float = 0.0

    @property
    def any_per_message(self) -> bool:
        return any(getattr(self, name) > 0 for name in PROBABILITIES)

    @property
    def any_episode(self) -> bool:
        return any(getattr(self, name) > 0 for name in EPISODES)

    def __str__(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name):g}" for f in fields(self)
                 if getattr(self, f.name)]
        return ",".join(parts) or "none"

    @classmethod
    def parse(cls, spec: str | None) -> FaultSpec:
        """Parse `drop=0.01,dup=0.01,...`; empty, None or "none" means no faults."""
        if spec is None or spec.strip() in ("", "none"):
            return cls()
        values: dict[str, float] = {}
        for item in spec.split(","):
            name, sep, text = item.strip().partition("=")
            name = name.strip()
            if not sep or not name:
                raise FaultSpecError(f"--faults: {item.strip()!r} is not NAME=VALUE")
            if name not in PROBABILITIES and name not in EPISODES and name != "clock_skew":
                known = ", ".join((*PROBABILITIES, "clock_skew", *EPISODES))
                raise FaultSpecError(f"--faults: unknown fault {name!r} (known: {known})")
            if name in values:
                raise FaultSpecError(f"--faults: {name} given twice")
            try:
                value = float(text)
            except ValueError:
                raise FaultSpecError(f"--faults: {name}={text.strip()!r} is not a number") \
                    from None
            if not math.isfinite(value):
                raise FaultSpecError(f"--faults: {name}={text.strip()} is not finite")
            if name == "clock_skew":
                if abs(value) > MAX_CLOCK_SKEW_S:
                    raise FaultSpecError(f"--faults: clock_skew={value:g} s is over a year")
            elif not 0.0 <= value <= 1.0:
                raise FaultSpecError(f"--faults: {name}={value:g} is not a probability in [0, 1]")
            values[name] = value
        return cls(**values)


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to do with one message."""

    drop: bool = False
    dup: bool = False
    reorder: bool = False
    disconnect: bool = False
    malformed: bool = False


NO_FAULT: Final = FaultDecision()


class FaultInjector:
    """Per-device decisions; each probability is drawn for every message, in a fixed order,
    so the same seed gives the same faults."""

    __slots__ = ("_garbage_turn", "_rng", "_spec", "active", "episodes")

    def __init__(self, spec: FaultSpec, rng: random.Random) -> None:
        self._rng = rng
        # Its own RNG stream, seeded without drawing (the hash of an int tuple is stable), so
        # adding data faults leaves the per-message draws of a seed unchanged.
        self.episodes = DataFaults(random.Random(hash(rng.getstate())))
        # Devices start the garbage rotation at different kinds, so a fleet shows them all.
        self._garbage_turn = rng.randrange(len(_GARBAGE))
        self.spec = spec

    @property
    def spec(self) -> FaultSpec:
        return self._spec

    @spec.setter
    def spec(self, spec: FaultSpec) -> None:
        self._spec = spec
        # Read for every message: a plain attribute, not the spec's computed property.
        self.active = spec.any_per_message
        self.episodes.spec = spec

    @property
    def skew_ms(self) -> int:
        return round(self.spec.clock_skew * 1000)

    def decide(self) -> FaultDecision:
        spec = self.spec
        if not spec.any_per_message:
            return NO_FAULT
        draw = self._rng.random
        return FaultDecision(
            drop=draw() < spec.drop,
            dup=draw() < spec.dup,
            reorder=draw() < spec.reorder,
            disconnect=draw() < spec.disconnect,
            malformed=draw() < spec.malformed,
        )

    def garbage(self, device_id: str, ts: int) -> bytes:
        """A payload the collector must reject; the kinds take turns so each reason shows."""
        kind = _GARBAGE[self._garbage_turn % len(_GARBAGE)]
        self._garbage_turn += 1
        return kind(device_id, ts)


@dataclass(frozen=True, slots=True)
class FaultLabel:
    """One data-fault episode, as a bench scores detection against it (times: device ts, ms).
    `observable_ms`: when the fault first shows in the data (a drift takes time to grow)."""

    kind: str
    field: str
    start_ms: int
    end_ms: int
    observable_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "field": self.field, "start_ms": self.start_ms,
                "end_ms": self.end_ms, "observable_ms": self.observable_ms}


_FIELD: Final = {"drift": "voltage_v", "stuck": "voltage_v",
                 "counter_regression": "energy_import_kwh", "counter_jump": "energy_import_kwh",
                 "interval_change": ""}


class DataFaults:
    """Labelled data-fault episodes for one device: `alter()` each telemetry reading.
    Pure apart from its seeded RNG; time is the reading's `ts`."""

    __slots__ = ("_counter_offset", "_first", "_kind", "_rng", "_start", "interval_scale",
                 "labels", "spec")

    def __init__(self, rng: random.Random, spec: FaultSpec | None = None) -> None:
        self._rng = rng
        self.spec = spec or FaultSpec()
        self.labels: list[FaultLabel] = []
        self.interval_scale = 1.0  # the device multiplies its reporting interval by this
        self._kind = ""
        self._start = 0
        self._first = 0.0
        self._counter_offset = 0.0  # a counter fault leaves the register off for good

    def alter(self, data: dict[str, Any], ts: int) -> dict[str, Any]:
        if self._kind and ts >= self._start + EPISODE_MS:
            self._kind, self.interval_scale = "", 1.0
        if not self._kind and self.spec.any_episode:
            self._maybe_start(data, ts)
        offset = self._counter_offset
        if offset and "energy_import_kwh" in data:
            data["energy_import_kwh"] = round(data["energy_import_kwh"] + offset, 3)
        kind = self._kind
        if kind == "drift" and "voltage_v" in data:
            data["voltage_v"] = round(
                data["voltage_v"] + DRIFT_PER_S * self._first * (ts - self._start) / 1000, 1)
        elif kind == "stuck" and "voltage_v" in data:
            data["voltage_v"] = self._first
        return data

    def _maybe_start(self, data: dict[str, Any], ts: int) -> None:
        draw = self._rng.random
        for kind in EPISODES:
            p = getattr(self.spec, kind)
            if p > 0 and draw() < p:
                break
        else:
            return
        field = _FIELD[kind]
        if field and field not in data:
            return
        self._kind, self._start = kind, ts
        self._first = float(data[field]) if field else 0.0
        observable = ts
        if kind == "drift":
            observable = ts + round(DRIFT_OBSERVABLE / DRIFT_PER_S * 1000)
        elif kind == "counter_regression":
            self._counter_offset -= 0.01 * self._first
        elif kind == "counter_jump":
            self._counter_offset += 0.05 * self._first
        elif kind == "interval_change":
            self.interval_scale = INTERVAL_SCALE
        self.labels.append(FaultLabel(kind, field, ts, ts + EPISODE_MS, observable))


def _truncated_json(device_id: str, ts: int) -> bytes:  # not_json
    whole = protocol.encode_device_message(
        device_id, protocol.TELEMETRY, {"voltage_v": 0.0}, ts=ts, boot=0, seq=0
    )
    return whole[: len(whole) // 2]


def _not_utf8(device_id: str, ts: int) -> bytes:  # not_utf8
    return b"\xff\xfe\x00garbage\x80"


def _not_object(device_id: str, ts: int) -> bytes:  # not_object
    return b'["telemetry", 1, 2, 3]'


def _non_finite(device_id: str, ts: int) -> bytes:  # bad_field: NaN is not a number here
    return (
        b'{"v":2,"device_id":"%s","msg_type":"telemetry","boot":0,"seq":0,"ts":%d,'
        b'"data":{"voltage_v":NaN}}' % (device_id.encode(), ts)
    )


def _missing_seq(device_id: str, ts: int) -> bytes:  # bad_seq
    return protocol.encode_device_message(
        device_id, protocol.TELEMETRY, {"voltage_v": 0.0}, ts=ts
    )


_GARBAGE: Final = (_truncated_json, _not_utf8, _not_object, _non_finite, _missing_seq)
