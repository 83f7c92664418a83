"""Simulator: the controller of the simulated fleet. Its figures and devices, and keys to
start and stop it, change its size, rate and faults, and power-cycle, reboot or cut off the
devices under the cursor (or marked). Every controller call blocks until the simulator's own
loop has done the work, so each runs in an I/O thread."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

from iotmeter_tui.screens.base import DashboardScreen
from iotmeter_tui.screens.dialog import Field, FormDialog, parse_number
from iotmeter_tui.view.format import count, one_line, rate, short_type
from iotmeter_tui.widgets.live_table import Column, LiveTable, Row

if TYPE_CHECKING:
    from iotmeter_tui.app import SimulatorControl
    from iotmeter_tui.backend.simulator.device import DeviceInfo
    from iotmeter_tui.backend.simulator.fleet import FleetStats

COLUMNS = (
    Column("device_id", "DEVICE", 10, flex=True),
    Column("type", "TYPE", 4),
    Column("system", "SUPPLY", 9, priority=3),
    Column("power", "POWER", 5),
    Column("link", "LINK", 7),
    Column("boot", "BOOT", 4, align="right", priority=4),
    Column("seq", "SEQ", 7, align="right"),
    Column("fw", "FW", 7, priority=2),
    Column("rate", "HZ", 5, align="right"),
    Column("acked", "ACKED", 8, align="right", priority=1),
    Column("buffered", "BUF", 4, align="right", priority=5),
)
KIND_CHOICES = (("mixed DC and AC", "mixed"), ("DC meters", "dc"), ("AC meters", "ac"))


@dataclass(slots=True)
class SimData:
    running: bool
    stats: FleetStats | None = None
    devices: list[DeviceInfo] = field(default_factory=list)
    error: str | None = None


def read_simulator(simulator: SimulatorControl | None) -> SimData:
    if simulator is None or not simulator.running:
        return SimData(False)
    try:
        return SimData(True, simulator.stats(), simulator.devices())
    except Exception as exc:
        return SimData(False, error=one_line(str(exc)))


def device_row(info: DeviceInfo) -> Row:
    hz = 1 / info.interval_s if info.interval_s else 0.0
    return Row(
        info.device_id,
        (
            info.device_id,
            short_type(info.device_type),
            info.supply_system,
            ("on", "ok") if info.powered else ("off", "error"),
            ("online", "ok") if info.online else ("offline", "error"),
            str(info.boot),
            count(info.seq),
            info.fw_version,
            f"{hz:g}",
            count(info.acked),
            str(info.buffered),
        ),
        role="" if info.powered else "muted",
    )


def summary_text(data: SimData, faults: str) -> str:
    if not data.running or data.stats is None:
        return " simulator stopped · s (or a) starts it with the devices you ask for"
    s = data.stats
    fault_counts = ", ".join(f"{k} {v}" for k, v in sorted(s.faults.items()) if v) or "none"
    return (
        f" running · {s.devices} devices, {s.powered} powered, {s.online} online · "
        f"{rate(s.acked_per_s)} acked · published {count(s.published)} · "
        f"buffered {count(s.buffered)} · faults {faults} (injected: {fault_counts}) · "
        f"late ticks {count(s.late_ticks)} · connection losses {count(s.connection_losses)}"
    )


@dataclass(frozen=True, slots=True)
class AddRequest:
    count: int
    kind: str
    rate: float


def parse_add(values: dict[str, str]) -> AddRequest:
    return AddRequest(
        parse_number(values["count"], "devices", kind=int, minimum=1, maximum=50_000),
        values["kind"],
        parse_number(values["rate"], "rate", minimum=0.001, maximum=1000),
    )


def parse_rate(values: dict[str, str]) -> float:
    return float(parse_number(values["rate"], "rate", minimum=0.001, maximum=1000))


def parse_faults(values: dict[str, str]) -> str:
    from iotmeter_tui.backend.simulator.faults import FaultSpec, FaultSpecError

    spec = values["faults"].strip() or "none"
    try:
        FaultSpec.parse(spec)
    except FaultSpecError as exc:
        raise ValueError(str(exc)) from None
    return spec


class SimulatorScreen(DashboardScreen):
    VIEW = "Simulator"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "add", "add", id="sim.add"),
        Binding("s", "start_stop", "start/stop", id="sim.start_stop"),
        Binding("r", "rate", "rate", id="sim.rate"),
        Binding("f", "faults", "faults", id="sim.faults"),
        Binding("o", "power", "on/off", id="sim.power"),
        Binding("b", "reboot", "reboot", id="sim.reboot"),
        Binding("d", "drop", "drop link", show=False, id="sim.drop"),
        Binding("x", "remove", "remove", show=False, id="sim.remove"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.data = SimData(False)
        self.faults = "none"

    def compose_body(self) -> ComposeResult:
        yield Static("", id="sim-summary", markup=False)
        yield LiveTable(COLUMNS, id="sim-table", markable=True,
                        empty_text="no simulated devices")

    @property
    def table(self) -> LiveTable:
        return self.query_one("#sim-table", LiveTable)

    def focus_main(self) -> None:
        self.table.focus()

    @property
    def simulator(self) -> SimulatorControl | None:
        return self.dash.runtime.simulator

    async def load(self) -> None:
        data = await self.io(read_simulator, self.simulator)
        self.data = data
        self.report("simulator", data.error)
        self.query_one("#sim-summary", Static).update(summary_text(data, self.faults))
        self.table.set_rows(device_row(d) for d in data.devices)

    # --- keys -------------------------------------------------------------------------------

    async def _control(self, what: str, call: Callable[[], Any]) -> None:
        try:
            await self.io(call)
        except Exception as exc:
            self.notify(f"{what}: {one_line(str(exc), 120)}", severity="error")
        else:
            self.notify(what, timeout=3)
        self.reload()

    def _running_simulator(self) -> SimulatorControl | None:
        simulator = self.simulator
        if simulator is None or not simulator.running:
            self.notify("the simulator is not running: a adds devices", severity="warning")
            return None
        return simulator

    def action_add(self) -> None:
        def chosen(request: AddRequest | None) -> None:
            if request is not None:
                runtime = self.dash.runtime
                self.run_worker(self._control(
                    f"added {request.count} {request.kind} device(s)",
                    lambda: runtime.start_simulator(request.count, request.kind, request.rate)))

        self.app.push_screen(FormDialog(
            "Add simulated devices",
            [Field("count", "devices", "10"),
             Field("kind", "kind", "mixed", choices=KIND_CHOICES),
             Field("rate", "rate (Hz)", "1")],
            parse_add, submit_label="Add"), chosen)

    def action_start_stop(self) -> None:
        simulator = self.simulator
        if simulator is None or not simulator.running:
            self.action_add()
        else:
            self.run_worker(self._control("simulator stopped", simulator.stop))

    def action_rate(self) -> None:
        simulator = self._running_simulator()
        if simulator is None:
            return
        ids = self.table.selection() if self.table.marked else None

        def chosen(value: float | None) -> None:
            if value is not None:
                target = f"{len(ids)} device(s)" if ids else "all devices"
                self.run_worker(self._control(f"rate {value:g} Hz for {target}",
                                              lambda: simulator.set_rate(value, ids)))

        self.app.push_screen(FormDialog(
            "Telemetry rate", [Field("rate", "rate (Hz)", "1")], parse_rate,
            note="Marked devices only, or every device when none is marked."), chosen)

    def action_faults(self) -> None:
        simulator = self._running_simulator()
        if simulator is None:
            return

        def chosen(spec: str | None) -> None:
            if spec is not None:
                self.faults = spec

                self.run_worker(self._control(f"faults: {spec}",
                                              lambda: simulator.set_faults(spec)))

        self.app.push_screen(FormDialog(
            "Fault injection", [Field("faults", "faults", self.faults)], parse_faults,
            note="drop=0.01,dup=0.01,reorder=0.01,disconnect=0.001,malformed=0.001,"
                 "clock_skew=2 · none for no faults"), chosen)

    def _on_selection(self, what: str, act: Callable[[SimulatorControl, list[str]], Any]) -> None:
        simulator = self._running_simulator()
        ids = self.table.selection()
        if simulator is None or not ids:
            return
        self.table.marked.clear()
        self.run_worker(self._control(f"{what}: {', '.join(ids[:3])}"
                                      f"{' …' if len(ids) > 3 else ''}",
                                      lambda: act(simulator, ids)))

    def action_power(self) -> None:
        infos = {d.device_id: d for d in self.data.devices}
        ids = self.table.selection()
        powered = any(infos[i].powered for i in ids if i in infos)
        if powered:
            self._on_selection("powered off", lambda sim, ids: sim.power_off(ids))
        else:
            self._on_selection("powered on", lambda sim, ids: sim.power_on(ids))

    def action_reboot(self) -> None:
        self._on_selection("rebooted", lambda sim, ids: sim.reboot(ids))

    def action_drop(self) -> None:
        self._on_selection("connection dropped", lambda sim, ids: sim.drop_connections(ids))

    def action_remove(self) -> None:
        self._on_selection("removed", lambda sim, ids: sim.remove_devices(ids))
