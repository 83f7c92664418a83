"""The anomaly detector (collector/anomaly.py) on generated streams: each kind of fault it
must catch, what it must not flag, its explanations, sensitivity, and its saved baselines."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from iotmeter_tui.backend.collector.anomaly import (
    EVENT_HOLD_MS,
    RELEARN_MS,
    WARMUP,
    AnomalyDetector,
    Finding,
    parse_sensitivity,
    sensitivity_from_config,
)
from iotmeter_tui.backend.simulator.physics import FEEDERS, FeederMeter

T0 = 1_795_000_000_000
DC = "power_meter_dc"


def meter_stream(key: str = "dc_750", seed: int = 1) -> Callable[[], dict[str, float]]:
    rng = random.Random(seed)
    meter = FeederMeter(FEEDERS[key], rng, energy_import_kwh=5e4, energy_export_kwh=5e3)
    return lambda: meter.sample(1.0)


def feed(det: AnomalyDetector, n: int, start: int = 0, *, key: str = "dc_750",
         sample: Callable[[], dict[str, float]] | None = None,
         alter: Callable[[int, dict[str, float]], dict[str, float]] | None = None,
         step_ms: int = 1000, device: str = "m1", sensitivity: float | None = None,
         ) -> list[tuple[int, Finding | None]]:
    sample = sample or meter_stream(key)
    out = []
    for i in range(start, start + n):
        data = sample()
        if alter is not None:
            data = alter(i, data)
        ts = T0 + i * step_ms
        out.append((ts, det.observe(device, DC, data, ts, sensitivity)))
    return out


def first(found: list[tuple[int, Finding | None]], kind: str) -> tuple[int, Finding] | None:
    for ts, f in found:
        if f is not None and f.kind == kind:
            return ts, f
    return None


@pytest.mark.parametrize("key", sorted(FEEDERS))
def test_a_day_of_normal_traffic_raises_nothing(key: str) -> None:
    det = AnomalyDetector()
    found = feed(det, 86_400, key=key)
    assert [f for _, f in found if f is not None] == []


def test_a_stuck_voltage_is_found_within_ten_readings_and_explained() -> None:
    det = AnomalyDetector()
    sample = meter_stream()
    feed(det, 1000, sample=sample)
    frozen: dict[str, float] = {}

    def stick(i: int, data: dict[str, float]) -> dict[str, float]:
        frozen.setdefault("v", data["voltage_v"])
        return {**data, "voltage_v": frozen["v"]}

    found = feed(det, 30, 1000, sample=sample, alter=stick)
    hit = first(found, "stuck")
    assert hit is not None
    ts, f = hit
    assert f.field == "voltage_v" and f.observed == frozen["v"]
    assert ts - (T0 + 1000 * 1000) <= 10_000
    assert f.since_ms == T0 + 1001 * 1000  # the first repeat
    assert "voltage_v stuck at" in f.message() and f"since ts {f.since_ms}" in f.message()


def test_a_field_that_never_changed_is_not_stuck() -> None:
    """A constant reading from the first message on (a steady setpoint, a bench's fixed
    payload) is not a field that "normally changes": no stuck finding, however long."""
    det = AnomalyDetector()
    data = {"voltage_v": 748.2, "current_a": 1210.5, "temperature_c": 31.0}
    found = [det.observe("m-1", "power_meter_dc", data, T0 + i * 1000) for i in range(5000)]
    assert [f for f in found if f is not None] == []
    assert det.stuck_fields(["m-1"]) == {"m-1": 0}


def test_a_drift_escapes_the_baseline_and_names_the_expected_range() -> None:
    det = AnomalyDetector()
    sample = meter_stream()
    feed(det, 1200, sample=sample)
    found = feed(det, 300, 1200, sample=sample,
                 alter=lambda i, d: {**d, "voltage_v": d["voltage_v"] + 1.5 * (i - 1200)})
    hit = first(found, "level")
    assert hit is not None
    _, f = hit
    assert f.field == "voltage_v" and f.observed > f.high > f.low
    assert "outside expected range" in f.message()


@pytest.mark.parametrize("key", sorted(FEEDERS))
def test_a_slow_drift_is_found_within_30_s_of_being_5_percent_off(key: str) -> None:
    """The simulator's drift (0.2 % of the value a second) is caught while still inside the
    full band: held above half of it and still climbing (DRIFT_HOLD_MS, DRIFT_RISE)."""
    det = AnomalyDetector()
    sample = meter_stream(key)
    feed(det, 3600, sample=sample, key=key)
    base: dict[str, float] = {}

    def drift(i: int, d: dict[str, float]) -> dict[str, float]:
        base.setdefault("v", d["voltage_v"])
        return {**d, "voltage_v": d["voltage_v"] + 0.002 * base["v"] * (i - 3600)}

    found = feed(det, 300, 3600, sample=sample, key=key, alter=drift)
    hit = first(found, "level")
    assert hit is not None
    ts, f = hit
    observable = T0 + (3600 + 25) * 1000  # 5 % off after 25 s
    assert ts - observable <= 30_000, (ts - observable) / 1000
    assert f.field == "voltage_v" and f.observed > f.high and f.since_ms <= ts


def test_a_rise_that_levels_off_is_not_a_drift() -> None:
    """A regenerating train lifts the line, then the lift holds or falls back: no finding
    while it stays inside the band."""
    det = AnomalyDetector()
    sample = meter_stream()
    feed(det, 3600, sample=sample)
    found = feed(det, 120, 3600, sample=sample,
                 alter=lambda i, d: {**d, "voltage_v": d["voltage_v"]
                                     + 0.6 * min(i - 3600, 20)})
    assert first(found, "level") is None


def test_an_energy_counter_going_backwards_or_jumping_is_an_event() -> None:
    det = AnomalyDetector()
    sample = meter_stream()
    feed(det, WARMUP + 100, sample=sample)
    back = feed(det, 1, WARMUP + 100, sample=sample,
                alter=lambda i, d: {**d, "energy_import_kwh": d["energy_import_kwh"] - 100})
    assert back[0][1] is not None and back[0][1].kind == "counter_regression"
    assert "went backwards" in back[0][1].message()
    # The event stays a finding for EVENT_HOLD_MS, then the device looks normal again...
    later = feed(det, EVENT_HOLD_MS // 1000 + 5, WARMUP + 101, sample=sample,
                 alter=lambda i, d: {**d, "energy_import_kwh": d["energy_import_kwh"] - 100})
    assert later[-1][1] is None
    # ... until the counter leaps forward far beyond any power seen.
    jump = feed(det, 1, WARMUP + 200, sample=sample,
                alter=lambda i, d: {**d, "energy_import_kwh": d["energy_import_kwh"] + 5000})
    assert jump[0][1] is not None and jump[0][1].kind == "counter_jump"


def test_a_longer_reporting_interval_is_found_after_three_readings_not_one_gap() -> None:
    det = AnomalyDetector()
    sample = meter_stream()
    feed(det, 600, sample=sample)
    # One lost message doubles one interval: not a change of interval.
    assert [f for _, f in feed(det, 5, 601, sample=sample)] == [None] * 5
    ts = T0 + 606 * 1000
    verdicts = []
    for _ in range(4):
        ts += 5000
        verdicts.append(det.observe("m1", DC, sample(), ts))
    assert verdicts[:2] == [None, None]
    assert verdicts[2] is not None and verdicts[2].kind == "interval"
    assert "reporting interval 5 s outside expected" in verdicts[2].message()


def test_a_late_reading_is_not_judged_and_moves_nothing() -> None:
    det = AnomalyDetector()
    feed(det, 400)
    before = json.dumps(det.snapshot())
    assert det.observe("m1", DC, {"voltage_v": 1e9}, T0) is None
    assert json.dumps(det.snapshot()) == before


def test_non_numbers_are_ignored() -> None:
    det = AnomalyDetector()
    det.observe("m1", DC, {"voltage_v": 750.0, "flag": True, "name": "x"}, T0)  # type: ignore[dict-item]
    assert set(det.snapshot()["devices"]["m1"]["f"]) == {"voltage_v"}


def test_a_held_new_level_becomes_the_baseline() -> None:
    det = AnomalyDetector()
    sample = meter_stream()
    feed(det, 1000, sample=sample)
    shifted = feed(det, RELEARN_MS // 1000 + 600, 1000, sample=sample,
                   alter=lambda i, d: {**d, "temperature_c": d["temperature_c"] + 30})
    assert first(shifted, "level") is not None
    assert shifted[-1][1] is None


def test_sensitivity_zero_turns_the_detector_off_and_higher_narrows() -> None:
    det = AnomalyDetector({DC: 0.0})
    found = feed(det, 500, alter=lambda i, d: {**d, "voltage_v": 1.0})
    assert all(f is None for _, f in found)
    assert det.snapshot()["devices"] == {}
    # A device's own sensitivity wins over its type's.
    det = AnomalyDetector({DC: 0.0})
    found = feed(det, 800, alter=lambda i, d: d if i < 700 else {**d, "voltage_v": 750.0},
                 sensitivity=1.0)
    assert first(found, "stuck") is not None


def test_baselines_survive_a_restart_through_the_state_file(tmp_path: Path) -> None:
    path = tmp_path / "anomaly-baselines.json"
    det = AnomalyDetector(state_path=path)
    sample = meter_stream()
    feed(det, 1000, sample=sample)
    assert det.save(T0 + 10**9)
    assert not det.save(T0 + 10**9 + 1000)  # at most once a minute
    again = AnomalyDetector(state_path=path)
    assert again.load() == 1
    assert again.snapshot() == det.snapshot()
    # Warm at once: a stuck sensor right after the restart is found without a new warm-up.
    frozen = sample()
    found = feed(again, 20, 1000, sample=lambda: dict(frozen))
    assert first(found, "stuck") is not None


def test_baselines_that_went_non_finite_survive_a_restart(tmp_path: Path) -> None:
    """Readings at +/-1.7e308 take a baseline to nan: the state file keeps it as JSON's NaN
    (the fast encoder would write null, and the device's baselines would be lost)."""
    path = tmp_path / "anomaly-baselines.json"
    det = AnomalyDetector(state_path=path)
    feed(det, 300, alter=lambda i, d: {**d, "voltage_v": 1.7e308 if i % 2 else -1.7e308})
    assert any(math.isnan(v) for v in det.snapshot()["devices"]["m1"]["f"]["voltage_v"])
    assert det.save(T0, force=True)
    again = AnomalyDetector(state_path=path)
    assert again.load() == 1
    # nan != nan: compared as text (and a restored count is a float: 1.0 == 1).
    def same(snapshot: dict[str, Any]) -> Any:
        return json.loads(json.dumps(snapshot), parse_int=float, parse_constant=str)
    assert same(again.snapshot()) == same(det.snapshot())


def test_an_unreadable_state_file_means_learning_afresh(tmp_path: Path) -> None:
    path = tmp_path / "anomaly-baselines.json"
    path.write_text("{not json")
    assert AnomalyDetector(state_path=path).load() == 0
    path.write_text(json.dumps({"v": 1, "devices": {"bad": {"t": "x"}, "ok": {
        "t": 1, "i": [1000.0, 20], "f": {"voltage_v": [400, 750, 750, 750, 5, 5, 1, 0, 1]}}}}))
    det = AnomalyDetector(state_path=path)
    assert det.load() == 1
    assert set(det.snapshot()["devices"]) == {"ok"}


def test_a_save_that_fails_is_logged_not_raised(tmp_path: Path) -> None:
    det = AnomalyDetector(state_path=tmp_path / "missing-dir" / "state.json")
    feed(det, 10)
    assert det.save(T0, force=True) is False


def test_sensitivity_settings_and_device_config() -> None:
    assert parse_sensitivity("power_meter_dc=2, x=0")["power_meter_dc"] == 2.0
    assert parse_sensitivity("")["power_meter_ac"] == 1.0
    for bad in ("power_meter_dc", "a=-1", "=2", "a=nan"):
        with pytest.raises(ValueError, match="not DEVICE_TYPE=NUMBER"):
            parse_sensitivity(bad)
    config: dict[str, Any] = {"anomaly_sensitivity": "1.5"}
    assert sensitivity_from_config("m1", config) == 1.5
    for bad_value in (True, "loud", -1, math.inf):
        assert sensitivity_from_config("m1", {"anomaly_sensitivity": bad_value}) is None
    assert sensitivity_from_config("m1", {}) is None


# --- through the alert engine ------------------------------------------------------------------

def test_the_engine_raises_one_explained_anomaly_alert_and_clears_it_after_the_hold(
        tmp_path: Path) -> None:
    from iotmeter_tui.backend.collector.alerts import Rule
    from tests.collector.test_alerts import HOLD, FakeStore, make_engine
    path = tmp_path / "anomaly-baselines.json"
    engine, store = make_engine(anomaly=AnomalyDetector(state_path=path))
    sample = meter_stream()
    at = T0
    for _ in range(1000):
        engine.on_telemetry("m1", DC, sample(), at, at)
        at += 1000
    engine.flush(at)
    assert store.of("m1", Rule.ANOMALY) == [] and path.exists()
    frozen = sample()
    for _ in range(30):
        engine.on_telemetry("m1", DC, {**sample(), "voltage_v": frozen["voltage_v"]}, at, at)
        at += 1000
    engine.flush(at)
    [alert] = store.of("m1", Rule.ANOMALY)
    assert alert.severity == "warning" and alert.state == "active"
    assert alert.value == frozen["voltage_v"] and "voltage_v stuck at" in alert.message
    assert store.raises("m1", Rule.ANOMALY) == 1  # one alert, not one per message
    for _ in range(HOLD // 1000 + 5):
        engine.on_telemetry("m1", DC, sample(), at, at)
        at += 1000
    engine.flush(at)
    assert store.of("m1", Rule.ANOMALY)[0].state == "cleared"
    # A device whose config sets sensitivity 0 is never judged.
    store2 = FakeStore(configs={"m2": {"anomaly_sensitivity": 0}})
    engine2, _ = make_engine(store2, anomaly=AnomalyDetector())
    for i in range(1000):
        engine2.on_telemetry("m2", DC, {"voltage_v": 750.0}, T0 + i * 1000, T0 + i * 1000)
    engine2.flush(T0 + 1_000_000)
    assert store2.of("m2", Rule.ANOMALY) == []


def test_an_earlier_stuck_episode_does_not_hide_the_next() -> None:
    det = AnomalyDetector()
    sample = meter_stream()
    at = feed(det, 1000, sample=sample)[-1][0]
    for episode in range(3):
        frozen = sample()["voltage_v"]
        start = (at - T0) // 1000 + 1
        found = feed(det, 300, start, sample=sample,
                     alter=lambda i, d, v=frozen: {**d, "voltage_v": v})
        assert first(found, "stuck") is not None, f"episode {episode}"
        at = feed(det, 3000, start + 300, sample=sample)[-1][0]


def test_an_idle_counter_counting_its_last_digit_is_not_a_jump() -> None:
    det = AnomalyDetector()
    found = [det.observe("m1", DC, {"energy_export_kwh": 5000.0}, T0 + i * 50)
             for i in range(20_000)]
    found.append(det.observe("m1", DC, {"energy_export_kwh": 5000.001}, T0 + 20_000 * 50))
    assert all(f is None for f in found)


def test_levels_are_judged_only_after_ten_minutes_of_device_time() -> None:
    det = AnomalyDetector()
    # 20 readings a second: 600 readings are 30 s, no train passage yet.
    found = feed(det, 6000, step_ms=50, alter=lambda i, d: {
        **d, "voltage_v": 800.0 + (i % 7) * 0.1 - (300.0 if i > 3000 else 0.0)})
    assert first(found, "level") is None


@pytest.mark.parametrize(("field", "shift"), [("frequency_hz", 0.4), ("power_factor", -0.5)])
def test_frequency_or_power_factor_leaving_its_usual_band(field: str, shift: float) -> None:
    det = AnomalyDetector()
    sample = meter_stream("ac_25kv_50hz")
    assert [f for _, f in feed(det, 2000, key="ac_25kv_50hz", sample=sample)
            if f is not None] == []
    found = feed(det, 30, 2000, sample=sample,
                 alter=lambda i, d: {**d, field: d[field] + shift})
    hit = first(found, "level")
    assert hit is not None and hit[1].field == field
    # 0.4 Hz is just past the frequency's band (0.38 Hz at this age), so the short-term mean
    # needs 10-14 readings to get there, depending on where the median sits (20 seeds).
    assert hit[0] - (T0 + 2000 * 1000) <= 15_000
