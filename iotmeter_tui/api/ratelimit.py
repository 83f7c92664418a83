"""Per-key token buckets: `rate` requests a second, `burst` at once.

Kept in the worker's memory: with N gunicorn workers a key may reach N times the rate at
worst (docs/api.md). Thread-safe (gthread workers answer several requests at once)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

# Buckets of keys not seen for this long are full again anyway: dropped to bound memory.
IDLE_DROP_S = 600.0


class RateLimiter:
    def __init__(self, rate: float, burst: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()
        self._last_sweep = clock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            if now - self._last_sweep > IDLE_DROP_S:
                self._sweep(now)
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _sweep(self, now: float) -> None:
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < IDLE_DROP_S}
        self._last_sweep = now


def retry_after_header(wait_s: float) -> str:
    """Retry-After is whole seconds; never 0, or clients retry at once."""
    return str(max(1, math.ceil(wait_s)))
