"""Many simulated meters on one asyncio event loop: creation, scheduling, persistence, stats.

One scheduler task drives every device from a heap of due times, instead of a sleeping task
per device: at 5,000 devices that is the difference between a few and many thousands of loop
wake-ups a second. Each device's first reading gets a random phase within its interval, and
connects go through a bounded gate, so a fleet start or a broker restart is a spread-out wave,
not a burst. Runs wholly on the loop it is started on; `SimulatorController` puts it on a
background thread for the dashboard, `run_simulate` on the main thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import logging
import random
import resource
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.errors import IotmeterError
from iotmeter_tui.backend.mqtt.address import BrokerAddress
from iotmeter_tui.backend.simulator.device import (
    BUFFER_LIMIT,
    DEFAULT_FW_VERSION,
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    DeviceConfig,
    DeviceCounters,
    DeviceInfo,
    SimulatedMeter,
)
from iotmeter_tui.backend.simulator.faults import FaultInjector, FaultSpec
from iotmeter_tui.backend.simulator.physics import FEEDERS, FeederMeter, choose_system
from iotmeter_tui.backend.simulator.state import DeviceRecord, DeviceStateStore, state_path

log = logging.getLogger(__name__)

KINDS: Final = ("dc", "ac", "mixed")
DEFAULT_HEARTBEAT_S: Final = 30.0
CONNECT_CONCURRENCY: Final = 64
PERSIST_EVERY_S: Final = 15.0  # energy registers; boots and firmware are saved at once
RATE_WINDOW_S: Final = 5.0
_MIN_SLEEP_S: Final = 0.005  # batch what falls due within a few ms into one wake-up
_MAX_SLEEP_S: Final = 0.25
_FD_PER_DEVICE: Final = 1
_FD_SPARE: Final = 256  # state file, logs, firmware downloads, the event loop itself
_TELEMETRY, _HELLO = 0, 1


class SimulatorError(IotmeterError):
    """A request the simulator cannot carry out; `str()` is one line for the operator."""


@dataclass(frozen=True, slots=True)
class FleetStats:
    devices: int
    powered: int
    online: int
    produced: int  # messages given a seq
    published: int  # PUBLISH packets written, replays and injected faults included
    acked: int  # PUBACKs from the broker
    acked_per_s: float  # over the last few seconds
    buffered: int
    buffer_dropped: int
    lost_at_power_off: int
    connects: int
    connect_failures: int
    connection_losses: int
    commands: int
    late_ticks: int  # readings taken late because the loop was overloaded
    faults: dict[str, int] = field(default_factory=dict)


def raise_open_file_limit(devices: int) -> int:
    """Lift RLIMIT_NOFILE to the hard limit (each connection is a descriptor); fail clearly
    if even that is too low. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = devices * _FD_PER_DEVICE + _FD_SPARE
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise SimulatorError(
            f"{devices} devices need about {needed} open files but the hard limit is {hard}; "
            "raise it (ulimit -Hn, LimitNOFILE=) or run fewer devices per process"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def _kind_of(kind: str, index: int) -> str:
    """Device ids are dc-0001, ac-0002, ...: mixed alternates, odd indexes DC."""
    if kind == "mixed":
        return "dc" if index % 2 else "ac"
    return kind


class Fleet:
    """The simulated meters of one simulator (one prefix, one state file) and their
    scheduler. Every method runs on the fleet's event loop."""

    def __init__(
        self,
        address: BrokerAddress,
        home: Path,
        *,
        seed: int,
        prefix: str = "",
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        faults: FaultSpec | None = None,
        connect_concurrency: int = CONNECT_CONCURRENCY,
        boot_delay_s: float = 0.5,
        buffer_limit: int | None = None,
        firmware_key: Ed25519PublicKey | None = None,
        device_users: bool = False,
    ) -> None:
        if prefix and not protocol.is_valid_device_id(prefix + "dc-0001"):
            raise SimulatorError(f"prefix {prefix!r}: device ids must match "
                                 f"{protocol.DEVICE_ID_PATTERN}")
        if heartbeat_s <= 0:
            raise SimulatorError(f"heartbeat {heartbeat_s} s must be greater than 0")
        self.address = address
        # Each meter its own broker user (its device id, the URL's password), as real meters
        # log in where the broker makes the user the client id (docs/security.md).
        self.device_users = device_users
        self.seed = seed
        self.prefix = prefix
        self.heartbeat_s = heartbeat_s
        self.faults = faults or FaultSpec()
        self.boot_delay_s = boot_delay_s
        self.buffer_limit = buffer_limit
        self.firmware_key = firmware_key  # pinned by every meter: signed firmware only
        self.devices: dict[str, SimulatedMeter] = {}
        self.store = DeviceStateStore(state_path(home, prefix))
        self._connect_concurrency = connect_concurrency
        self._gate: asyncio.Semaphore | None = None
        self._heap: list[tuple[float, int, int, SimulatedMeter, int]] = []
        self._order = itertools.count()
        self._next_index = 1
        self._late_ticks = 0
        self._removed = Counter[str]()  # counters of devices no longer in the fleet
        self._rate: deque[tuple[float, int]] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._phase = random.Random(f"{seed}:phase")

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Take the state file's lock, load it, and start the scheduler."""
        self.store.open()
        self._gate = asyncio.Semaphore(self._connect_concurrency)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._schedule()), loop.create_task(self._housekeep())]

    async def close(self, *, graceful: bool = True) -> None:
        """Switch every device off (see SimulatedMeter.power_off), save state, release the
        lock."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.gather(*(d.shut_down(graceful=graceful) for d in self.devices.values()))
        try:
            if self.devices:
                await self.store.persist()
        finally:
            self.store.close()

    # --- devices -------------------------------------------------------------------------

    async def add(self, count: int, kind: str, rate: float) -> list[str]:
        """Create `count` devices of `kind` (dc, ac, mixed) at `rate` readings per second and
        power them on. Ids continue from the highest index in use."""
        if kind not in KINDS:
            raise SimulatorError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        if count < 0:
            raise SimulatorError(f"device count {count} is negative")
        interval = _interval_for(rate)
        raise_open_file_limit(len(self.devices) + count)
        created = []
        for _ in range(count):
            index = self._next_index
            self._next_index += 1
            device = self._create(index, _kind_of(kind, index), interval)
            self.devices[device.device_id] = device
            created.append(device)
        # Every boot number is on disk in one write before any device publishes.
        await asyncio.gather(*(d.power_on() for d in created))
        for device in created:
            self._reschedule(device)
        return [d.device_id for d in created]

    def _create(self, index: int, kind: str, interval_s: float) -> SimulatedMeter:
        device_id = f"{self.prefix}{kind}-{index:04d}"
        rng = random.Random(f"{self.seed}:{device_id}")
        # Drawn whether or not the device is known, so the same seed gives the same physics.
        system = choose_system(kind, rng)
        energy_import = rng.uniform(20_000.0, 400_000.0)
        energy_export = energy_import * rng.uniform(0.05, 0.25)
        record = self.store.records.get(device_id)
        known = record is not None and record.supply_system in FEEDERS and \
            FEEDERS[record.supply_system].kind == kind
        if record is not None and known:
            # A meter stays on its feeder and keeps its registers across restarts.
            system = FEEDERS[record.supply_system]
        else:
            record = DeviceRecord(
                boot=record.boot if record else 0,
                fw_version=record.fw_version if record else DEFAULT_FW_VERSION,
                supply_system=system.key,
                energy_import_kwh=energy_import,
                energy_export_kwh=energy_export,
            )
            self.store.records[device_id] = record
        meter = FeederMeter(system, rng, energy_import_kwh=record.energy_import_kwh,
                            energy_export_kwh=record.energy_export_kwh)
        assert self._gate is not None, "Fleet.start() first"
        return SimulatedMeter(
            device_id, system, record, meter,
            address=(dataclasses.replace(self.address, username=device_id)
                     if self.device_users else self.address),
            config=DeviceConfig(interval_s=interval_s, heartbeat_s=self.heartbeat_s),
            faults=FaultInjector(self.faults, random.Random(f"{self.seed}:{device_id}:faults")),
            persist=self.store.persist,
            reschedule=self._reschedule,
            connect_gate=self._gate,
            boot_delay_s=self.boot_delay_s,
            buffer_limit=self.buffer_limit or BUFFER_LIMIT,
            firmware_key=self.firmware_key,
        )

    def _select(self, ids: Iterable[str] | None) -> list[SimulatedMeter]:
        if ids is None:
            return list(self.devices.values())
        chosen = []
        for device_id in ids:
            device = self.devices.get(device_id)
            if device is None:
                raise SimulatorError(f"no simulated device {device_id!r}")
            chosen.append(device)
        return chosen

    async def remove(self, ids: Iterable[str]) -> None:
        """Switch devices off for good and forget them (their state file entry stays)."""
        devices = self._select(ids)
        await asyncio.gather(*(d.shut_down() for d in devices))
        for device in devices:
            device.schedule_generation += 1
            del self.devices[device.device_id]
            for name, value in _counter_fields(device).items():
                self._removed[name] += value

    async def power_off(self, ids: Iterable[str] | None = None, *, graceful: bool = True) -> None:
        await asyncio.gather(*(d.power_off(graceful=graceful) for d in self._select(ids)))

    async def power_on(self, ids: Iterable[str] | None = None) -> None:
        await asyncio.gather(*(d.power_on() for d in self._select(ids)))

    async def reboot(self, ids: Iterable[str] | None = None) -> None:
        await asyncio.gather(*(d.reboot() for d in self._select(ids)))

    def set_rate(self, rate: float, ids: Iterable[str] | None = None) -> None:
        interval = _interval_for(rate)
        for device in self._select(ids):
            device.set_interval(interval)

    def set_faults(self, spec: FaultSpec, ids: Iterable[str] | None = None) -> None:
        devices = self._select(ids)
        if ids is None:
            self.faults = spec
        for device in devices:
            device.faults.spec = spec

    def drop_connections(self, ids: Iterable[str] | None = None) -> None:
        for device in self._select(ids):
            device.drop_connection()

    def infos(self) -> list[DeviceInfo]:
        return [d.info() for d in self.devices.values()]

    def summary(self) -> dict[str, dict[str, Any]]:
        """device_id -> what it sent in this run (SimulatedMeter.summary), devices in the
        fleet now; after close() it is the final account."""
        return {device_id: d.summary() for device_id, d in sorted(self.devices.items())}

    def stats(self) -> FleetStats:
        """Totals over the fleet (devices removed included). Walks every device: at 10,000
        that is a few milliseconds, fine once a second, not in a tight loop."""
        totals = Counter(self._removed)
        faults: Counter[str] = Counter()
        powered = online = buffered = 0
        for device in self.devices.values():
            counters = device.counters
            for name in _COUNTER_NAMES:
                totals[name] += getattr(counters, name)
            if counters.faults:
                faults.update(counters.faults)
            powered += device.powered
            online += device.online
            buffered += device.buffered
        return FleetStats(
            devices=len(self.devices), powered=powered, online=online,
            produced=totals["produced"], published=totals["published"], acked=totals["acked"],
            acked_per_s=self._acked_rate(), buffered=buffered,
            buffer_dropped=totals["buffer_dropped"],
            lost_at_power_off=totals["lost_at_power_off"], connects=totals["connects"],
            connect_failures=totals["connect_failures"],
            connection_losses=totals["connection_losses"], commands=totals["commands"],
            late_ticks=self._late_ticks, faults=dict(faults),
        )

    # --- scheduling ----------------------------------------------------------------------

    def _reschedule(self, device: SimulatedMeter) -> None:
        """(Re)plan a device's readings and heartbeats; older heap entries become void."""
        device.schedule_generation += 1
        generation = device.schedule_generation
        now = asyncio.get_running_loop().time()
        interval = device.config.interval_s
        heapq.heappush(self._heap, (now + self._phase.uniform(0, interval), next(self._order),
                                    _TELEMETRY, device, generation))
        # Heartbeats get a phase too: a fleet started at once must not hello all at once.
        heartbeat = device.config.heartbeat_s * self._phase.uniform(0.5, 1.5)
        heapq.heappush(self._heap, (now + heartbeat, next(self._order), _HELLO, device,
                                    generation))

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while True:
            now = loop.time()
            while heap and heap[0][0] <= now:
                due, _, kind, device, generation = heapq.heappop(heap)
                if generation != device.schedule_generation:
                    continue
                try:
                    if kind == _TELEMETRY:
                        device.sample()
                        step = device.config.interval_s
                    else:
                        device.heartbeat()
                        step = device.config.heartbeat_s
                except Exception:
                    log.exception("%s: reading failed", device.device_id)
                    step = device.config.interval_s
                following = due + step
                if following < now:
                    # Overloaded: skip ahead instead of bursting to catch up; counted.
                    self._late_ticks += 1
                    following = now + step
                heapq.heappush(heap, (following, next(self._order), kind, device, generation))
            delay = heap[0][0] - loop.time() if heap else _MAX_SLEEP_S
            await asyncio.sleep(min(max(delay, _MIN_SLEEP_S), _MAX_SLEEP_S))

    async def _housekeep(self) -> None:
        """Sample the ack rate every second; save the energy registers now and then."""
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            self._rate.append((now, sum(d.counters.acked for d in self.devices.values())
                               + self._removed["acked"]))
            while self._rate and now - self._rate[0][0] > RATE_WINDOW_S:
                self._rate.popleft()
            if now - last_save >= PERSIST_EVERY_S and self.devices:
                last_save = now
                try:
                    await self.store.persist()
                except IotmeterError as exc:
                    log.error("%s", exc)

    def _acked_rate(self) -> float:
        if len(self._rate) < 2:
            return 0.0
        (t0, a0), (t1, a1) = self._rate[0], self._rate[-1]
        return (a1 - a0) / (t1 - t0) if t1 > t0 else 0.0


def _interval_for(rate: float) -> float:
    if not rate > 0:
        raise SimulatorError(f"rate {rate} must be greater than 0")
    interval = 1.0 / rate
    if not MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S:
        raise SimulatorError(
            f"rate {rate:g}/s is outside {1 / MAX_INTERVAL_S:g}..{1 / MIN_INTERVAL_S:g}"
        )
    return interval


_COUNTER_NAMES: Final = tuple(f.name for f in fields(DeviceCounters)
                              if f.name not in ("faults", "produced_by_type"))


def _counter_fields(device: SimulatedMeter) -> dict[str, int]:
    counters = device.counters
    return {name: getattr(counters, name) for name in _COUNTER_NAMES}

