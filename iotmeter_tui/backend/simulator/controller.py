"""`SimulatorController`: the simulator as the dashboard drives it. The fleet runs on its own
event loop in a background thread; every method here is thread-safe and blocks until the loop
has done the work, so a Textual app can call it from a worker (or, for the quick calls, from
its own loop) without sharing an event loop with the simulator.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from iotmeter_tui.backend.mqtt.address import BrokerAddress
from iotmeter_tui.backend.simulator.device import DeviceInfo
from iotmeter_tui.backend.simulator.faults import FaultSpec
from iotmeter_tui.backend.simulator.fleet import (
    DEFAULT_HEARTBEAT_S,
    Fleet,
    FleetStats,
    SimulatorError,
)

T = TypeVar("T")
CALL_TIMEOUT_S = 120.0


class SimulatorController:
    """Start, stop and steer a fleet of simulated meters from any thread.

    `start()` spins up the background loop (once) and adds devices; `stop()` powers every
    device down gracefully (status offline, DISCONNECT) and ends the thread.
    """

    def __init__(
        self,
        mqtt_url: str,
        home: str | Path,
        *,
        seed: int | None = None,
        prefix: str = "",
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        faults: str | FaultSpec | None = None,
        boot_delay_s: float = 0.5,
        buffer_limit: int | None = None,
        firmware_key: Ed25519PublicKey | None = None,
    ) -> None:
        try:
            self._address = BrokerAddress.parse(mqtt_url)
        except ValueError as exc:
            raise SimulatorError(str(exc)) from None
        self.home = Path(home)
        self.seed = secrets.randbits(32) if seed is None else seed
        self.prefix = prefix
        self._heartbeat_s = heartbeat_s
        self._faults = faults if isinstance(faults, FaultSpec) else FaultSpec.parse(faults)
        self._boot_delay_s = boot_delay_s
        self._buffer_limit = buffer_limit
        self._firmware_key = firmware_key
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._fleet: Fleet | None = None
        self._final_stats: FleetStats | None = None
        self._lock = threading.Lock()

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._fleet is not None

    def start(self, devices: int = 0, kind: str = "mixed", rate: float = 1.0) -> list[str]:
        """Start the simulator if it is not running, then add `devices` devices."""
        with self._lock:
            if self._fleet is None:
                self._launch()
        return self.add_devices(devices, kind, rate) if devices else []

    def _launch(self) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run_loop, args=(loop,),
                                  name="iotmeter-simulator", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        fleet = Fleet(self._address, self.home, seed=self.seed, prefix=self.prefix,
                      heartbeat_s=self._heartbeat_s, faults=self._faults,
                      boot_delay_s=self._boot_delay_s, buffer_limit=self._buffer_limit,
                      firmware_key=self._firmware_key)
        try:
            self._run(fleet.start())
        except BaseException:
            self._end_loop()
            raise
        self._fleet = fleet

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self, *, graceful: bool = True) -> None:
        """Power every device down and end the background thread. Graceful: each device
        delivers what it holds, publishes status offline and disconnects. Not graceful: the
        connections are cut, as if the process died, and the broker fires the Last Wills."""
        with self._lock:
            fleet, self._fleet = self._fleet, None
            if fleet is None:
                return
            try:
                self._run(fleet.close(graceful=graceful))
            finally:
                self._end_loop()
                self._final_stats = fleet.stats()  # the loop has ended: safe to read here

    def _end_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join()

    def __enter__(self) -> SimulatorController:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- steering ------------------------------------------------------------------------

    def add_devices(self, count: int, kind: str = "mixed", rate: float = 1.0) -> list[str]:
        """Create and power on `count` devices (dc, ac or mixed); their ids."""
        fleet = self._require()
        return self._run(fleet.add(count, kind, rate))

    def remove_devices(self, device_ids: Iterable[str]) -> None:
        """Power devices down gracefully and drop them from the fleet."""
        fleet = self._require()
        self._run(fleet.remove(list(device_ids)))

    def power_off(self, device_ids: Iterable[str] | None = None, *,
                  graceful: bool = True) -> None:
        """Switch devices off (all when None); they stay in the fleet."""
        fleet = self._require()
        self._run(fleet.power_off(_ids(device_ids), graceful=graceful))

    def power_on(self, device_ids: Iterable[str] | None = None) -> None:
        """Switch devices on again: a new boot, seq from 0."""
        fleet = self._require()
        self._run(fleet.power_on(_ids(device_ids)))

    def reboot(self, device_ids: Iterable[str] | None = None) -> None:
        fleet = self._require()
        self._run(fleet.reboot(_ids(device_ids)))

    def set_rate(self, rate: float, device_ids: Iterable[str] | None = None) -> None:
        """Readings per second, for the given devices or all."""
        fleet = self._require()
        self._call(fleet.set_rate, rate, _ids(device_ids))

    def set_faults(self, spec: str | FaultSpec | None,
                   device_ids: Iterable[str] | None = None) -> None:
        """Replace the fault spec (a --faults string, a FaultSpec, or None for none)."""
        parsed = spec if isinstance(spec, FaultSpec) else FaultSpec.parse(spec)
        fleet = self._require()
        self._call(fleet.set_faults, parsed, _ids(device_ids))

    def drop_connections(self, device_ids: Iterable[str] | None = None) -> None:
        """Cut connections abruptly (the broker fires the Last Wills); devices reconnect."""
        fleet = self._require()
        self._call(fleet.drop_connections, _ids(device_ids))

    def stats(self) -> FleetStats:
        """Fleet figures; after stop(), the final ones."""
        fleet = self._fleet
        if fleet is None and self._final_stats is not None:
            return self._final_stats
        return self._call(self._require().stats)

    def devices(self) -> list[DeviceInfo]:
        fleet = self._require()
        return self._call(fleet.infos)

    # --- plumbing ------------------------------------------------------------------------

    def _require(self) -> Fleet:
        fleet = self._fleet
        if fleet is None:
            raise SimulatorError("the simulator is not running; start() it first")
        return fleet

    def _run(self, coro: Awaitable[T]) -> T:
        loop = self._loop
        if loop is None:
            raise SimulatorError("the simulator is not running")
        if threading.current_thread() is self._thread:
            raise SimulatorError("SimulatorController called from its own loop thread")

        async def wrapped() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), loop).result(CALL_TIMEOUT_S)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        async def on_loop() -> T:
            return fn(*args)

        return self._run(on_loop())


def _ids(device_ids: Iterable[str] | None) -> list[str] | None:
    return None if device_ids is None else list(device_ids)
