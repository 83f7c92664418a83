"""Anomaly detection on the live telemetry stream, per device and field: pure, no I/O but the
optional baseline file.

Fixed thresholds (alerts.py) catch a voltage outside EN 50163; they cannot see a meter that
lies within the range. This detector learns each field's own baseline and flags:

- `level`: a field's short-term mean leaves its learned band (slow drift, a frequency or power
  factor leaving its usual band). The baseline is an exponentially weighted median (a sign
  step scaled by the spread) with a mean-absolute-deviation spread: one wild reading moves it
  by a bounded step, and a drift faster than that step escapes it and is caught.
- `stuck`: a field that always changes stops changing (a frozen sensor or ADC).
- `counter_regression` / `counter_jump`: an energy counter goes backwards, or grows by far
  more than any power the meter has seen could deliver.
- `interval`: the reporting interval (on the device clock, so a replay is not a burst)
  changes for several messages in a row.

While a field is anomalous its baseline is frozen (it must not learn the fault); after
`RELEARN_MS` of a steady new level the level is accepted as the new normal.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

log = logging.getLogger(__name__)

# Fields that follow the train traffic (near zero, then several kA within seconds): no
# stable band to learn, so only the stuck check runs on them.
LOAD_DRIVEN: Final = frozenset({
    "current_a", "power_kw", "active_power_kw", "reactive_power_kvar", "thd_pct",
})
COUNTER_SUFFIXES: Final = ("_kwh", "_kvarh")
# The least spread a field's band assumes, in its unit: a meter's temperature wanders with the
# weather over hours, more than five minutes of learning show.
SPREAD_FLOOR: Final[Mapping[str, float]] = {
    "temperature_c": 0.5, "frequency_hz": 0.03, "power_factor": 0.005,
}

WARMUP: Final = 600  # readings before a baseline is trusted (several train passages)...
WARMUP_MS: Final = 600_000  # ...and device time: 600 readings at 20 Hz see no train at all
BAND_K: Final = 7.0  # band half-width in spreads, at sensitivity 1
FAST_ALPHA: Final = 0.25  # the short-term mean: about the last 4 readings
MEDIAN_STEP: Final = 0.02  # how far (in spreads) the median may move per reading
# Slow, and fed clipped deviations: a spread that grew with every reading of a drift would
# widen the band as fast as the drift moves and never let it out.
SPREAD_ALPHA: Final = 0.002
SPREAD_CLIP: Final = 3.0
STUCK_MIN: Final = 8  # repeated readings, at sensitivity 1, before "stuck"
STUCK_CHANGE_RATE: Final = 0.85  # only fields that changed this often can be "stuck"
STUCK_WINDOW: Final = 4096
# A run is "stuck" once chance would give it less than once in e^20.7 = 1e9 readings: a field
# that changes 99 % of the time needs the 8 repeats, one that changes 90 % needs 9, 85 % 11.
STUCK_EVIDENCE: Final = math.log(1e9)
JUMP_FACTOR: Final = 20.0  # counter growth over the fastest rate seen, at sensitivity 1
RATE_DECAY: Final = 0.9999  # per reading: the fastest rate seen fades over hours
INTERVAL_TOLERANCE: Final = 0.5  # outside [0.5x, 2x] of the usual interval is "off"
INTERVAL_RUN: Final = 3  # off intervals in a row before "interval"
EVENT_HOLD_MS: Final = 60_000  # a counter event stays a finding this long
RELEARN_MS: Final = 3_600_000  # a level held this long becomes the new baseline
# A slow drift upwards: the short-term mean held above half the band's upper side this long
# and still climbing. A drift gets there in half the time it takes to leave the band; a
# regenerating train's rise levels off and falls back.
DRIFT_HOLD_MS: Final = 12_000
DRIFT_RISE: Final = 0.4  # ...and still rising: this share of the way on to the band's edge
SAVE_EVERY_MS: Final = 60_000
# The band is worked out again every this many readings, not on every one: it moves with the
# spreads (a 0.2 % step per reading) and the median (a 0.3 % step), so 16 readings shift its
# edges by a few per cent of its width, while working it out is half the detector's cost.
BAND_EVERY: Final = 16

DEFAULT_SENSITIVITY: Final[Mapping[str, float]] = {"power_meter_dc": 1.0, "power_meter_ac": 1.0}


@dataclass(frozen=True, slots=True)
class Finding:
    """One anomaly, explained: which field, what was expected, what was seen, since when."""

    kind: str  # level | stuck | counter_regression | counter_jump | interval
    field: str
    observed: float
    low: float
    high: float
    since_ms: int
    score: float  # how far outside, in band widths (for "notably worse" refreshes)
    # The message, once asked: an open finding (a stuck field) is asked again with every
    # reading while it lasts.
    _text: str = dataclasses.field(default="", init=False, repr=False, compare=False)

    def message(self) -> str:
        if not self._text:
            object.__setattr__(self, "_text", self._compose())
        return self._text

    def _compose(self) -> str:
        since = f"since ts {self.since_ms}"
        if self.kind == "stuck":
            return f"{self.field} stuck at {self.observed:g} ({since}); it normally changes"
        if self.kind == "counter_regression":
            return (f"{self.field} went backwards to {self.observed:g} from {self.high:g} "
                    f"({since}); energy counters only grow")
        if self.kind == "counter_jump":
            return (f"{self.field} jumped by {self.observed:g} ({since}); expected at most "
                    f"{self.high:.4g} for the interval")
        if self.kind == "interval":
            return (f"reporting interval {self.observed / 1000:g} s outside expected "
                    f"{self.low / 1000:g}-{self.high / 1000:g} s ({since})")
        return (f"{self.field} {self.observed:.6g} outside expected range "
                f"{self.low:.6g}-{self.high:.6g} ({since})")


class _Field:
    """One field's baseline and run state."""

    __slots__ = (
        "bad_since",
        "band_n",
        "changes",
        "clip_lo",
        "clip_up",
        "counter",
        "fast",
        "finding",
        "floor",
        "high_off",
        "last",
        "level_load",
        "low_off",
        "median",
        "n",
        "near_from",
        "near_off",
        "near_since",
        "rate_hi",
        "repeats",
        "spread",
        "spread_lo",
        "step",
        "stuck_since",
        "width",
        "window",
    )

    def __init__(self, name: str, value: float) -> None:
        self.counter = name.endswith(COUNTER_SUFFIXES)
        self.level_load = not self.counter and name not in LOAD_DRIVEN
        self.floor = SPREAD_FLOOR.get(name, 0.0)
        self.n = 1
        self.median = self.fast = self.last = value
        if self.counter:
            self.fast = 0.0  # a counter keeps the time of its last reading here, not a mean
        self.spread = 0.0  # above the median; below it `spread_lo`: a sagging line is skewed
        self.spread_lo = 0.0
        # Readings that differed from the one before (the first has none before it: a field
        # that never changed is not one that "normally changes"), within...
        self.changes = 0
        self.window = 1  # ...the last STUCK_WINDOW to 2 x STUCK_WINDOW readings
        self.repeats = 0
        self.stuck_since = 0
        self.rate_hi = 0.0  # counters: fastest growth per second seen (decaying)
        self.bad_since = 0  # first reading of the current level excursion (0: none)
        self.near_since = 0  # first reading beyond half the band (0: within it)...
        self.near_from = 0.0  # ...and the short-term mean then
        self.finding: Finding | None = None
        # The band, as offsets from the median, and what goes with it; worked out again at
        # reading `band_n` (0: at the next one).
        self.band_n = 0
        self.high_off = self.low_off = self.near_off = self.width = 0.0
        self.step = self.clip_up = self.clip_lo = 0.0

    def state(self) -> list[float]:
        return [self.n, self.median, self.fast, self.last, self.spread, self.spread_lo,
                self.changes, self.rate_hi, self.window]

    def restore(self, values: list[float]) -> None:
        (n, self.median, self.fast, self.last, self.spread, self.spread_lo, changes,
         self.rate_hi, window) = values
        self.n, self.changes, self.window = int(n), int(changes), int(window)


def _encode(snapshot: dict[str, Any]) -> bytes:
    """The snapshot as JSON. orjson takes 0.05 s for 5,000 meters where json.dump took 2.8 s
    (5 % of the collector, once a minute), but writes null for a non-finite number, which a
    baseline can hold (the spread of readings near 1e308): then json, which keeps Infinity.
    The state holds no null of its own, so its text in the output means one of those (or a
    name that holds "null": json then too, only slower)."""
    data = orjson.dumps(snapshot)
    if b"null" in data:
        data = json.dumps(snapshot, separators=(",", ":")).encode()
    return data


def _stuck(f: _Field) -> bool:
    """Whether the current run of repeats is beyond chance for how often the field changes
    (its recent share of readings that differed from the one before)."""
    others = f.window - f.repeats
    share = f.changes / others if others > 0 else 0.0
    if share <= STUCK_CHANGE_RATE:
        return False
    return share >= 1.0 or f.repeats >= STUCK_EVIDENCE / -math.log(1.0 - share)


def _learn(f: _Field, x: float, fast: float) -> None:
    """The warm-up: a running mean and the mean deviations above and below it."""
    f.median += (x - f.median) / f.n
    dev = fast - f.median
    if dev >= 0:
        f.spread += (dev - f.spread) / f.n
    else:
        f.spread_lo += (-dev - f.spread_lo) / f.n


def _band(f: _Field, sens: float) -> None:
    """Work out the band, as offsets from the median, for the next BAND_EVERY readings."""
    median = f.median
    # The band's floor: a field that barely moves (a quiet frequency) still has noise.
    floor = max(1e-3 * abs(median), f.floor, 1e-6)
    k = BAND_K / sens
    if f.n < 4 * WARMUP:
        # Young baselines have seen few train passages: their bands start wider and narrow
        # as the readings add up (1.25x at twice the warm-up, 1.1x at three times).
        young = WARMUP / f.n
        k *= 1.0 + young * young
    # Each side its own width: a line sags deep under load and rises little in regeneration,
    # so a rise is caught early and a sag is not a fault. Each side is at least half the
    # other: a quiet warm-up may have missed one.
    spread, spread_lo = f.spread, f.spread_lo
    f.high_off = k * max(spread, 0.5 * spread_lo, floor)
    f.low_off = k * max(spread_lo, 0.5 * spread, floor)
    f.near_off = 0.5 * f.high_off
    f.width = 0.5 * (f.high_off + f.low_off)
    f.step = MEDIAN_STEP * f.width / k
    f.clip_up = SPREAD_CLIP * spread + floor
    f.clip_lo = SPREAD_CLIP * spread_lo + floor
    f.band_n = f.n + BAND_EVERY


class _Device:
    __slots__ = (
        "born",
        "fields",
        "interval",
        "interval_finding",
        "interval_n",
        "last_ts",
        "off_run",
        "off_since",
    )

    def __init__(self) -> None:
        self.fields: dict[str, _Field] = {}
        self.born = 0  # device ts of the first reading: the baselines' age
        self.last_ts = 0
        self.interval = 0.0  # usual reporting interval, ms (EW median)
        self.interval_n = 0
        self.off_run = 0
        self.off_since = 0
        self.interval_finding: Finding | None = None


class AnomalyDetector:
    """Per-device, per-field baselines over the telemetry stream.

    `observe()` returns the device's most pressing finding after this reading, or None when
    the device looks normal. `sensitivity` scales every check (2.0: bands half as wide, stuck
    after half as many readings; 0 turns the detector off for that device)."""

    def __init__(self, sensitivity: Mapping[str, float] | None = None,
                 state_path: Path | None = None) -> None:
        self._by_type = dict(DEFAULT_SENSITIVITY if sensitivity is None else sensitivity)
        self._devices: dict[str, _Device] = {}
        self._path = state_path
        self._saved_at = 0
        self._resets: dict[str, int] = {}  # counter regressions since take_counter_resets()

    # -- the stream

    def observe(self, device_id: str, device_type: str, data: Mapping[str, Any], ts_ms: int,
                sensitivity: float | None = None) -> Finding | None:
        sens = self._by_type.get(device_type, 1.0) if sensitivity is None else sensitivity
        if sens <= 0:
            return None
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = _Device()
        worst: Finding | None = None
        last_ts = dev.last_ts
        if last_ts:
            if ts_ms <= last_ts:
                return None  # a late (reordered) reading: no interval, no baseline update
            dt = ts_ms - last_ts
            usual = dev.interval
            if dev.off_run or dev.interval_n <= 10 or not \
                    usual * INTERVAL_TOLERANCE <= dt <= usual / INTERVAL_TOLERANCE:
                worst = self._interval(dev, dt, ts_ms, sens)
            elif dt != usual:  # the usual interval, an EW median: a bounded step towards dt
                dev.interval = usual * (1.05 if dt > usual else 0.95)
        else:
            dev.born = ts_ms
        dev.last_ts = ts_ms
        fields = dev.fields
        stuck_after = STUCK_MIN / sens
        warm = ts_ms - dev.born >= WARMUP_MS
        found: Finding | None
        # This loop runs for every field of every message, so the common case is written out
        # here (comparisons, not min/max; no calls) and only the rare ones are methods.
        for name, raw in data.items():
            if raw.__class__ is not float:
                if raw.__class__ is not int:
                    continue  # protocol.py rejected non-numbers; booleans are not readings
                raw = float(raw)
            f = fields.get(name)
            if f is None:
                fields[name] = _Field(name, raw)
                continue
            if f.counter:
                # An energy counter: it only grows, and no faster than the power it has seen.
                # (`fast` holds the time of its last reading.)
                delta = raw - f.last
                dt_s = (ts_ms - f.fast) * 0.001 if f.fast else 1.0
                f.last, f.fast = raw, ts_ms
                f.n += 1
                if delta < 0.0 and delta < -1e-9 * abs(raw) - 1e-6:
                    found = f.finding = Finding("counter_regression", name, raw, raw,
                                                raw - delta, ts_ms, 2.0)
                    self._resets[device_id] = self._resets.get(device_id, 0) + 1
                else:
                    if dt_s < 0.001:
                        dt_s = 0.001
                    # Plus a floor for the register's resolution: a counter idle for hours
                    # (no regeneration) that then counts its last digit up is not a jump.
                    limit = JUMP_FACTOR / sens * f.rate_hi * dt_s + (
                        1e-5 * raw if raw > 1000.0 else 0.01)
                    if delta > limit and f.n > WARMUP:
                        found = f.finding = Finding("counter_jump", name, delta, 0.0, limit,
                                                    ts_ms, 2.0)
                    else:
                        rate = delta / dt_s
                        decayed = f.rate_hi * RATE_DECAY
                        f.rate_hi = rate if rate > decayed else decayed
                        found = f.finding
                        if found is None:
                            continue
                        if ts_ms - found.since_ms >= EVENT_HOLD_MS:
                            f.finding = None  # an event is a finding for a while, then over
                            continue
                if worst is None or found.score > worst.score:
                    worst = found
                continue
            # The stuck check: every field pays it on every reading.
            if raw == f.last:
                if not f.repeats:
                    f.stuck_since = ts_ms
                f.repeats += 1
                f.n += 1
                f.window += 1
                if f.repeats >= stuck_after and f.n > WARMUP and _stuck(f):
                    found = f.finding
                    if found is None or found.kind != "stuck":
                        found = f.finding = Finding("stuck", name, raw, raw, raw,
                                                    f.stuck_since, 1.0)
                    if worst is None or worst.score < 1.0:
                        worst = found
                    continue
            else:
                if f.repeats >= stuck_after:
                    # A stuck episode ends: it was a fault, not how often this field
                    # changes, so it leaves the share (or it would hide the next one).
                    f.window -= f.repeats
                    if f.finding is not None and f.finding.kind == "stuck":
                        f.finding = None
                f.repeats = 0
                f.changes += 1
                f.window += 1
                if f.window >= STUCK_WINDOW:
                    # Halve both: the share is a recent one, so an earlier stuck
                    # episode does not hide the next for ever.
                    f.window >>= 1
                    f.changes >>= 1
                f.last = raw
                f.n += 1
            if not f.level_load:
                continue
            # The level check compares the short-term mean with the median, so the spreads
            # are learned from that same statistic: its own scatter (train passages) sets
            # the band.
            fast = f.fast = f.fast + FAST_ALPHA * (raw - f.fast)
            if f.n <= WARMUP or not warm:
                _learn(f, raw, fast)
                continue
            if f.n >= f.band_n:
                _band(f, sens)
            dev_ = fast - f.median
            # The spreads learn from every reading, clipped: a rare deep sag widens the band
            # a little each time, while a drift cannot widen it faster than SPREAD_ALPHA
            # allows.
            if dev_ > 0:
                f.spread += SPREAD_ALPHA * ((dev_ if dev_ < f.clip_up else f.clip_up) - f.spread)
            elif dev_ < 0:
                f.spread_lo += SPREAD_ALPHA * ((-dev_ if -dev_ < f.clip_lo else f.clip_lo)
                                               - f.spread_lo)
            if dev_ > f.high_off or -dev_ > f.low_off:
                found = self._outside(f, name, fast, ts_ms)
            elif dev_ > f.near_off:
                found = self._near_high(f, name, fast, ts_ms)
            else:
                f.bad_since = f.near_since = 0
                f.finding = None
                # The median learns only from normal readings: it must not follow a fault.
                if dev_ > 0:
                    f.median += f.step
                elif dev_ < 0:
                    f.median -= f.step
                continue
            if found is not None and (worst is None or found.score > worst.score):
                worst = found
        return worst

    def _near_high(self, f: _Field, name: str, fast: float, ts: int) -> Finding | None:
        """Inside the band, above half its upper side. Upwards only: a line sags under load for
        minutes (a train climbing), while nothing in traction supply holds it up, so a sag
        waits for the full band."""
        f.bad_since = 0
        since = f.near_since
        if not since:
            f.near_since, f.near_from = ts, fast
        elif ts - since >= RELEARN_MS:
            f.median, f.near_since, f.finding, f.band_n = fast, 0, None, 0
            return None
        elif ts - since >= DRIFT_HOLD_MS and \
                fast - f.near_from >= DRIFT_RISE * (f.high_off - f.near_off):
            # Held there: a drift on its way out of the band. The baseline stays frozen, as
            # for a reading outside it.
            median = f.median
            f.finding = Finding("level", name, fast, median - f.low_off, median + f.near_off,
                                since, (fast - median - f.near_off) / f.width + 1.0)
            return f.finding
        f.finding = None
        if fast > f.median:
            f.median += f.step
        return None

    def _outside(self, f: _Field, name: str, fast: float, ts: int) -> Finding | None:
        if not f.bad_since:
            f.bad_since = ts
        elif ts - f.bad_since >= RELEARN_MS:
            # Held for an hour: a new normal (a re-tapped transformer), not a fault.
            f.median, f.bad_since, f.finding, f.band_n = fast, 0, None, 0
            return None
        high, low = f.median + f.high_off, f.median - f.low_off
        f.finding = Finding("level", name, fast, low, high, f.bad_since,
                            (fast - high if fast > high else low - fast) / f.width + 1.0)
        return f.finding

    def _interval(self, dev: _Device, dt: int, ts: int, sens: float) -> Finding | None:
        dev.interval_n += 1
        if dev.interval_n <= 10:
            dev.interval = dt if dev.interval_n == 1 else min(dev.interval, dt) if dev.interval \
                else dt
            return None
        low = dev.interval * INTERVAL_TOLERANCE
        high = dev.interval / INTERVAL_TOLERANCE
        if low <= dt <= high:
            dev.off_run = 0
            dev.interval_finding = None
            dev.interval += 0.05 * dev.interval * ((dt > dev.interval) - (dt < dev.interval))
            return None
        if dev.off_run == 0:
            dev.off_since = ts
        dev.off_run += 1
        if ts - dev.off_since >= RELEARN_MS:
            dev.interval, dev.off_run, dev.interval_finding = float(dt), 0, None
            return None
        if dev.off_run >= max(1.0, INTERVAL_RUN / sens):
            dev.interval_finding = Finding("interval", "", float(dt), low, high, dev.off_since,
                                           1.5)
        return dev.interval_finding

    # -- persistence: one small JSON file, written at most once a minute

    def snapshot(self) -> dict[str, Any]:
        return {"v": 1, "devices": {
            device_id: {"t": dev.last_ts, "b": dev.born, "i": [dev.interval, dev.interval_n],
                        "f": {name: f.state() for name, f in dev.fields.items()}}
            for device_id, dev in self._devices.items()}}

    def restore(self, snapshot: Mapping[str, Any]) -> int:
        """Adopt saved baselines; returns how many devices. Unreadable entries are skipped."""
        if snapshot.get("v") != 1:
            return 0
        restored = 0
        for device_id, saved in dict(snapshot.get("devices", {})).items():
            try:
                dev = _Device()
                dev.last_ts = int(saved["t"])
                dev.born = int(saved.get("b", dev.last_ts))
                dev.interval, n = (float(v) for v in saved["i"])
                dev.interval_n = int(n)
                for name, values in saved["f"].items():
                    f = _Field(str(name), 0.0)
                    f.restore([float(v) for v in values])
                    dev.fields[str(name)] = f
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("anomaly baseline of %r skipped: %s", device_id, exc)
                continue
            self._devices[str(device_id)] = dev
            restored += 1
        return restored

    def load(self) -> int:
        if self._path is None:
            return 0
        try:
            snapshot = json.loads(self._path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("anomaly baselines in %s not read, learning afresh: %s", self._path, exc)
            return 0
        return self.restore(snapshot) if isinstance(snapshot, dict) else 0

    def save(self, now_ms: int, *, force: bool = False) -> bool:
        """Write the baselines when a minute has passed since the last write (or `force`).
        A failed write is logged: losing baselines costs a warm-up, never a message."""
        if self._path is None or (not force and now_ms - self._saved_at < SAVE_EVERY_MS):
            return False
        self._saved_at = now_ms
        tmp = self._path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(_encode(self.snapshot()))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path)
        except OSError as exc:
            log.warning("anomaly baselines not saved to %s: %s", self._path, exc)
            return False
        return True

    def stuck_fields(self, device_ids: Iterable[str]) -> dict[str, int]:
        """How many fields are stuck right now, per device (for the data-quality score)."""
        out = {}
        for device_id in device_ids:
            dev = self._devices.get(device_id)
            if dev is not None:
                out[device_id] = sum(1 for f in dev.fields.values()
                                     if f.finding is not None and f.finding.kind == "stuck")
        return out

    def take_counter_resets(self) -> dict[str, int]:
        """Energy-counter regressions per device since the last call."""
        resets, self._resets = self._resets, {}
        return resets

    def forget(self, device_ids: Iterable[str]) -> None:
        for device_id in device_ids:
            self._devices.pop(device_id, None)


def sensitivity_from_config(device_id: str, config: Mapping[str, Any]) -> float | None:
    """A device's `anomaly_sensitivity` from `device_configs` (0 turns it off), or None."""
    raw = config.get("anomaly_sensitivity")
    if raw is None:
        return None
    try:
        value = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        log.warning("device %s: config anomaly_sensitivity=%r ignored, not a number >= 0",
                    device_id, raw)
        return None
    return value


def parse_sensitivity(text: str) -> dict[str, float]:
    """`power_meter_dc=1.0,power_meter_ac=0.5` -> a mapping; ValueError names what is wrong."""
    out = dict(DEFAULT_SENSITIVITY)
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not name.strip() or not math.isfinite(number) or number < 0:
            raise ValueError(f"{item.strip()!r} is not DEVICE_TYPE=NUMBER (a number >= 0)")
        out[name.strip()] = number
    return out
