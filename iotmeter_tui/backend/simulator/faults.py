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
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields
from typing import Final

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.errors import IotmeterError

PROBABILITIES: Final = ("drop", "dup", "reorder", "disconnect", "malformed")
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

    @property
    def any_per_message(self) -> bool:
        return any(getattr(self, name) > 0 for name in PROBABILITIES)

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
            if name not in PROBABILITIES and name != "clock_skew":
                known = ", ".join((*PROBABILITIES, "clock_skew"))
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

    __slots__ = ("_garbage_turn", "_rng", "_spec", "active")

    def __init__(self, spec: FaultSpec, rng: random.Random) -> None:
        self._rng = rng
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
