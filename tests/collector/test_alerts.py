"""Alert rules and the alert engine: supply-system inference, each rule's raise/hold/clear
cycle, storms, restarts and store outages. A small in-memory store stands in for the metadata
port in the unit tests; the last tests run the engine against the real SQLite adapter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotmeter_tui.backend.collector.alerts import (
    AC_TYPE,
    DC_TYPE,
    DEFAULT_MAX_CURRENT_A,
    SEVERITY,
    AlertEngine,
    Limits,
    Rule,
    Severity,
    check_current,
    check_frequency,
    check_voltage,
    infer_supply_system,
    limits_from_config,
)
from iotmeter_tui.backend.errors import StoreUnavailable
from iotmeter_tui.backend.supply import (
    AC_15KV,
    AC_25KV,
    DC_750,
    DC_1500,
    DC_3000,
    SUPPLY_SYSTEMS,
    SupplySystem,
)

HOLD = 30_000
T0 = 1_795_740_000_000


# --- a fake metadata store: just the alert and config part of the port ---------------------

@dataclass
class FakeAlert:
    id: int
    device_id: str
    rule: str
    severity: str
    state: str
    value: float | None
    message: str
    raised_at: int
    updated_at: int
    cleared_at: int | None = None


@dataclass
class FakeStore:
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: list[FakeAlert] = field(default_factory=list)
    writes: list[tuple[str, str, str, int]] = field(default_factory=list)  # op, device, rule, at
    config_reads: int = 0
    down: bool = False
    writes_before_failure: int | None = None  # fail once this many more writes succeeded

    def _write_allowed(self) -> None:
        if self.writes_before_failure is not None:
            if self.writes_before_failure == 0:
                raise StoreUnavailable("metadata", "connection lost")
            self.writes_before_failure -= 1
        if self.down:
            raise StoreUnavailable("metadata", "database is down")

    def _open(self, device_id: str, rule: str) -> FakeAlert | None:
        found = [a for a in self.alerts
                 if (a.device_id, a.rule) == (device_id, rule) and a.state != "cleared"]
        assert len(found) <= 1, "the database allows one open alert per device and rule"
        return found[0] if found else None

    def raise_alert(self, device_id: str, rule: str, severity: str, value: float | None,
                    message: str, at: int) -> tuple[FakeAlert, bool]:
        self._write_allowed()
        self.writes.append(("raise", device_id, rule, at))
        alert = self._open(device_id, rule)
        if alert is not None:
            alert.severity, alert.value, alert.message, alert.updated_at = (
                severity, value, message, at)
            return alert, False
        alert = FakeAlert(len(self.alerts) + 1, device_id, rule, severity, "active", value,
                          message, at, at)
        self.alerts.append(alert)
        return alert, True

    def clear_alerts_for(self, device_id: str, rule: str, at: int) -> list[int]:
        self._write_allowed()
        self.writes.append(("clear", device_id, rule, at))
        alert = self._open(device_id, rule)
        if alert is None:
            return []
        alert.state, alert.cleared_at, alert.updated_at = "cleared", at, at
        return [alert.id]

    def open_alerts(self, device_id: str | None = None) -> list[FakeAlert]:
        return [a for a in self.alerts if a.state != "cleared"
                and (device_id is None or a.device_id == device_id)]

    def get_configs(self) -> dict[str, dict[str, Any]]:
        self.config_reads += 1
        if self.down:
            raise StoreUnavailable("metadata", "database is down")
        return {device_id: dict(config) for device_id, config in self.configs.items()}

    # test helpers
    def of(self, device_id: str, rule: Rule) -> list[FakeAlert]:
        return [a for a in self.alerts if (a.device_id, a.rule) == (device_id, rule.value)]

    def raises(self, device_id: str, rule: Rule) -> int:
        return sum(1 for w in self.writes if w[:3] == ("raise", device_id, rule.value))


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms


def make_engine(store: FakeStore | None = None, **kwargs: Any) -> tuple[AlertEngine, FakeStore]:
    store = store if store is not None else FakeStore()
    kwargs.setdefault("clock", Clock())
    return AlertEngine(store, hold_ms=HOLD, **kwargs), store


def dc(engine: AlertEngine, at: int, voltage: float = 750.0, current: float = 1_200.0,
       device: str = "dc-1") -> None:
    engine.on_telemetry(device, DC_TYPE, {"voltage_v": voltage, "current_a": current,
                                          "power_kw": voltage * current / 1000}, at)


def ac(engine: AlertEngine, at: int, voltage: float = 25_000.0, frequency: float = 50.0,
       current: float = 300.0, device: str = "ac-1") -> None:
    engine.on_telemetry(device, AC_TYPE, {"voltage_v": voltage, "current_a": current,
                                          "frequency_hz": frequency}, at)


def feed(start: int, seconds: int, send: Callable[[int], None]) -> int:
    """Send one message a second for `seconds`; returns the time of the next second."""
    for i in range(seconds):
        send(start + i * 1000)
    return start + seconds * 1000


def run(engine: AlertEngine, start: int, seconds: int, send: Callable[[int], None],
        flush_every_s: int = 5) -> int:
    """Like feed, flushing every few seconds (as the registry sink does) and at the end."""
    at = start
    for i in range(seconds):
        at = start + i * 1000
        send(at)
        if (i + 1) % flush_every_s == 0 or i == seconds - 1:
            engine.flush(at)
    return at + 1000


# --- supply systems ---------------------------------------------------------------------------

@pytest.mark.parametrize("system", SUPPLY_SYSTEMS, ids=lambda s: s.name)
@pytest.mark.parametrize("where", ["min", "nominal", "max"])
def test_every_system_is_inferred_from_a_reading_in_its_range(
    system: SupplySystem, where: str
) -> None:
    voltage = {"min": system.min_v, "nominal": system.nominal_v, "max": system.max_v}[where]
    device_type = DC_TYPE if system.kind == "dc" else AC_TYPE
    assert infer_supply_system(device_type, voltage) is system
    assert infer_supply_system("unknown", voltage) is system
    assert system.contains(voltage)


def test_en_50163_permanent_ranges() -> None:
    assert [(s.nominal_v, s.min_v, s.max_v) for s in SUPPLY_SYSTEMS] == [
        (750, 500, 900), (1_500, 1_000, 1_800), (3_000, 2_000, 3_600),
        (15_000, 11_000, 17_250), (25_000, 19_000, 27_500),
    ]
    assert [(s.frequency_hz) for s in SUPPLY_SYSTEMS] == [None, None, None, 16.7, 50.0]


def test_every_supply_system_has_a_default_current_limit() -> None:
    assert set(DEFAULT_MAX_CURRENT_A) == {s.key for s in SUPPLY_SYSTEMS}


@pytest.mark.parametrize(("device_type", "voltage", "expected"), [
    (DC_TYPE, 950, DC_750),  # between 750's and 1500's ranges: nearer 750 on a log scale
    (DC_TYPE, 1_900, DC_1500),
    (DC_TYPE, 4_500, DC_3000),
    (DC_TYPE, 300, DC_750),
    (DC_TYPE, 15_000, DC_3000),  # a DC meter is never put on an AC system by a reading
    (AC_TYPE, 18_000, AC_15KV),
    (AC_TYPE, 30_000, AC_25KV),
    (AC_TYPE, 3_000, AC_15KV),
    ("unknown", 10_000, AC_15KV),
])
def test_out_of_range_reading_picks_the_nearest_nominal_on_a_log_scale(
    device_type: str, voltage: float, expected: SupplySystem
) -> None:
    assert infer_supply_system(device_type, voltage) is expected


def test_ac_system_is_picked_by_frequency_where_measured() -> None:
    # 17 kV lies in the 15 kV range, but at 50 Hz it is a sagging 25 kV line.
    assert infer_supply_system(AC_TYPE, 17_000, frequency_hz=50.0) is AC_25KV
    assert infer_supply_system(AC_TYPE, 26_000, frequency_hz=16.7) is AC_15KV
    assert infer_supply_system("unknown", 900, frequency_hz=49.9) is AC_25KV
    assert infer_supply_system(DC_TYPE, 750, frequency_hz=50.0) is DC_750


def test_a_hinted_nominal_overrides_readings_and_type() -> None:
    assert infer_supply_system(DC_TYPE, 750, hinted_nominal=1_500) is DC_1500
    assert infer_supply_system(AC_TYPE, 25_000, 50.0, hinted_nominal=15_000) is AC_15KV
    assert infer_supply_system(DC_TYPE, 750, hinted_nominal=25_000) is AC_25KV
    assert infer_supply_system("unknown", None, hinted_nominal=3_000) is DC_3000


def test_nothing_is_inferred_without_a_live_voltage() -> None:
    assert infer_supply_system(DC_TYPE, 0.0) is None
    assert infer_supply_system(DC_TYPE, None) is None
    assert infer_supply_system(AC_TYPE, -5.0) is None


def test_extreme_readings_and_hints_never_break_the_inference() -> None:
    """Found by the collector fuzz: each of these once raised inside the registry sink,
    which then retried the same batch for ever."""
    tiny = 5e-324  # the smallest float: tiny / 750 is 0.0
    assert infer_supply_system(DC_TYPE, tiny) is DC_750
    assert infer_supply_system(AC_TYPE, 25_000, tiny) is AC_15KV
    assert infer_supply_system(DC_TYPE, 750, hinted_nominal=tiny) is DC_750
    assert infer_supply_system(DC_TYPE, 1e308) is DC_3000
    assert limits_from_config("d", {"nominal_v": 10**309, "max_current_a": tiny}) == Limits(
        max_current_a=tiny)


@given(st.sampled_from(SUPPLY_SYSTEMS), st.floats(0, 1))
def test_any_reading_inside_a_range_infers_that_system(system: SupplySystem, x: float) -> None:
    voltage = system.min_v + x * (system.max_v - system.min_v)
    assert infer_supply_system("unknown", voltage) is system


# --- pure checks ------------------------------------------------------------------------------

def test_voltage_check_names_the_side_and_the_range() -> None:
    assert check_voltage(DC_750, 900) is None
    low = check_voltage(DC_750, 480)
    assert low is not None and low.excess == 20 and "below" in low.message
    high = check_voltage(AC_25KV, 28_000)
    assert high is not None and high.excess == 500 and "27,500" in high.message


def test_regenerative_current_is_judged_by_magnitude() -> None:
    assert check_current(-5_999, 6_000) is None
    regen = check_current(-6_500, 6_000)
    assert regen is not None
    assert (regen.value, regen.excess) == (-6_500, 500)
    assert "regenerating" in regen.message


def test_frequency_band_is_one_percent_either_side() -> None:
    assert check_frequency(50.5, 50.0, 1.0) is None
    assert check_frequency(49.5, 50.0, 1.0) is None
    assert check_frequency(50.6, 50.0, 1.0) is not None
    assert check_frequency(16.8, 16.7, 1.0) is None
    assert check_frequency(16.5, 16.7, 1.0) is not None  # below 16.533 Hz


def test_config_values_are_validated() -> None:
    limits = limits_from_config("d", {"nominal_v": "1500", "max_current_a": -3,
                                      "frequency_band_pct": True, "gap_threshold": 25.0,
                                      "colour": "red"})
    assert limits == Limits(nominal_v=1_500.0, gap_threshold=25)


def test_every_rule_has_a_severity() -> None:
    assert set(SEVERITY) == set(Rule)
    assert {s.value for s in SEVERITY.values()} == {s.value for s in Severity}


# --- the engine: each rule raises once, then clears after the hold -----------------------------

Stimulus = Callable[[AlertEngine, int], None]


def lose_seqs(engine: AlertEngine, at: int, level: int) -> None:
    dc(engine, at)
    engine.on_gaps("dc-1", level, at)


SCENARIOS: dict[Rule, tuple[str, Stimulus, Stimulus]] = {
    Rule.VOLTAGE_RANGE: ("dc-1", lambda e, t: dc(e, t, voltage=950), lambda e, t: dc(e, t)),
    Rule.OVER_CURRENT: ("dc-1", lambda e, t: dc(e, t, current=7_000), lambda e, t: dc(e, t)),
    Rule.FREQUENCY_BAND: ("ac-1", lambda e, t: ac(e, t, frequency=50.8), lambda e, t: ac(e, t)),
    Rule.OFFLINE: ("dc-1", lambda e, t: e.on_status("dc-1", "offline", t),
                   lambda e, t: e.on_status("dc-1", "online", t)),
    # 25 seqs lost at once, then no more: the 10-minute window keeps the alert up.
    Rule.SEQ_GAPS: ("dc-1", lambda e, t: lose_seqs(e, t, 25), lambda e, t: dc(e, t)),
}


@pytest.mark.parametrize("rule", list(SCENARIOS), ids=str)
def test_each_rule_raises_once_for_a_long_violation_and_clears_after_the_hold(
    rule: Rule,
) -> None:
    device, bad, good = SCENARIOS[rule]
    engine, store = make_engine()
    if rule is Rule.SEQ_GAPS:
        engine.on_gaps(device, 0, T0 - 1)  # the boot's baseline
    else:
        good(engine, T0 - 1)  # a normal first reading, so the system is locked
    t = run(engine, T0, 600, lambda at: bad(engine, at))
    assert store.raises(device, rule) == 1
    [alert] = store.of(device, rule)
    assert (alert.state, alert.severity, alert.raised_at) == ("active", SEVERITY[rule], T0)

    if rule is Rule.SEQ_GAPS:
        t = T0 + 600_000  # the losses age out of the window
    t = run(engine, t, HOLD // 1000 - 1, lambda at: good(engine, at), flush_every_s=1)
    assert alert.state == "active", "cleared before the hold time"
    good(engine, t)
    engine.flush(t + 1000)
    assert alert.state == "cleared"
    assert store.raises(device, rule) == 1
    assert sum(1 for w in store.writes if w[0] == "clear") == 1


def test_in_range_readings_write_nothing() -> None:
    engine, store = make_engine()
    run(engine, T0, 1_000, lambda at: dc(engine, at), flush_every_s=1)
    assert store.writes == []
    assert store.config_reads == 1  # the cache, not a read per message


def test_clear_waits_for_the_hold_even_when_messages_stop() -> None:
    engine, store = make_engine()
    dc(engine, T0, current=8_000)
    engine.flush(T0)
    dc(engine, T0 + 1000)  # back in range, then silence
    assert engine.flush(T0 + 1000 + HOLD - 1).cleared == 0
    changes = engine.flush(T0 + 1000 + HOLD)
    assert changes.cleared == 1
    [alert] = store.of("dc-1", Rule.OVER_CURRENT)
    assert (alert.state, alert.cleared_at) == ("cleared", T0 + 1000 + HOLD)


def test_flapping_within_the_hold_neither_clears_nor_raises_again() -> None:
    engine, store = make_engine()
    t = T0
    for _ in range(30):  # 10 s over the limit, 20 s under, for 15 minutes
        t = run(engine, t, 10, lambda at: dc(engine, at, current=6_500))
        t = run(engine, t, 20, lambda at: dc(engine, at, current=5_000))
    assert store.raises("dc-1", Rule.OVER_CURRENT) == 1
    assert [w[0] for w in store.writes] == ["raise"]
    run(engine, t, 31, lambda at: dc(engine, at, current=5_000))
    assert [a.state for a in store.of("dc-1", Rule.OVER_CURRENT)] == ["cleared"]


def test_an_alert_is_refreshed_only_when_notably_worse() -> None:
    engine, store = make_engine()
    dc(engine, T0, current=6_500)
    dc(engine, T0 + 1000, current=6_900)  # +400 A: less than 10 % of the limit
    assert engine.flush(T0 + 1000).raised == 1
    for i, current in enumerate([7_200, 7_000, 6_800, 7_300]):
        dc(engine, T0 + 2000 + i * 1000, current=current)
    changes = engine.flush(T0 + 6000)
    assert (changes.raised, changes.updated) == (0, 1)
    [alert] = store.of("dc-1", Rule.OVER_CURRENT)
    assert (alert.value, alert.raised_at, alert.updated_at) == (7_200, T0, T0 + 2000)


def test_worsening_before_a_flush_makes_one_write_with_the_worst_value() -> None:
    engine, store = make_engine()
    for i, current in enumerate([6_100, 7_000, 8_000]):
        dc(engine, T0 + i * 1000, current=current)
    assert engine.queued == 1
    engine.flush(T0 + 3000)
    [alert] = store.of("dc-1", Rule.OVER_CURRENT)
    assert (alert.value, alert.raised_at) == (8_000, T0)
    assert store.raises("dc-1", Rule.OVER_CURRENT) == 1


def test_regenerative_over_current_raises() -> None:
    engine, store = make_engine()
    dc(engine, T0, current=-6_500)
    engine.flush(T0)
    [alert] = store.of("dc-1", Rule.OVER_CURRENT)
    assert alert.value == -6_500 and "regenerating" in alert.message


def test_a_whole_episode_between_flushes_is_still_recorded() -> None:
    engine, store = make_engine()
    dc(engine, T0, current=9_000)
    feed(T0 + 1000, 40, lambda at: dc(engine, at))
    assert engine.queued == 2
    engine.flush(T0 + 41_000)
    [alert] = store.of("dc-1", Rule.OVER_CURRENT)
    assert (alert.state, alert.raised_at, alert.value) == ("cleared", T0, 9_000)


# --- offline ----------------------------------------------------------------------------------

def test_offline_then_online_clears_after_the_hold_and_a_new_outage_is_a_new_alert() -> None:
    engine, store = make_engine()
    engine.on_status("dc-1", "offline", T0)
    engine.on_status("dc-1", "offline", T0 + 5000)  # retained status redelivered
    engine.flush(T0 + 5000)
    engine.on_status("dc-1", "online", T0 + 10_000)
    engine.on_status("dc-1", "offline", T0 + 20_000)  # a flap: same alert, hold restarts
    engine.on_status("dc-1", "online", T0 + 25_000)
    assert engine.flush(T0 + 25_000 + HOLD - 1).cleared == 0
    assert engine.flush(T0 + 25_000 + HOLD).cleared == 1
    engine.on_status("dc-1", "offline", T0 + 100_000)
    engine.flush(T0 + 100_000)
    assert [(a.state, a.raised_at, a.value) for a in store.of("dc-1", Rule.OFFLINE)] == [
        ("cleared", T0, None), ("active", T0 + 100_000, None)]


def test_any_message_after_offline_counts_as_online() -> None:
    engine, store = make_engine()
    engine.on_status("dc-1", "offline", T0)
    engine.on_hello("dc-1", DC_TYPE, {"device_type": DC_TYPE, "heartbeat_s": 10}, T0 + 1000)
    run(engine, T0 + 2000, 31, lambda at: dc(engine, at))
    assert [a.state for a in store.of("dc-1", Rule.OFFLINE)] == ["cleared"]


# --- sequence gaps ----------------------------------------------------------------------------

def test_gaps_alert_above_the_threshold_within_the_window() -> None:
    engine, store = make_engine(gap_threshold=10, gap_window_ms=600_000)
    engine.on_gaps("dc-1", 100, T0)  # earlier losses of this boot: the baseline, not news
    engine.on_gaps("dc-1", 110, T0 + 1000)  # 10 lost: at the threshold, not above
    engine.flush(T0 + 1000)
    assert store.of("dc-1", Rule.SEQ_GAPS) == []
    engine.on_gaps("dc-1", 111, T0 + 2000)
    engine.flush(T0 + 2000)
    [alert] = store.of("dc-1", Rule.SEQ_GAPS)
    assert (alert.value, alert.severity) == (11, "warning")
    # No more losses: the first ten leave the window at T0 + 601 s, then the hold runs.
    assert engine.flush(T0 + 601_000).cleared == 0
    assert engine.flush(T0 + 601_000 + HOLD - 1).cleared == 0
    assert engine.flush(T0 + 601_000 + HOLD).cleared == 1


def test_a_new_boot_resets_the_gap_baseline() -> None:
    engine, store = make_engine()
    engine.on_gaps("dc-1", 5, T0)
    engine.on_gaps("dc-1", 0, T0 + 1000)  # rebooted: the new boot's count starts at 0
    engine.on_gaps("dc-1", 8, T0 + 2000)
    engine.flush(T0 + 2000)
    assert store.of("dc-1", Rule.SEQ_GAPS) == []
    engine.on_gaps("dc-1", 11, T0 + 3000)  # 11 lost in this boot within the window
    engine.flush(T0 + 3000)
    assert len(store.of("dc-1", Rule.SEQ_GAPS)) == 1


# --- supply system inference inside the engine ------------------------------------------------

def test_an_inferred_system_stays_put_when_readings_leave_its_range() -> None:
    engine, store = make_engine()
    run(engine, T0, 10, lambda at: dc(engine, at, voltage=760))
    run(engine, T0 + 10_000, 10, lambda at: dc(engine, at, voltage=1_500))
    [alert] = store.of("dc-1", Rule.VOLTAGE_RANGE)
    assert "above" in alert.message and "DC 750 V" in alert.message


def test_a_first_reading_out_of_every_range_does_not_pin_the_system() -> None:
    engine, store = make_engine()
    dc(engine, T0, voltage=950)  # judged against DC 750 (nearest), but not locked to it
    run(engine, T0 + 1000, 60, lambda at: dc(engine, at, voltage=1_500))
    [alert] = store.of("dc-1", Rule.VOLTAGE_RANGE)
    assert alert.state == "cleared"
    run(engine, T0 + 61_000, 10, lambda at: dc(engine, at, voltage=1_700))
    assert len(store.of("dc-1", Rule.VOLTAGE_RANGE)) == 1  # now on DC 1500: in range


def test_the_hello_hint_and_the_config_override_pick_the_system() -> None:
    engine, store = make_engine()
    engine.on_hello("dc-1", DC_TYPE, {"nominal_v": 1_500}, T0)
    dc(engine, T0 + 1000, voltage=800)  # fine on 750 V, too low on 1500 V
    engine.flush(T0 + 1000)
    [alert] = store.of("dc-1", Rule.VOLTAGE_RANGE)
    assert "DC 1500 V" in alert.message

    clock = Clock()
    store = FakeStore(configs={"dc-2": {"nominal_v": 750}})
    engine, _ = make_engine(store, clock=clock)
    engine.on_hello("dc-2", DC_TYPE, {"nominal_v": 1_500}, T0)
    run(engine, T0, 60, lambda at: dc(engine, at, voltage=800, device="dc-2"))
    assert store.of("dc-2", Rule.VOLTAGE_RANGE) == []  # the operator's word wins


def test_a_new_nominal_hint_moves_the_meter_although_its_system_is_cached() -> None:
    """The system of a hint is worked out once per hint value and kept on the device: a
    changed config or hello must still move the meter to its new system."""
    clock = Clock()
    store = FakeStore(configs={"dc-1": {"nominal_v": 1_500}})
    engine, _ = make_engine(store, clock=clock)
    engine.on_hello("dc-1", DC_TYPE, {"nominal_v": 750}, T0)
    at = run(engine, T0, 5, lambda at: dc(engine, at, voltage=800))  # too low on 1500 V
    [alert] = store.of("dc-1", Rule.VOLTAGE_RANGE)
    assert (alert.state, "DC 1500 V" in alert.message) == ("active", True)
    store.configs["dc-1"] = {}  # the hello's 750 V decides now
    clock.ms += 60_000
    at = run(engine, at, 40, lambda at: dc(engine, at, voltage=800))
    assert [a.state for a in store.of("dc-1", Rule.VOLTAGE_RANGE)] == ["cleared"]
    engine.on_hello("dc-1", DC_TYPE, {"nominal_v": 3_000}, at)
    run(engine, at, 5, lambda at: dc(engine, at, voltage=800))
    alerts = store.of("dc-1", Rule.VOLTAGE_RANGE)
    assert [a.state for a in alerts] == ["cleared", "active"]
    assert "DC 3000 V" in alerts[-1].message


def test_a_device_type_change_drops_a_system_inferred_for_the_other_kind() -> None:
    engine, store = make_engine()
    engine.on_telemetry("m-1", "unknown", {"voltage_v": 800.0}, T0)  # locks DC 750
    engine.on_hello("m-1", AC_TYPE, {}, T0 + 1000)
    engine.on_telemetry("m-1", "unknown", {"voltage_v": 25_000.0, "frequency_hz": 50.0},
                        T0 + 2000)  # a record decided before the hello: type ignored
    engine.flush(T0 + 2000)
    assert store.alerts == []


def test_config_overrides_limits_and_is_reread_at_most_every_minute() -> None:
    clock = Clock()
    store = FakeStore(configs={"dc-1": {"max_current_a": 2_000}})
    engine, _ = make_engine(store, clock=clock)
    run(engine, T0, 20, lambda at: dc(engine, at, current=2_500))
    assert len(store.of("dc-1", Rule.OVER_CURRENT)) == 1
    assert store.config_reads == 1
    store.configs["dc-1"] = {"max_current_a": 3_000, "frequency_band_pct": 5}
    clock.ms += 59_999
    dc(engine, T0 + 20_000, current=2_500)
    assert store.config_reads == 1
    clock.ms += 1
    run(engine, T0 + 21_000, 31, lambda at: dc(engine, at, current=2_500))
    assert store.config_reads == 2
    assert [a.state for a in store.of("dc-1", Rule.OVER_CURRENT)] == ["cleared"]


def test_one_config_read_serves_the_whole_fleet() -> None:
    """A fleet of 5,000 meters once meant 5,000 config queries a minute on the registry's
    path; now every device's config comes from one read per minute."""
    clock = Clock()
    store = FakeStore(configs={"dc-7": {"max_current_a": 2_000}})
    engine, _ = make_engine(store, clock=clock)
    for n in range(50):
        engine.on_telemetry(f"dc-{n}", DC_TYPE, {"voltage_v": 750.0, "current_a": 2_500.0},
                            T0)
    engine.flush(T0)
    assert store.config_reads == 1
    run(engine, T0 + 1000, 31, lambda at: dc(engine, at, current=2_500, device="dc-7"))
    assert store.config_reads == 1
    assert len(store.of("dc-7", Rule.OVER_CURRENT)) == 1  # its own limit, 2,000 A


def test_a_failed_config_read_falls_back_and_is_retried_soon() -> None:
    clock = Clock()
    store = FakeStore(configs={"dc-1": {"max_current_a": 2_000}}, down=True)
    engine, _ = make_engine(store, clock=clock)
    dc(engine, T0, current=2_500)  # judged on the DC 750 V default of 6,000 A
    assert store.config_reads == 1
    store.down = False
    clock.ms += 5_000
    dc(engine, T0 + 1000, current=2_500)
    engine.flush(T0 + 1000)
    assert store.config_reads == 2
    assert len(store.of("dc-1", Rule.OVER_CURRENT)) == 1


def test_frequency_band_override() -> None:
    store = FakeStore(configs={"ac-1": {"frequency_band_pct": 3}})
    engine, _ = make_engine(store)
    run(engine, T0, 40, lambda at: ac(engine, at, frequency=51.2))
    assert store.alerts == []
    ac(engine, T0 + 41_000, frequency=51.6)
    engine.flush(T0 + 41_000)
    [alert] = store.of("ac-1", Rule.FREQUENCY_BAND)
    assert alert.severity == "minor" and "48.50-51.50" in alert.message


# --- restarts and store outages ---------------------------------------------------------------

def test_a_restarted_engine_adopts_open_alerts_and_clears_them() -> None:
    engine, store = make_engine()
    dc(engine, T0, voltage=700)
    run(engine, T0 + 1000, 10, lambda at: dc(engine, at, voltage=950))
    engine.on_status("dc-1", "offline", T0 + 11_000)
    engine.flush(T0 + 11_000)
    store.of("dc-1", Rule.VOLTAGE_RANGE)[0].state = "acknowledged"  # an operator saw it
    store.alerts.append(FakeAlert(99, "dc-1", "temperature", "minor", "active", 80.0, "hot",
                                  T0, T0))  # not one of the engine's rules

    restarted, _ = make_engine(store)
    assert restarted.load(store) == 2
    writes = len(store.writes)
    restarted.on_status("dc-1", "offline", T0 + 20_000)  # retained status on subscribe
    run(restarted, T0 + 20_000, 10, lambda at: dc(restarted, at, voltage=960))
    assert len(store.writes) == writes, "an adopted alert is not raised again"
    run(restarted, T0 + 30_000, 31, lambda at: dc(restarted, at, voltage=950 - 230))
    assert [a.state for a in store.alerts] == ["cleared", "cleared", "active"]
    assert store.raises("dc-1", Rule.VOLTAGE_RANGE) == 1


def test_store_errors_propagate_from_flush_and_nothing_is_lost() -> None:
    engine, store = make_engine()
    for i in range(3):
        dc(engine, T0, current=9_000, device=f"dc-{i}")
    store.writes_before_failure = 1
    with pytest.raises(StoreUnavailable):
        engine.flush(T0)
    assert engine.queued == 2
    store.writes_before_failure = None
    store.down = True
    with pytest.raises(StoreUnavailable):
        engine.flush(T0 + 1000)
    # While the store is down the episode goes on and ends; all of it waits in the queue.
    feed(T0 + 1000, 40, lambda at: dc(engine, at, device="dc-0"))
    store.down = False
    changes = engine.flush(T0 + 41_000)
    assert (changes.raised, changes.cleared) == (3, 1)  # the first write's count carried over
    assert engine.queued == 0
    assert [a.state for a in store.alerts] == ["cleared", "active", "active"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.booleans()), min_size=1, max_size=80))
def test_random_readings_never_storm(steps: list[tuple[int, bool]]) -> None:
    engine, store = make_engine()
    t = T0
    onsets = 0
    previous = False
    for seconds, over in steps:
        t += seconds * 1000
        dc(engine, t, current=7_000 if over else 1_000)
        onsets += over and not previous
        previous = over
        if seconds % 3 == 0:
            engine.flush(t)
    run(engine, t + 1000, 31, lambda at: dc(engine, at))
    alerts = store.of("dc-1", Rule.OVER_CURRENT)
    assert 1 <= len(alerts) <= onsets or onsets == 0 == len(alerts)
    assert store.raises("dc-1", Rule.OVER_CURRENT) == len(alerts)  # constant value: no refresh
    assert all(a.state == "cleared" for a in alerts)


# --- against the real SQLite metadata store ---------------------------------------------------

def test_alert_lifecycle_in_the_sqlite_metadata_store(tmp_path: Path) -> None:
    from iotmeter_tui.backend.stores.factory import open_metadata

    store = open_metadata(f"sqlite:///{tmp_path}/metadata.db")
    try:
        store.set_config("dc-1", "max_current_a", 2_000)
        engine = AlertEngine(store, hold_ms=HOLD, clock=Clock())
        dc(engine, T0)
        feed(T0 + 1000, 20, lambda at: dc(engine, at, current=-2_400))
        engine.on_status("dc-1", "offline", T0 + 21_000)
        assert engine.flush(T0 + 21_000).raised == 2

        by_rule = {a.rule: a for a in store.open_alerts("dc-1")}
        over = by_rule["over_current"]
        assert (over.state, over.severity, over.value, over.raised_at) == (
            "active", "critical", -2_400.0, T0 + 1000)
        assert store.acknowledge_alert(over.id, T0 + 22_000)

        # A crash: a new engine learns the open alerts from the database.
        restarted = AlertEngine(store, hold_ms=HOLD, clock=Clock())
        assert restarted.load(store) == 2
        restarted.on_status("dc-1", "online", T0 + 30_000)
        run(restarted, T0 + 30_000, 40, lambda at: dc(restarted, at))

        assert store.open_alerts() == []
        rows = {a.rule: a for a in store.list_alerts(device_id="dc-1")}
        assert set(rows) == {"over_current", "offline"}
        over = rows["over_current"]
        assert (over.state, over.acknowledged_at, over.cleared_at) == (
            "cleared", T0 + 22_000, T0 + 30_000 + HOLD)
        assert (rows["offline"].state, rows["offline"].severity) == ("cleared", "major")
    finally:
        store.close()


# --- planned reboots and grouped offline alerts -----------------------

PLANNED = 300_000
WINDOW = 10_000


def fleet_engine(store: FakeStore | None = None) -> tuple[AlertEngine, FakeStore]:
    """The engine as the collector builds it: grouping on, a 5-meter threshold."""
    return make_engine(store, planned_reboot_ms=PLANNED, group_min=5, group_window_ms=WINDOW)


def ota_campaign(engine: AlertEngine, devices: list[str], at: int) -> None:
    """Each meter installs, reboots (its Last Will fires), and is offline from `at`."""
    for i, device in enumerate(devices):
        dc(engine, at - 5_000, device=device)
        engine.expect_reboot(device, "OTA install", at - 2_000 + i)
        engine.on_status(device, "offline", at + i)


def test_a_campaign_whose_meters_all_return_leaves_no_offline_alert() -> None:
    engine, store = fleet_engine()
    devices = [f"dc-{i:04d}" for i in range(24)]
    ota_campaign(engine, devices, T0)
    for t in range(T0, T0 + 60_000, 5_000):
        engine.flush(t)  # the collector flushes with every batch and housekeeping round
    for device in devices:
        engine.on_hello(device, DC_TYPE, {"device_type": DC_TYPE, "heartbeat_s": 10},
                        T0 + 60_000)
    engine.flush(T0 + 60_000 + PLANNED * 2)
    assert [a for a in store.alerts if a.rule in ("offline", "offline_group")] == []
    assert store.writes == []


def test_a_campaign_alerts_exactly_once_for_each_meter_that_does_not_return() -> None:
    engine, store = fleet_engine()
    devices = [f"dc-{i:04d}" for i in range(24)]
    stuck = devices[3:9]  # six: more than the group threshold, still one alert each
    ota_campaign(engine, devices, T0)
    for device in devices:
        if device not in stuck:
            dc(engine, T0 + 40_000, device=device)
    engine.flush(T0 + PLANNED - 3_000)  # inside the bound: nothing yet
    assert store.alerts == []
    for t in range(T0 + PLANNED, T0 + 3 * PLANNED, 5_000):
        engine.flush(t)
    offline = [a for a in store.alerts if a.rule == "offline"]
    assert sorted(a.device_id for a in offline) == stuck
    assert all(a.state == "active" and "planned reboot (OTA install)" in a.message
               for a in offline)
    assert not [a for a in store.alerts if a.rule == "offline_group"]
    assert all(store.raises(d, Rule.OFFLINE) == 1 for d in stuck)


def test_a_meter_back_from_its_reboot_pages_again_on_its_next_outage() -> None:
    engine, store = fleet_engine()
    engine.expect_reboot("dc-1", "reboot command", T0)
    engine.on_status("dc-1", "offline", T0 + 1_000)
    engine.on_hello("dc-1", DC_TYPE, {"device_type": DC_TYPE, "heartbeat_s": 10}, T0 + 9_000)
    engine.on_status("dc-1", "offline", T0 + 20_000)  # unplanned, within the old bound
    engine.flush(T0 + 20_000 + WINDOW)
    [alert] = store.of("dc-1", Rule.OFFLINE)
    assert (alert.state, alert.raised_at) == ("active", T0 + 20_000)


def test_a_burst_of_offline_meters_is_one_grouped_alert() -> None:
    engine, store = fleet_engine()
    dcs = [f"dc-{i:04d}" for i in range(1, 13)]
    acs = [f"ac-{i:04d}" for i in range(13, 21)]
    for device in dcs:
        dc(engine, T0 - 60_000, device=device)
    for device in acs:
        ac(engine, T0 - 60_000, device=device)
    for i, device in enumerate(dcs + acs):  # Last Wills over 8 s, as keep-alives expire
        engine.on_status(device, "offline", T0 + i * 400)
        engine.flush(T0 + i * 400)
    assert store.alerts == [], "decided when the window is over, not meter by meter"
    engine.flush(T0 + WINDOW)
    [group] = store.alerts
    assert (group.device_id, group.rule, group.severity, group.value) == (
        "*", "offline_group", "critical", 20.0)
    assert group.message == ("20 meters offline together: 12 power_meter_dc dc-*, "
                             "8 power_meter_ac ac-*")
    # One more meter lost during the outage joins the same alert.
    dc(engine, T0 - 60_000, device="dc-0099")
    engine.on_status("dc-0099", "offline", T0 + 30_000)
    engine.flush(T0 + 30_000)
    assert len(store.alerts) == 1 and group.value == 21.0
    assert store.of("dc-0001", Rule.OFFLINE) == []
    # Cleared when the last of them is back.
    for device in [*dcs, *acs, "dc-0099"]:
        engine.on_status(device, "online", T0 + 60_000)
    engine.flush(T0 + 60_000)
    assert group.state == "cleared"
    assert len(store.alerts) == 1


def test_a_few_offline_meters_alert_one_by_one_after_the_window() -> None:
    engine, store = fleet_engine()
    for i in range(4):
        engine.on_status(f"dc-{i}", "offline", T0 + i)
    engine.flush(T0 + WINDOW - 1)
    assert store.alerts == []
    engine.flush(T0 + WINDOW)
    assert sorted(a.device_id for a in store.alerts) == ["dc-0", "dc-1", "dc-2", "dc-3"]
    assert {(a.rule, a.raised_at) for a in store.alerts if a.device_id == "dc-2"} == {
        ("offline", T0 + 2)}


def test_a_restarted_engine_clears_an_adopted_group_when_no_meter_is_offline() -> None:
    engine, store = fleet_engine()
    for i in range(6):
        engine.on_status(f"dc-{i}", "offline", T0)
    engine.flush(T0 + WINDOW)
    [group] = store.alerts
    restarted, _ = fleet_engine(store)
    assert restarted.load(store) == 1
    restarted.on_fleet_offline(2, T0 + 20_000)
    restarted.flush(T0 + 20_000)
    assert group.state == "active"
    restarted.on_fleet_offline(0, T0 + 25_000)
    restarted.flush(T0 + 25_000)
    assert group.state == "cleared"


def test_a_grouped_alert_says_where_by_the_registrys_locations(tmp_path: Path) -> None:
    """Locations come from the registry (real SQLite store) when the group forms; meters
    without one are described by type and id prefix."""
    from iotmeter_tui.backend.collector.service import device_locations
    from iotmeter_tui.backend.stores.factory import open_metadata

    store = open_metadata(f"sqlite:///{tmp_path}/metadata.db")
    try:
        for i in range(7):
            store.create_device(f"dc-{i:04d}", DC_TYPE, name=None,
                                location="Substation North" if i < 5 else None, metadata={})
        engine = AlertEngine(store, hold_ms=HOLD, clock=Clock(), group_min=5,
                             group_window_ms=WINDOW,
                             locate=lambda ids: device_locations(store, ids))
        for i in range(7):
            dc(engine, T0 - 60_000, device=f"dc-{i:04d}")
            engine.on_status(f"dc-{i:04d}", "offline", T0 + i)
        engine.flush(T0 + WINDOW)
        [group] = store.open_alerts()
        assert (group.device_id, group.rule) == ("*", "offline_group")
        assert group.message == ("7 meters offline together: 5 at Substation North, "
                                 "2 power_meter_dc dc-*")
    finally:
        store.close()
