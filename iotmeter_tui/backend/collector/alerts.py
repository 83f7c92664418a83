"""Alert rules over telemetry and device state, and the engine that keeps `device_alerts` current.

The supply systems, limits and checks are pure values and functions. `AlertEngine` keeps per-device
state between messages and writes to the metadata store only in `flush()`, and only when an alert
changes (raised, notably worse, cleared), so a fleet in steady state costs no alert writes at all.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum
from typing import Any, Final, Protocol

from iotmeter_tui.backend.collector.anomaly import AnomalyDetector, sensitivity_from_config
from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.backend.supply import (
    AC_15KV,
    AC_25KV,
    DC_750,
    DC_1500,
    DC_3000,
    SUPPLY_SYSTEMS,
    SupplySystem,
)

log = logging.getLogger(__name__)


# --- rules ------------------------------------------------------------------------------------

class Rule(StrEnum):
    """Alert rule names, exactly as stored in `device_alerts.rule`."""

    VOLTAGE_RANGE = "voltage_range"
    OVER_CURRENT = "over_current"
    FREQUENCY_BAND = "frequency_band"
    OFFLINE = "offline"
    SEQ_GAPS = "seq_gaps"
    # Many meters lost together (a broker outage, a substation without power): one alert
    # for the lot, stored under GROUP_DEVICE, instead of one per meter.
    OFFLINE_GROUP = "offline_group"
    ANOMALY = "anomaly"  # the learned-baseline detector, anomaly.py


class Severity(StrEnum):
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"


SEVERITY: Final[Mapping[Rule, Severity]] = {
    # Sustained over-current heats cables and precedes a feeder-breaker trip: act now.
    Rule.OVER_CURRENT: Severity.CRITICAL,
    # Outside the range rolling stock is built to run on permanently.
    Rule.VOLTAGE_RANGE: Severity.MAJOR,
    # The operators have lost sight of this meter.
    Rule.OFFLINE: Severity.MAJOR,
    # ... of many meters at once: a whole section or the ingest path is out.
    Rule.OFFLINE_GROUP: Severity.CRITICAL,
    # A disturbance of the supplying grid: the railway can watch it, rarely fix it.
    Rule.FREQUENCY_BAND: Severity.MINOR,
    # Measurements lost in transit; the power supply itself may be fine.
    Rule.SEQ_GAPS: Severity.WARNING,
    # A meter that disagrees with its own past: worth a look, not yet a power problem.
    Rule.ANOMALY: Severity.WARNING,
}


# The rules judged per message or per batch, read once: an Enum member read from its class
# costs more than the dict lookup it is wanted for.
_VOLTAGE: Final = Rule.VOLTAGE_RANGE
_CURRENT: Final = Rule.OVER_CURRENT
_FREQUENCY: Final = Rule.FREQUENCY_BAND
_ANOMALY: Final = Rule.ANOMALY
_OFFLINE: Final = Rule.OFFLINE
_SEQ_GAPS: Final = Rule.SEQ_GAPS


# --- supply systems (EN 50163) -----------------------------------------------------------------

DC_TYPE: Final = "power_meter_dc"
AC_TYPE: Final = "power_meter_ac"


# Default over-current limit per supply system (docs/alerts.md gives the reasoning).
DEFAULT_MAX_CURRENT_A: Final = {DC_750.key: 6_000.0, DC_1500.key: 4_000.0, DC_3000.key: 3_000.0,
                                AC_15KV.key: 1_500.0, AC_25KV.key: 1_000.0}


def _candidates(device_type: str, frequency_hz: float | None) -> tuple[SupplySystem, ...]:
    if device_type == DC_TYPE:
        return tuple(s for s in SUPPLY_SYSTEMS if s.kind == "dc")
    if device_type == AC_TYPE or (frequency_hz is not None and frequency_hz > 0):
        return tuple(s for s in SUPPLY_SYSTEMS if s.kind == "ac")
    return SUPPLY_SYSTEMS  # type not known yet (no hello): any system


def _nearest_on_log_scale(
    systems: Sequence[SupplySystem], value: float, of: Callable[[SupplySystem], float]
) -> SupplySystem:
    # Nominals span 750 V to 25 kV: on a linear scale 10 kV would be "near" 15 kV for
    # the same reason 1.9 kV is near 1.5 kV; a log scale weighs both deviations alike.
    # log(a) - log(b), not log(a / b): a tiny reading (5e-324) divided by a nominal is 0.0.
    return min(systems, key=lambda s: abs(math.log(value) - math.log(of(s))))


def infer_supply_system(
    device_type: str,
    voltage_v: float | None,
    frequency_hz: float | None = None,
    hinted_nominal: float | None = None,
) -> SupplySystem | None:
    """The supply system a meter most likely sits on, or None when nothing tells.

    A hinted nominal (device config `nominal_v`, or the hello's) wins over readings and the
    meter type: it is someone's word. Otherwise AC is chosen by frequency when one is
    measured, then the system whose permanent range contains the voltage, else the one with
    the nearest nominal on a log scale. A voltage of 0 (a dead section) tells nothing."""
    if hinted_nominal is not None and hinted_nominal > 0:
        return _nearest_on_log_scale(SUPPLY_SYSTEMS, hinted_nominal, lambda s: s.nominal_v)
    candidates = _candidates(device_type, frequency_hz)
    ac = [s for s in candidates if s.frequency_hz is not None]
    if frequency_hz is not None and frequency_hz > 0 and ac:
        # 16.7 Hz vs 50 Hz is unambiguous, while a sagging 25 kV line can read 17 kV.
        return _nearest_on_log_scale(ac, frequency_hz, lambda s: s.frequency_hz or 1.0)
    if voltage_v is None or voltage_v <= 0:
        return None
    for system in candidates:
        if system.contains(voltage_v):
            return system
    return _nearest_on_log_scale(candidates, voltage_v, lambda s: s.nominal_v)


def fits_device_type(system: SupplySystem, device_type: str) -> bool:
    """False when the meter's type rules the system out (a DC meter on an AC system)."""
    if device_type == DC_TYPE:
        return system.kind == "dc"
    if device_type == AC_TYPE:
        return system.kind == "ac"
    return True


# --- per-device limits -------------------------------------------------------------------------

DEFAULT_FREQUENCY_BAND_PCT: Final = 1.0


@dataclass(frozen=True, slots=True)
class Limits:
    """A device's overrides from `device_configs`; None means "use the default"."""

    nominal_v: float | None = None
    max_current_a: float | None = None
    frequency_band_pct: float | None = None
    gap_threshold: int | None = None
    anomaly_sensitivity: float | None = None


def _positive(device_id: str, config: Mapping[str, Any], key: str) -> float | None:
    raw = config.get(key)
    if raw is None:
        return None
    value = None
    if not isinstance(raw, bool):  # JSON true is not a voltage
        with contextlib.suppress(TypeError, ValueError, OverflowError):
            value = _positive_number(float(raw))  # a hand-typed "1500" still means 1500
    if value is None:
        log.warning("device %s: config %s=%r ignored, not a positive number", device_id, key, raw)
    return value


def _positive_number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond any float
        return None
    return number if math.isfinite(number) and number > 0 else None


def limits_from_config(device_id: str, config: Mapping[str, Any]) -> Limits:
    """The alert overrides in a device's config; bad values are logged and ignored."""
    gaps = _positive(device_id, config, "gap_threshold")
    return Limits(
        nominal_v=_positive(device_id, config, "nominal_v"),
        max_current_a=_positive(device_id, config, "max_current_a"),
        frequency_band_pct=_positive(device_id, config, "frequency_band_pct"),
        gap_threshold=None if gaps is None else int(gaps),
        anomaly_sensitivity=sensitivity_from_config(device_id, config),
    )


# --- checks (pure) -----------------------------------------------------------------------------

# An open alert is written again only when its value is this much worse than last written,
# so a slowly deepening sag gives a few refreshes, not one per message.
VOLTAGE_STEP_OF_NOMINAL: Final = 0.05
CURRENT_STEP_OF_LIMIT: Final = 0.10


@dataclass(frozen=True, slots=True)
class Violation:
    """A rule broken by one observation. `excess`: how far past the limit, in the value's
    unit; `step`: how much more excess makes the stored alert worth refreshing."""

    value: float | None
    excess: float
    step: float
    message: str


def check_voltage(system: SupplySystem, voltage_v: float) -> Violation | None:
    if voltage_v < system.min_v:
        excess, side = system.min_v - voltage_v, "below"
    elif voltage_v > system.max_v:
        excess, side = voltage_v - system.max_v, "above"
    else:
        return None
    return Violation(
        voltage_v, excess, VOLTAGE_STEP_OF_NOMINAL * system.nominal_v,
        f"voltage {voltage_v:,.0f} V {side} the EN 50163 permanent range "
        f"{system.min_v:,.0f}-{system.max_v:,.0f} V of {system.name}",
    )


def check_current(current_a: float, limit_a: float) -> Violation | None:
    # Regenerative braking drives current negative; it loads the line just the same.
    magnitude = abs(current_a)
    if magnitude <= limit_a:
        return None
    flow = "regenerating" if current_a < 0 else "drawing"
    return Violation(
        current_a, magnitude - limit_a, CURRENT_STEP_OF_LIMIT * limit_a,
        f"current {current_a:,.0f} A ({flow}) beyond the {limit_a:,.0f} A limit",
    )


def check_frequency(frequency_hz: float, nominal_hz: float, band_pct: float) -> Violation | None:
    band = nominal_hz * band_pct / 100
    deviation = abs(frequency_hz - nominal_hz)
    if deviation <= band:
        return None
    return Violation(
        frequency_hz, deviation - band, band,
        f"frequency {frequency_hz:.2f} Hz outside {nominal_hz - band:.2f}-{nominal_hz + band:.2f}"
        f" Hz ({nominal_hz:g} Hz +/-{band_pct:g} %)",
    )


def check_gaps(lost: int, threshold: int, window_ms: int) -> Violation | None:
    if lost <= threshold:
        return None
    return Violation(
        float(lost), float(lost - threshold), float(max(threshold, 1)),
        f"{lost} messages lost in the last {window_ms / 60_000:g} min (threshold {threshold})",
    )


OFFLINE_VIOLATION: Final = Violation(
    None, 0.0, math.inf, "device offline (offline status, last will, or silent past heartbeats)"
)

# The device id of the grouped offline alert: not a valid device id, so no meter's alert.
GROUP_DEVICE: Final = "*"


def offline_group_message(members: Mapping[str, str],
                          locations: Mapping[str, str] | None = None) -> str:
    """'24 meters offline together: 12 at Substation North, 12 power_meter_ac ac-*' from
    {device id: device type} and the registry's locations: how many, and where (the
    location, else the type and id prefix)."""
    places: dict[str, int] = {}
    for device_id, device_type in members.items():
        location = (locations or {}).get(device_id)
        key = f"at {location}" if location else \
            f"{device_type} {device_id.rstrip('0123456789')}*"
        places[key] = places.get(key, 0) + 1
    ranked = sorted(places.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{n} {where}" for where, n in ranked[:4])
    more = f", {len(ranked) - 4} more groups" if len(ranked) > 4 else ""
    return f"{len(members)} meters offline together: {shown}{more}"


# --- the store, as far as the engine needs it ---------------------------------------------------

class OpenAlert(Protocol):
    @property
    def device_id(self) -> str: ...

    @property
    def rule(self) -> str: ...


class AlertStore(Protocol):
    """The part of the metadata store (stores/metadata.py) the engine uses."""

    def raise_alert(
        self, device_id: str, rule: str, severity: str, value: float | None, message: str,
        at: int,
    ) -> tuple[object, bool]: ...

    def clear_alerts_for(self, device_id: str, rule: str, at: int) -> list[int]: ...

    def open_alerts(self, device_id: str | None = None) -> Sequence[OpenAlert]: ...

    def get_configs(self) -> Mapping[str, Mapping[str, Any]]: ...


# --- the engine --------------------------------------------------------------------------------

@dataclass(slots=True)
class AlertChanges:
    """What flushes wrote: alerts newly raised, refreshed (worse value), and cleared."""

    raised: int = 0
    updated: int = 0
    cleared: int = 0


class _Op(Enum):
    RAISE = "raise"
    CLEAR = "clear"


@dataclass(frozen=True, slots=True)
class _Change:
    op: _Op
    at: int
    value: float | None = None
    message: str = ""


@dataclass(slots=True)
class _RuleTrack:
    open: bool = False  # an alert is open in the store, or its raise is queued
    worst: float | None = None  # excess last written; None after load(): not known yet
    ok_since: int | None = None  # back in range since, while open


@dataclass(slots=True)
class _Device:
    device_type: str = "unknown"
    last_at: int = 0
    hello_nominal: float | None = None
    inferred: SupplySystem | None = None  # locked from readings, see _system()
    # The system of the last nominal hint (config or hello): worked out again only when the
    # hint changes, not for every reading.
    hint: float | None = None
    hinted: SupplySystem | None = None
    limits: Limits = field(default_factory=Limits)
    limits_read: int = 0  # the config read `limits` came from
    gap_level: int | None = None
    gap_events: deque[tuple[int, int]] = field(default_factory=deque)  # (at, seqs lost)
    # Open (or held) alerts only: a track is dropped when its alert clears, since a closed
    # track is the same as none; so on_telemetry need not call _observe for a rule not in
    # here whose verdict is OK.
    rules: dict[Rule, _RuleTrack] = field(default_factory=dict)
    offline_since: int | None = None  # believed offline since (None: up, or not known)
    planned_until: int | None = None  # a planned reboot may keep it offline until then
    planned_reason: str = ""
    grouped: bool = False  # counted in the open grouped offline alert

    def is_waiting(self) -> bool:
        """Whether time alone can change an alert (a hold running, gaps ageing)."""
        return bool(self.gap_events) or any(
            t.ok_since is not None for t in self.rules.values()
        )


# A long store outage with a flapping value must not queue changes without end; the
# queue per alert alternates raise/clear, so dropping the oldest pair keeps it consistent.
MAX_QUEUED_PER_ALERT: Final = 32
CONFIG_RETRY_MS: Final = 5_000


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class AlertEngine:
    """Evaluates the rules per device and queues alert changes; `flush()` writes them.

    All `at_ms` and `now_ms` must come from one clock (the collector's receive clock): holds
    and gap windows are measured on it, never on wall time, so tests are deterministic and a
    meter's skewed clock cannot cut a hold short. `clock` only paces config re-reads.
    Not thread-safe: one owner (the registry sink) calls it."""

    def __init__(
        self,
        store: AlertStore,
        *,
        hold_ms: int = 30_000,
        gap_threshold: int = 10,
        gap_window_ms: int = 600_000,
        config_ttl_ms: int = 60_000,
        planned_reboot_ms: int = 300_000,
        group_min: int = 5,
        group_window_ms: int = 0,  # 0: no grouping, every offline meter alerts at once
        locate: Callable[[list[str]], Mapping[str, str]] | None = None,
        clock: Callable[[], int] = _wall_ms,
        anomaly: AnomalyDetector | None = None,
    ) -> None:
        self._store = store
        self._anomaly = anomaly
        self._hold_ms = hold_ms
        self._gap_threshold = gap_threshold
        self._gap_window_ms = gap_window_ms
        self._config_ttl_ms = config_ttl_ms
        self._clock = clock
        # Every device's config, read in one query per TTL: one query per device and TTL
        # was thousands of round trips a minute for a large fleet, all on the registry's path.
        self._configs: Mapping[str, Mapping[str, Any]] = {}
        self._configs_read = 0  # how many successful reads so far
        self._configs_due_ms = 0
        self._devices: dict[str, _Device] = {}
        self._waiting: set[str] = set()  # devices where time alone may clear or age something
        self._queued: dict[tuple[str, Rule], list[_Change]] = {}
        self._done = AlertChanges()
        # Offline handling: a planned reboot does not page unless the meter stays
        # away past its bound; meters going offline within `group_window_ms` of each other
        # are decided together, `group_min` or more of them as one grouped alert.
        self._planned_reboot_ms = planned_reboot_ms
        self._group_min = group_min
        self._group_window_ms = group_window_ms
        self._planned: set[str] = set()  # offline inside a planned-reboot window
        self._pending: dict[str, int] = {}  # offline, not decided yet: device -> since
        self._pending_since: int | None = None
        self._group: dict[str, str] = {}  # members of the open grouped alert -> type
        self._group_adopted = False  # an open grouped alert from before a restart
        # Device id -> location from the registry, asked only when a group forms or grows.
        self._locate = locate
        self._locations: dict[str, str] = {}

    # -- start-up

    def load(self, store: AlertStore | None = None) -> int:
        """Adopt the store's open alerts (active or acknowledged), so an engine restarted
        after a crash clears them when their values come back. Returns how many."""
        adopted = 0
        for alert in (store or self._store).open_alerts():
            try:
                rule = Rule(alert.rule)
            except ValueError:
                continue  # not one of ours (an operator's or a newer version's rule)
            if rule is Rule.OFFLINE_GROUP:
                # Its members are not stored: it is cleared when no meter is offline.
                self._group_adopted = True
                adopted += 1
                continue
            track = self._device(alert.device_id).rules.setdefault(rule, _RuleTrack())
            track.open, track.worst, track.ok_since = True, None, None
            adopted += 1
        return adopted

    # -- observations

    def on_telemetry(
        self, device_id: str, device_type: str, data: Mapping[str, float], at_ms: int,
        ts_ms: int | None = None,
    ) -> None:
        # Every reading of the fleet comes here. The common case (a device up, no alert open,
        # every value in range) is written out as attribute reads and comparisons, building
        # nothing; a verdict that is not OK, or a device with an alert open or held, goes
        # through _observe, the one state machine. _touch, _back and _limits, inline:
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = _Device()
        if device_type != dev.device_type:
            self._retype(dev, device_type)
        at = dev.last_at
        if at_ms > at:  # monotonic per device, so a late record cannot restart a hold
            dev.last_at = at = at_ms
        rules = dev.rules
        if dev.offline_since is not None or _OFFLINE in rules:
            self._back(device_id, dev, at)  # any message proves it is up
        now = self._clock()
        if now >= self._configs_due_ms:
            self._read_configs(now)
        if dev.limits_read != self._configs_read:
            self._read_limits(device_id, dev)
        limits = dev.limits
        # A float is the rule (JSON numbers with a fraction); anything else, the full _number.
        voltage = data.get("voltage_v")
        if voltage is not None and voltage.__class__ is not float:
            voltage = _number(data, "voltage_v")
        current = data.get("current_a")
        if current is not None and current.__class__ is not float:
            current = _number(data, "current_a")
        frequency = data.get("frequency_hz")
        if frequency is not None and frequency.__class__ is not float:
            frequency = _number(data, "frequency_hz")
        hint = limits.nominal_v or dev.hello_nominal
        if hint is not None and hint == dev.hint:
            system = dev.hinted
        elif hint is None and dev.inferred is not None:
            system = dev.inferred
        else:
            system = self._system(dev, limits, voltage, frequency)
        # Each check: the verdict's OK condition as in check_*, and the state machine only for
        # a verdict that is not OK or a rule with its alert open (an OK verdict and no track
        # is no change: _observe would return at once).
        if system is not None and voltage is not None and (
                voltage < system.min_v or voltage > system.max_v or _VOLTAGE in rules):
            self._observe(device_id, dev, _VOLTAGE, check_voltage(system, voltage), at)
        limit = limits.max_current_a or (DEFAULT_MAX_CURRENT_A[system.key] if system else None)
        if limit is not None and current is not None and (
                not abs(current) <= limit or _CURRENT in rules):
            self._observe(device_id, dev, _CURRENT, check_current(current, limit), at)
        if system is not None and system.frequency_hz is not None and frequency is not None:
            nominal_hz = system.frequency_hz
            band = limits.frequency_band_pct or DEFAULT_FREQUENCY_BAND_PCT
            if not abs(frequency - nominal_hz) <= nominal_hz * band / 100 or _FREQUENCY in rules:
                verdict = check_frequency(frequency, nominal_hz, band)
                self._observe(device_id, dev, _FREQUENCY, verdict, at)
        if self._anomaly is not None:
            # The device clock paces the detector: a replayed backlog is not a burst.
            found = self._anomaly.observe(device_id, dev.device_type, data,
                                          at_ms if ts_ms is None else ts_ms,
                                          limits.anomaly_sensitivity)
            if found is not None or _ANOMALY in rules:
                self._observe(device_id, dev, _ANOMALY, None if found is None else Violation(
                    found.observed, found.score, 1.0, found.message()), at)

    def on_hello(
        self, device_id: str, device_type: str, data: Mapping[str, Any], at_ms: int
    ) -> None:
        dev, at = self._touch(device_id, device_type, at_ms)
        # The latest hello is the device's current word: a firmware that stops sending
        # nominal_v hands the decision back to the readings.
        dev.hello_nominal = _positive_number(data.get("nominal_v"))
        self._back(device_id, dev, at)

    def on_status(self, device_id: str, state: str, at_ms: int) -> None:
        dev, at = self._touch(device_id, None, at_ms)
        if state == "offline":
            self._gone(device_id, dev, at)
        elif state == "online":
            self._back(device_id, dev, at)

    def expect_reboot(self, device_id: str, reason: str, at_ms: int) -> None:
        """The meter is about to restart on purpose (an OTA install, a reboot command): an
        offline within the planned-reboot bound from now raises nothing, unless the meter
        is still away when the bound is over."""
        dev, at = self._touch(device_id, None, at_ms)
        dev.planned_until, dev.planned_reason = at + self._planned_reboot_ms, reason

    def on_fleet_offline(self, offline: int, now_ms: int) -> None:
        """The registry's count of offline meters: clears a grouped alert adopted at start-up
        (whose members are not known) once no meter is offline."""
        if self._group_adopted and offline == 0 and not self._group:
            self._group_adopted = False
            self._queue(GROUP_DEVICE, Rule.OFFLINE_GROUP, _Change(_Op.CLEAR, now_ms))

    def on_gaps(self, device_id: str, gap_count: int, at_ms: int) -> None:
        """`gap_count`: seqs declared missing so far in the device's current boot (the
        tracker's `BootTrack.gap_count`). Rises are counted as losses at `at_ms`; a fall (a
        new boot, late arrivals) only moves the baseline."""
        dev, at = self._touch(device_id, None, at_ms)
        if dev.gap_level is not None and gap_count > dev.gap_level:
            dev.gap_events.append((at, gap_count - dev.gap_level))
            self._waiting.add(device_id)
        dev.gap_level = gap_count
        # Called for every device in every registry batch. Nothing lost in the window and no
        # alert open is the rule: check_gaps(0, threshold) is then OK, so nothing to judge.
        if dev.gap_events or _SEQ_GAPS in dev.rules or (
                dev.limits.gap_threshold or self._gap_threshold) < 0:
            self._judge_gaps(device_id, dev, at)

    # -- writing

    def flush(self, now_ms: int) -> AlertChanges:
        """Let holds expire and gap windows age up to `now_ms`, then write queued changes.

        A store error propagates; what was not written stays queued for the next flush,
        and the counts of what was written carry over to the next successful flush."""
        self._sweep(now_ms)
        if self._anomaly is not None:
            self._anomaly.save(now_ms)  # at most once a minute
        while self._queued:
            key, changes = next(iter(self._queued.items()))
            while changes:
                self._write(key, changes[0])
                changes.pop(0)
            del self._queued[key]
        done, self._done = self._done, AlertChanges()
        return done

    @property
    def anomaly(self) -> AnomalyDetector | None:
        return self._anomaly

    @property
    def queued(self) -> int:
        """Changes waiting for a flush (for metrics and tests)."""
        return sum(len(changes) for changes in self._queued.values())

    # -- internals: device state

    def _device(self, device_id: str) -> _Device:
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = _Device()
        return dev

    def _touch(self, device_id: str, device_type: str | None, at_ms: int) -> tuple[_Device, int]:
        dev = self._device(device_id)
        if device_type and device_type != dev.device_type:
            self._retype(dev, device_type)
        # Monotonic per device, so a late record of an earlier batch cannot restart a hold.
        dev.last_at = max(dev.last_at, at_ms)
        return dev, dev.last_at

    @staticmethod
    def _retype(dev: _Device, device_type: str) -> None:
        # Records decided before the hello was registered still say 'unknown': never let
        # them overwrite a type we know.
        if device_type and device_type != "unknown":
            dev.device_type = device_type
            if dev.inferred is not None and not fits_device_type(dev.inferred, device_type):
                dev.inferred = None

    def _read_configs(self, now: int) -> None:
        """Every device's config, once per TTL; each device's limits follow on its next
        reading (`limits_read`)."""
        try:
            self._configs = self._store.get_configs()
            self._configs_read += 1
            self._configs_due_ms = now + self._config_ttl_ms
        except StoreError as exc:
            # Judge with what we have; a store outage must not stop the message path.
            log.warning("device configs not read, using cached limits: %s", exc)
            self._configs_due_ms = now + CONFIG_RETRY_MS

    def _read_limits(self, device_id: str, dev: _Device) -> None:
        dev.limits = limits_from_config(device_id, self._configs.get(device_id, {}))
        dev.limits_read = self._configs_read

    def _system(
        self, dev: _Device, limits: Limits, voltage: float | None, frequency: float | None
    ) -> SupplySystem | None:
        hint = limits.nominal_v or dev.hello_nominal
        if hint is not None:
            if hint != dev.hint:  # a hint depends on nothing else: worked out once per value
                dev.hint = hint
                dev.hinted = infer_supply_system(dev.device_type, None, hinted_nominal=hint)
            return dev.hinted
        if dev.inferred is not None:
            return dev.inferred
        guess = infer_supply_system(dev.device_type, voltage, frequency)
        # Lock only a confident guess (measured frequency, or a voltage inside the range):
        # a first reading that is out of every range is judged against the nearest system
        # but may not pin the meter to it; once locked, a bad reading raises the alert
        # instead of moving the meter to another system.
        by_frequency = guess is not None and guess.frequency_hz is not None and bool(frequency)
        if guess is not None and (by_frequency or (voltage and guess.contains(voltage))):
            dev.inferred = guess
        return guess

    def _judge_gaps(self, device_id: str, dev: _Device, at: int) -> None:
        horizon = at - self._gap_window_ms
        while dev.gap_events and dev.gap_events[0][0] <= horizon:
            dev.gap_events.popleft()
        lost = sum(n for _, n in dev.gap_events)
        threshold = dev.limits.gap_threshold or self._gap_threshold
        verdict = check_gaps(lost, threshold, self._gap_window_ms)
        self._observe(device_id, dev, Rule.SEQ_GAPS, verdict, at)

    # -- internals: the alert state machine

    def _observe(
        self, device_id: str, dev: _Device, rule: Rule, violation: Violation | None, at: int
    ) -> None:
        track = dev.rules.get(rule)
        if violation is None:
            if track is not None and track.open:
                if track.ok_since is None:
                    track.ok_since = at
                    self._waiting.add(device_id)
                self._expire(device_id, dev, rule, track, at)
            return
        if track is None:
            track = dev.rules[rule] = _RuleTrack()
        track.ok_since = None  # a relapse within the hold: same alert, hold starts over
        if not track.open:
            track.open, track.worst = True, violation.excess
            self._queue(device_id, rule, _Change(_Op.RAISE, at, violation.value, violation.message))
        elif track.worst is None:
            track.worst = violation.excess  # adopted by load(): its value is already stored
        elif violation.excess >= track.worst + violation.step:
            track.worst = violation.excess
            self._queue(device_id, rule, _Change(_Op.RAISE, at, violation.value, violation.message))

    def _expire(self, device_id: str, dev: _Device, rule: Rule, track: _RuleTrack,
                now: int) -> None:
        if track.ok_since is not None and now - track.ok_since >= self._hold_ms:
            track.open, track.worst, track.ok_since = False, None, None
            del dev.rules[rule]  # closed: the same as no track
            self._queue(device_id, rule, _Change(_Op.CLEAR, now))

    def _queue(self, device_id: str, rule: Rule, change: _Change) -> None:
        changes = self._queued.setdefault((device_id, rule), [])
        if changes and change.op is _Op.RAISE and changes[-1].op is _Op.RAISE:
            # One write carries the worst value; the first keeps its time as raised_at.
            changes[-1] = replace(change, at=changes[-1].at)
            return
        changes.append(change)
        if len(changes) > MAX_QUEUED_PER_ALERT:
            log.warning("device %s: %s alert changes dropped while the store is down", device_id,
                        rule.value)
            del changes[:2]

    # -- internals: offline, planned reboots and groups

    def _gone(self, device_id: str, dev: _Device, at: int) -> None:
        if dev.offline_since is not None:
            return  # known already (a retained status redelivered, the silence check)
        dev.offline_since = at
        track = dev.rules.get(Rule.OFFLINE)
        if track is not None and track.open:  # back and gone again within the hold
            self._observe(device_id, dev, Rule.OFFLINE, OFFLINE_VIOLATION, at)
            return
        if dev.planned_until is not None and at <= dev.planned_until:
            self._planned.add(device_id)
            return
        dev.planned_until = None
        if self._group or self._group_adopted:  # an outage under way: one more meter in it
            self._join_group({device_id: dev.device_type}, at)
            return
        if self._group_window_ms <= 0:  # grouping off: alert at once
            self._observe(device_id, dev, Rule.OFFLINE, OFFLINE_VIOLATION, at)
            return
        if not self._pending:
            self._pending_since = at
        self._pending[device_id] = at

    def _back(self, device_id: str, dev: _Device, at: int) -> None:
        if dev.offline_since is not None:
            dev.offline_since = None
            dev.planned_until = None  # the planned reboot is over: it came back
            self._planned.discard(device_id)
            self._pending.pop(device_id, None)
            if dev.grouped:
                dev.grouped = False
                self._group.pop(device_id, None)
                if not self._group and not self._group_adopted:
                    self._queue(GROUP_DEVICE, Rule.OFFLINE_GROUP, _Change(_Op.CLEAR, at))
        self._observe(device_id, dev, Rule.OFFLINE, None, at)

    def _join_group(self, members: Mapping[str, str], at: int) -> None:
        for device_id in members:
            self._devices[device_id].grouped = True
        self._group.update(members)
        if self._locate is not None:
            try:
                self._locations.update(self._locate(list(members)))
            except StoreError as exc:  # where is a nicety; the alert must still go out
                log.warning("device locations not read for a grouped alert: %s", exc)
        message = offline_group_message(self._group, self._locations)
        self._queue(GROUP_DEVICE, Rule.OFFLINE_GROUP,
                    _Change(_Op.RAISE, at, float(len(self._group)), message))

    def _decide_offline(self, now: int) -> None:
        """Pending offlines whose window is over: one grouped alert for many, else one each."""
        if self._pending_since is None or now - self._pending_since < self._group_window_ms:
            return
        pending, self._pending, self._pending_since = self._pending, {}, None
        if len(pending) >= self._group_min:
            self._join_group({d: self._devices[d].device_type for d in pending},
                             min(pending.values()))
            return
        for device_id, since in pending.items():
            self._observe(device_id, self._devices[device_id], Rule.OFFLINE,
                          OFFLINE_VIOLATION, since)

    def _overdue_reboots(self, now: int) -> None:
        for device_id in list(self._planned):
            dev = self._devices[device_id]
            if dev.planned_until is not None and now <= dev.planned_until:
                continue
            self._planned.discard(device_id)
            bound_s = self._planned_reboot_ms / 1000
            late = replace(OFFLINE_VIOLATION, message=(
                f"device offline: not back {bound_s:g} s after its planned reboot "
                f"({dev.planned_reason})"))
            dev.planned_until = None
            self._observe(device_id, dev, Rule.OFFLINE, late, now)

    def _sweep(self, now: int) -> None:
        self._decide_offline(now)
        if self._planned:
            self._overdue_reboots(now)
        for device_id in list(self._waiting):
            dev = self._devices[device_id]
            if dev.gap_events or Rule.SEQ_GAPS in dev.rules:
                self._judge_gaps(device_id, dev, now)
            for rule, track in list(dev.rules.items()):  # _expire drops the tracks it closes
                self._expire(device_id, dev, rule, track, now)
            if not dev.is_waiting():
                self._waiting.discard(device_id)

    def _write(self, key: tuple[str, Rule], change: _Change) -> None:
        device_id, rule = key
        if change.op is _Op.CLEAR:
            self._done.cleared += len(self._store.clear_alerts_for(device_id, rule.value,
                                                                   change.at))
            return
        _, new = self._store.raise_alert(device_id, rule.value, SEVERITY[rule].value,
                                         change.value, change.message, change.at)
        # "Not new" for a first raise means another collector raised it already; "new"
        # for a refresh means an operator cleared it by hand meanwhile.
        if new:
            self._done.raised += 1
        else:
            self._done.updated += 1


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return None
    return float(value)
