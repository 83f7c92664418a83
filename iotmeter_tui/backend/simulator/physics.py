"""Traction feeder physics for the simulated meters: pure and deterministic (a seeded RNG in,
telemetry fields out, no clock, no I/O).

A meter sits on a feeder that trains pass along. Each train passage draws current in phases a
traction engineer recognises: it ramps up while the train accelerates (current-limited start,
then constant power), falls while the train coasts, turns negative while it brakes
regeneratively (energy exported to the line) and fades to the auxiliary load while the section
is empty. The line voltage is the substation's no-load voltage minus the drop across the source
impedance, so it sags under load and rises during regeneration. Trains limit their current at
the EN 50163 permanent limits (as their line-voltage current limitation does), so the voltage
stays inside them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

from iotmeter_tui.backend.supply import AC_15KV, AC_25KV, DC_750, DC_1500, DC_3000, SupplySystem


@dataclass(frozen=True, slots=True)
class Feeder:
    """A typical feeder on one supply system: its substation and the trains it serves."""

    supply: SupplySystem
    no_load_v: float  # substations are set above nominal so the far end stays near it
    source_r_ohm: float  # substation plus line resistance up to the meter
    source_x_ohm: float  # AC only: transformer and catenary reactance
    peak_current_a: float  # one train at full tractive effort
    aux_current_a: float  # lighting, heating, station loads: always there

    @property
    def key(self) -> str:
        return self.supply.key

    @property
    def kind(self) -> str:
        return self.supply.kind

    @property
    def nominal_v(self) -> float:
        return self.supply.nominal_v

    @property
    def min_permanent_v(self) -> float:
        return self.supply.min_v

    @property
    def max_permanent_v(self) -> float:
        return self.supply.max_v

    @property
    def frequency_hz(self) -> float:
        return self.supply.frequency_hz or 0.0  # 0 for DC

    @property
    def device_type(self) -> str:
        return self.supply.device_type


FEEDERS: Final[dict[str, Feeder]] = {
    feeder.key: feeder
    for feeder in (
        Feeder(DC_750, 820, 0.025, 0.0, 3000, 60),
        Feeder(DC_1500, 1620, 0.05, 0.0, 2500, 40),
        Feeder(DC_3000, 3300, 0.12, 0.0, 2000, 25),
        Feeder(AC_15KV, 15750, 0.9, 2.7, 700, 8),
        Feeder(AC_25KV, 26400, 1.5, 6.0, 600, 6),
    )
}
SYSTEMS_BY_KIND: Final[dict[str, tuple[str, ...]]] = {
    "dc": ("dc_750", "dc_1500", "dc_3000"),
    "ac": ("ac_25kv_50hz", "ac_15kv_16.7hz"),
}
# Keep a margin inside the permanent limits: the measurement noise rides on top.
_LIMIT_MARGIN = 0.02


def choose_system(kind: str, rng: random.Random) -> Feeder:
    """Pick a supply system of `kind` ("dc" or "ac") the way a mixed network has them."""
    return FEEDERS[rng.choice(SYSTEMS_BY_KIND[kind])]


@dataclass(slots=True)
class _Passage:
    """One train passing the feeder; times in simulated seconds from the passage start."""

    start: float
    accel_s: float
    coast_s: float
    brake_s: float
    idle_s: float
    peak_a: float
    regen_a: float  # magnitude of the regenerative current

    @property
    def end(self) -> float:
        return self.start + self.accel_s + self.coast_s + self.brake_s + self.idle_s


class TrainTraffic:
    """Traction current over simulated time: one train passage after another."""

    def __init__(self, system: Feeder, rng: random.Random) -> None:
        self._system = system
        self._rng = rng
        self._passage = self._next_passage(start=-rng.uniform(0.0, 60.0))

    def _next_passage(self, start: float) -> _Passage:
        rng, peak = self._rng, self._system.peak_current_a
        return _Passage(
            start=start,
            accel_s=rng.uniform(15.0, 40.0),
            coast_s=rng.uniform(10.0, 60.0),
            brake_s=rng.uniform(8.0, 20.0),
            idle_s=rng.uniform(10.0, 90.0),
            peak_a=peak * rng.uniform(0.5, 1.0),
            regen_a=peak * rng.uniform(0.25, 0.5),
        )

    def current(self, t: float) -> float:
        """Traction current at simulated time t (seconds, never decreasing between calls)."""
        while t >= self._passage.end:
            self._passage = self._next_passage(self._passage.end)
        p = self._passage
        x = t - p.start
        if x < p.accel_s:
            # Current-limited start up to 25 % of the run, then constant power: as speed
            # grows the current falls to about 70 % of the peak by the end of acceleration.
            ramp = 0.25 * p.accel_s
            if x < ramp:
                return p.peak_a * x / ramp
            return p.peak_a * (1.0 - 0.3 * (x - ramp) / (p.accel_s - ramp))
        x -= p.accel_s
        if x < p.coast_s:
            # Power off: the current decays within seconds to nothing but the train's own.
            return 0.7 * p.peak_a * math.exp(-x / 3.0)
        x -= p.coast_s
        if x < p.brake_s:
            # Regeneration builds up quickly, holds, and fades as the train slows to a stop.
            build = min(2.0, 0.2 * p.brake_s)
            fade = 0.3 * p.brake_s
            if x < build:
                return -p.regen_a * x / build
            if x > p.brake_s - fade:
                return -p.regen_a * (p.brake_s - x) / fade
            return -p.regen_a
        return 0.0


class _Drift:
    """A mean-reverting random walk (Ornstein-Uhlenbeck): slow, bounded wander."""

    __slots__ = ("_rng", "_sigma", "_tau", "value")

    def __init__(self, rng: random.Random, tau_s: float, sigma: float) -> None:
        self._rng = rng
        self._tau = tau_s
        self._sigma = sigma
        self.value = 0.0

    def step(self, dt: float, target: float = 0.0) -> float:
        pull = min(1.0, dt / self._tau)
        self.value += (target - self.value) * pull + self._sigma * math.sqrt(pull) * \
            self._rng.gauss(0.0, 1.0)
        return self.value


class FeederMeter:
    """A power meter on one feeder: call `sample(dt)` once per reading, dt in seconds since
    the previous one. Energy counters integrate power and never decrease."""

    def __init__(
        self,
        system: Feeder,
        rng: random.Random,
        *,
        energy_import_kwh: float,
        energy_export_kwh: float,
    ) -> None:
        self.system = system
        self._rng = rng
        self._traffic = TrainTraffic(system, rng)
        self.energy_import_kwh = energy_import_kwh
        self.energy_export_kwh = energy_export_kwh
        self.t = 0.0
        # Other trains and the grid move the substation's voltage by about half a percent.
        self._source = _Drift(rng, tau_s=120.0, sigma=0.006 * system.no_load_v)
        self._ambient_c = rng.uniform(8.0, 28.0)
        self._temperature = _Drift(rng, tau_s=900.0, sigma=0.8)
        self._temperature.value = self._ambient_c
        self._frequency = _Drift(rng, tau_s=30.0, sigma=0.02 if system.frequency_hz == 50 else 0.05)
        self._heating = 0.0

    def sample(self, dt: float) -> dict[str, float]:
        """Advance by dt seconds and return the reading as telemetry fields."""
        system = self.system
        rng = self._rng
        self.t += dt
        demand = self._traffic.current(self.t) + system.aux_current_a * rng.uniform(0.8, 1.2)
        demand += rng.gauss(0.0, 0.005 * system.peak_current_a)  # converter ripple, sensors
        source_v = system.no_load_v + self._source.step(dt)
        # The tap changer / rectifier regulation never lets the source itself leave the band.
        source_v = min(max(source_v, 0.97 * system.no_load_v), 1.01 * system.no_load_v)
        load = min(1.0, abs(demand) / system.peak_current_a)
        # Self-heating of the meter's shunt/CT with the square of the load, slowly.
        self._heating += (12.0 * load * load - self._heating) * min(1.0, dt / 300.0)
        temperature = self._temperature.step(dt, self._ambient_c) + self._heating
        if system.kind == "dc":
            fields = self._dc(demand, source_v, dt)
        else:
            fields = self._ac(demand, source_v, load, dt)
        fields["temperature_c"] = round(temperature, 2)
        return fields

    def _limit_current(self, demand: float, source_v: float, drop_per_a: float) -> float:
        """The current a train actually draws: limited so the line stays inside EN 50163."""
        low = self.system.min_permanent_v * (1 + _LIMIT_MARGIN)
        high = self.system.max_permanent_v * (1 - _LIMIT_MARGIN)
        max_draw = max(0.0, (source_v - low) / drop_per_a)
        max_regen = max(0.0, (high - source_v) / drop_per_a)
        return max(-max_regen, min(max_draw, demand))

    def _integrate(self, power_kw: float, dt: float) -> None:
        if power_kw >= 0:
            self.energy_import_kwh += power_kw * dt / 3600.0
        else:
            self.energy_export_kwh -= power_kw * dt / 3600.0

    def _dc(self, demand: float, source_v: float, dt: float) -> dict[str, float]:
        r = self.system.source_r_ohm
        current = self._limit_current(demand, source_v, r)
        voltage = round(source_v - r * current, 1)
        current = round(current, 1)
        # Power from the rounded readings, so a reader's V*I check holds to the last digit.
        power_kw = voltage * current / 1000.0
        self._integrate(power_kw, dt)
        return {
            "voltage_v": voltage,
            "current_a": current,
            "power_kw": round(power_kw, 3),
            "energy_import_kwh": round(self.energy_import_kwh, 3),
            "energy_export_kwh": round(self.energy_export_kwh, 3),
        }

    def _ac(self, demand: float, source_v: float, load: float, dt: float) -> dict[str, float]:
        system, rng = self.system, self._rng
        # Modern converters run near unity power factor at load; the transformer's magnetising
        # current dominates at light load. Same displacement while regenerating.
        pf = round(min(0.995, 0.80 + 0.17 * min(1.0, load / 0.3) + rng.gauss(0.0, 0.004)), 3)
        sin_phi = math.sqrt(1.0 - pf * pf)
        # Voltage drop of a lagging current through R + jX: I (R cos(phi) + X sin(phi)); the
        # reactive part drops the voltage whichever way the active power flows.
        drop_per_a = system.source_r_ohm * pf + system.source_x_ohm * sin_phi
        current = self._limit_current(demand, source_v, drop_per_a)
        voltage = source_v - current * system.source_r_ohm * pf - \
            abs(current) * system.source_x_ohm * sin_phi
        voltage = round(voltage, 1)
        current = round(current, 1)
        active_kw = voltage * current * pf / 1000.0
        reactive_kvar = voltage * abs(current) * sin_phi / 1000.0
        self._integrate(active_kw, dt)
        # Light load means a larger share of converter harmonics in the current.
        thd = max(0.5, 2.0 + 6.0 * (1.0 - load) + rng.gauss(0.0, 0.2))
        return {
            "voltage_v": voltage,
            "current_a": current,
            "active_power_kw": round(active_kw, 3),
            "reactive_power_kvar": round(reactive_kvar, 3),
            "power_factor": pf,
            "frequency_hz": round(system.frequency_hz + self._frequency.step(dt), 3),
            "energy_import_kwh": round(self.energy_import_kwh, 3),
            "energy_export_kwh": round(self.energy_export_kwh, 3),
            "thd_pct": round(thd, 2),
        }
