"""Everything the dashboard starts, owns and stops: the embedded broker (when no broker is
configured), the collector worker (a child process), the simulator controller, the stores the
screens read, and the control services (commands, OTA, device administration) they send
through. Screens talk to this object, never to MQTT directly."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from iotmeter_tui.backend.broker import EmbeddedBroker
from iotmeter_tui.backend.collector.worker import CollectorWorker
from iotmeter_tui.backend.config import Settings
from iotmeter_tui.backend.control.commands import CommandService
from iotmeter_tui.backend.control.ota import OtaService
from iotmeter_tui.backend.control.publisher import ServerPublisher
from iotmeter_tui.backend.control.signing import configured_public_key
from iotmeter_tui.backend.devices import DeviceService
from iotmeter_tui.backend.errors import IotmeterError, StoreError
from iotmeter_tui.backend.simulator.controller import SimulatorController
from iotmeter_tui.backend.stores import Stores, open_stores

log = logging.getLogger(__name__)

DEMO_DC = 12
DEMO_AC = 12
WORKER_READY_S = 20.0


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a runtime offers, said before anything is opened: a view can tell "not offered"
    from "not open yet" without touching a store or the broker."""

    control: bool  # commands, OTA campaigns and device administration (ControlServices)


@dataclass(frozen=True, slots=True)
class ControlServices:
    """The server -> device side the dashboard drives, opened together by
    `Runtime.open_control`."""

    commands: CommandService
    ota: OtaService
    devices: DeviceService


class ControlNotReady(IotmeterError):
    """The control services cannot be opened yet (the runtime's own broker is not up)."""


@dataclass
class StoreStatus:
    name: str
    ok: bool
    detail: str


def check_stores(stores: Stores) -> list[StoreStatus]:
    """Each store's reachability: ok, or the store's own one-line error."""
    result = []
    for name in ("metadata", "timeseries", "archive"):
        try:
            getattr(stores, name).check()
            result.append(StoreStatus(name, True, "ok"))
        except StoreError as exc:
            result.append(StoreStatus(name, False, str(exc)))
    return result


class Runtime:
    def __init__(self, settings: Settings, *, simulate: str = "auto",
                 start_collector: bool = True, start_broker: bool = True) -> None:
        self.settings = settings
        self.simulate = simulate
        self.start_collector = start_collector
        self.start_broker = start_broker
        self.broker: EmbeddedBroker | None = None
        self.mqtt_url = settings.mqtt_url or ""
        self.worker: CollectorWorker | None = None
        self.simulator: SimulatorController | None = None
        self._stores: Stores | None = None
        self._publisher: ServerPublisher | None = None
        self.capabilities = Capabilities(control=True)
        # Opened by start() once the broker is known, or by open_control() on a caller's
        # worker thread; None until then.
        self.control: ControlServices | None = None
        self._control_lock = threading.Lock()

    @property
    def stores(self) -> Stores:
        if self._stores is None:
            self._stores = open_stores(self.settings)
        return self._stores

    def open_control(self) -> ControlServices:
        """Open the commands, OTA and device services, once (later calls return them). It
        opens the stores and starts the publisher's connection in the background, so it may
        block: call it on a worker thread. A broker that is down is no error (commands are
        stored and wait for it); a store that cannot be opened raises StoreError, and a
        runtime whose own broker is not started yet raises ControlNotReady."""
        with self._control_lock:
            if self.control is None:
                self.control = self._build_control()
            return self.control

    def _build_control(self) -> ControlServices:
        if self.settings.mqtt_url is None and self.start_broker and not self.mqtt_url:
            raise ControlNotReady("the embedded broker is not started yet")
        metadata = self.stores.metadata
        if self.mqtt_url:
            # Commands to online devices go out at once; the collector's dispatcher delivers
            # the rest, so a dashboard with no broker URL (a view-only session on the
            # embedded defaults) still stores them.
            self._publisher = ServerPublisher(self.mqtt_url, f"iotmeter-dashboard-{id(self):x}")
            self._publisher.start()
        commands = CommandService(metadata, self._publisher,
                                  redeliver_after_s=self.settings.redeliver_after_s)
        ota = OtaService(metadata, self.stores.archive, public_key=configured_public_key(
            self.settings.firmware_public_key))
        # The same device service as the CLI and the API: registry entries, and configs
        # pushed to the device as set_config.
        return ControlServices(commands, ota, DeviceService(metadata, commands))

    def start(self) -> None:
        if self.settings.mqtt_url is None and self.start_broker:
            self.broker = EmbeddedBroker(self.settings.home / "broker")
            self.broker.start()
            self.mqtt_url = self.broker.url
        try:
            self.open_control()
        except StoreError as exc:
            # A status in the views that need them; they try again when asked.
            log.warning("control services not opened", extra={
                "event": "control_not_opened", "error": str(exc)})
        if self.start_collector:
            self.worker = CollectorWorker(self.settings, self.mqtt_url)
            self.worker.start()
        if self._wants_demo_fleet():
            # A first-ever collector session only receives what is published after it has
            # subscribed: the demo meters' first hello must not go to nobody.
            if self.worker is not None:
                self.worker.wait_ready(WORKER_READY_S)
            self.start_simulator(DEMO_DC, "dc")
            self.start_simulator(DEMO_AC, "ac")

    def _wants_demo_fleet(self) -> bool:
        # On the embedded defaults the demo fleet comes back at every start (otherwise a
        # second start shows two dozen dead meters). The same ids, and each meter's
        # boot counter advances from the simulator's state file under the home, as after a
        # power cycle.
        if self.simulate in ("yes", "no"):
            return self.simulate == "yes"
        return self.settings.embedded

    def start_simulator(self, devices: int, kind: str = "mixed", rate: float = 1.0) -> list[str]:
        """Add `devices` simulated meters (starting the controller on first use)."""
        if self.simulator is None:
            self.simulator = SimulatorController(
                self.mqtt_url, self.settings.home / "simulator",
                firmware_key=configured_public_key(self.settings.firmware_public_key))
        if self.simulator.running:
            return self.simulator.add_devices(devices, kind, rate)
        return self.simulator.start(devices, kind, rate)

    def store_status(self) -> list[StoreStatus]:
        """Each store's reachability, for the status line and the system screen."""
        return check_stores(self.stores)

    def stop(self) -> None:
        """Stop everything this runtime started, the simulator first so its devices say
        goodbye while the collector still listens."""
        if self.simulator is not None:
            try:
                self.simulator.stop()
            except Exception:
                log.exception("simulator did not stop cleanly")
        if self._publisher is not None:
            self._publisher.close()
        if self.worker is not None:
            self.worker.stop()
        if self.broker is not None:
            self.broker.stop()
        if self._stores is not None:
            self._stores.close()
