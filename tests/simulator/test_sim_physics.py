"""Feeder physics: what a traction engineer would check on the readings. Pure, no broker."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from iotmeter_tui.backend.simulator.physics import FEEDERS, Feeder, FeederMeter
from iotmeter_tui.backend.supply import SUPPLY_SYSTEMS

DT = 0.5
SAMPLES = 8000  # a bit over an hour of simulated time: dozens of train passages


def run(system: Feeder, seed: int = 3) -> list[dict[str, float]]:
    meter = FeederMeter(system, random.Random(seed), energy_import_kwh=1000.0,
                        energy_export_kwh=100.0)
    return [meter.sample(DT) for _ in range(SAMPLES)]


def test_feeders_stand_on_the_one_en50163_table() -> None:
    # The limits the trains keep to are the objects the alert rules judge by, not a copy
    # (tests/collector/test_alerts.py checks the table's figures).
    assert [feeder.supply for feeder in FEEDERS.values()] == list(SUPPLY_SYSTEMS)
    for feeder in FEEDERS.values():
        assert (feeder.min_permanent_v, feeder.max_permanent_v) == (feeder.supply.min_v,
                                                                    feeder.supply.max_v)
    assert FEEDERS["dc_750"].frequency_hz == 0.0  # the simulator's "no frequency"


@pytest.mark.parametrize("key", list(FEEDERS))
def test_readings_are_physical(key: str) -> None:
    system = FEEDERS[key]
    readings = run(system)
    voltages = [r["voltage_v"] for r in readings]
    currents = [r["current_a"] for r in readings]
    assert system.min_permanent_v <= min(voltages) and max(voltages) <= system.max_permanent_v
    # Trains pass: near-idle, near-peak and regenerating (negative) currents all occur.
    assert max(currents) > 0.8 * system.peak_current_a
    assert min(currents) < -0.2 * system.peak_current_a
    assert min(abs(c) for c in currents) < 2 * system.aux_current_a
    # The voltage sags under load and rises under regeneration: strongly anti-correlated.
    heavy = [v for v, c in zip(voltages, currents, strict=True) if c > 0.6 * system.peak_current_a]
    regen = [v for v, c in zip(voltages, currents, strict=True) if c < -0.1 * system.peak_current_a]
    assert max(heavy) < min(regen) or sum(heavy) / len(heavy) < sum(regen) / len(regen)

    for prev, cur in itertools.pairwise(readings):
        assert cur["energy_import_kwh"] >= prev["energy_import_kwh"]
        assert cur["energy_export_kwh"] >= prev["energy_export_kwh"]
        # Temperature drifts slowly: no jumps between readings half a second apart.
        assert abs(cur["temperature_c"] - prev["temperature_c"]) < 1.0
    assert readings[-1]["energy_export_kwh"] > 100.0  # regeneration exported energy

    for r in readings:
        if system.kind == "dc":
            assert set(r) == {"voltage_v", "current_a", "power_kw", "energy_import_kwh",
                              "energy_export_kwh", "temperature_c"}
            assert r["power_kw"] == pytest.approx(r["voltage_v"] * r["current_a"] / 1000,
                                                  abs=0.001)
        else:
            assert set(r) == {"voltage_v", "current_a", "active_power_kw", "reactive_power_kvar",
                              "power_factor", "frequency_hz", "energy_import_kwh",
                              "energy_export_kwh", "thd_pct", "temperature_c"}
            pf = r["power_factor"]
            assert 0.7 < pf <= 1.0
            apparent = r["voltage_v"] * abs(r["current_a"]) / 1000
            assert r["active_power_kw"] == pytest.approx(
                r["voltage_v"] * r["current_a"] * pf / 1000, abs=0.001)
            assert math.hypot(r["active_power_kw"], r["reactive_power_kvar"]) == \
                pytest.approx(apparent, rel=1e-4, abs=0.002)
            assert abs(r["frequency_hz"] - system.frequency_hz) < 0.5
            assert 0 < r["thd_pct"] < 15


@pytest.mark.parametrize("key", list(FEEDERS))
def test_energy_integrates_power(key: str) -> None:
    system = FEEDERS[key]
    readings = run(system)
    power = "power_kw" if system.kind == "dc" else "active_power_kw"
    imported = sum(max(r[power], 0) for r in readings) * DT / 3600
    exported = sum(max(-r[power], 0) for r in readings) * DT / 3600
    assert readings[-1]["energy_import_kwh"] - 1000 == pytest.approx(imported, rel=1e-3, abs=0.01)
    assert readings[-1]["energy_export_kwh"] - 100 == pytest.approx(exported, rel=1e-3, abs=0.01)


def test_same_seed_same_readings_other_seed_other_readings() -> None:
    system = FEEDERS["dc_1500"]
    assert run(system, seed=11)[:500] == run(system, seed=11)[:500]
    assert run(system, seed=11)[:500] != run(system, seed=12)[:500]
