"""What the status line and the system screen show about the running system: the app's
snapshot of collector health, store reachability and start-up, and the rates derived from
the collector's cumulative counters."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from iotmeter_tui.backend.collector.health import CollectorHealth

RATE_WINDOW_S = 5.0  # msg/s is averaged over this long: steady, yet quick to show a stall
HISTORY = 120  # rate samples kept for the system screen's sparkline


@dataclass(frozen=True, slots=True)
class StoreLight:
    name: str
    ok: bool
    detail: str


@dataclass
class StatusSnapshot:
    """Mutable, owned by the app, read by every screen's status bar."""

    at: float = 0.0
    phase: str = "running"  # starting | running | failed (start-up of the runtime)
    phase_detail: str = ""
    collector: str = "none"  # none | starting | up | no broker | down
    health: CollectorHealth | None = None
    rate: float | None = None  # messages received per second
    stores: list[StoreLight] = field(default_factory=list)
    sim_devices: int | None = None
    sim_online: int | None = None
    errors: dict[str, str] = field(default_factory=dict)  # source -> one line


class HealthTracker:
    """Turns the collector's cumulative counters into rates."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=64)
        self.history: deque[float] = deque(maxlen=HISTORY)
        self._last_at: float | None = None

    def add(self, health: CollectorHealth | None) -> None:
        if health is None:
            return
        at = health.at
        if at == self._last_at:
            return  # the same snapshot again: the child sends one a second
        self._last_at = at
        self._samples.append((at, float(health.received), float(health.acked)))
        value = self.rate()
        if value is not None:
            self.history.append(value)

    def _window(self) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
        if len(self._samples) < 2:
            return None
        newest = self._samples[-1]
        oldest = newest
        for sample in reversed(self._samples):
            oldest = sample
            if newest[0] - sample[0] >= RATE_WINDOW_S:
                break
        if newest[0] <= oldest[0]:
            return None
        return oldest, newest

    def rate(self) -> float | None:
        """Messages received per second over the last few seconds."""
        window = self._window()
        if window is None:
            return None
        (t0, r0, _), (t1, r1, _) = window
        return max(0.0, (r1 - r0) / (t1 - t0))

    def ack_rate(self) -> float | None:
        window = self._window()
        if window is None:
            return None
        (t0, _, a0), (t1, _, a1) = window
        return max(0.0, (a1 - a0) / (t1 - t0))
