"""The railway traction supply systems of EN 50163: nominal voltage, permanent voltage range and
frequency. One table for the alert rules (is a reading inside its system's range?) and for the
simulated feeders (trains limit their current to stay inside it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal


@dataclass(frozen=True, slots=True)
class SupplySystem:
    """One EN 50163 traction supply system."""

    key: str  # stable id, kept in the simulator's state
    name: str  # as operators write it
    kind: Literal["dc", "ac"]
    nominal_v: float
    min_v: float  # lowest permanent voltage (Umin1)
    max_v: float  # highest permanent voltage (Umax1)
    frequency_hz: float | None  # None for DC

    @property
    def device_type(self) -> str:
        """The meter type that measures this kind of supply."""
        return f"power_meter_{self.kind}"

    def contains(self, voltage_v: float) -> bool:
        return self.min_v <= voltage_v <= self.max_v


DC_750: Final = SupplySystem("dc_750", "DC 750 V", "dc", 750, 500, 900, None)
DC_1500: Final = SupplySystem("dc_1500", "DC 1500 V", "dc", 1_500, 1_000, 1_800, None)
DC_3000: Final = SupplySystem("dc_3000", "DC 3000 V", "dc", 3_000, 2_000, 3_600, None)
AC_15KV: Final = SupplySystem("ac_15kv_16.7hz", "AC 15 kV 16.7 Hz", "ac", 15_000, 11_000, 17_250,
                              16.7)
AC_25KV: Final = SupplySystem("ac_25kv_50hz", "AC 25 kV 50 Hz", "ac", 25_000, 19_000, 27_500,
                              50.0)

SUPPLY_SYSTEMS: Final = (DC_750, DC_1500, DC_3000, AC_15KV, AC_25KV)
