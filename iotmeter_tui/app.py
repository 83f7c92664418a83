"""The Textual app: wires the screens to the backend runtime, nothing else.

`IotmeterApp` takes any object shaped like `DashboardRuntime` (the real `Runtime`, or the
deterministic one the tests build), reads the stores on a small pool of long-lived threads
and polls the collector's health once a second. `run_dashboard` is what `iotmeter` runs:
build the runtime, start it behind the UI (progress and failures show in the status line),
run the app, stop everything on quit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import ModalScreen, Screen

from iotmeter_tui.backend.collector.worker import start_resource_tracker
from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.export import write_csv
from iotmeter_tui.keymap import keymap_problems, known_bindings
from iotmeter_tui.screens.alerts import AlertsScreen
from iotmeter_tui.screens.base import DashboardScreen
from iotmeter_tui.screens.commands import CommandsScreen
from iotmeter_tui.screens.device import DeviceScreen
from iotmeter_tui.screens.dialog import FormDialog
from iotmeter_tui.screens.fleet import FleetScreen
from iotmeter_tui.screens.help import HelpScreen
from iotmeter_tui.screens.ota import OtaScreen
from iotmeter_tui.screens.raw import MessageScreen, RawScreen, RejectedScreen
from iotmeter_tui.screens.simulator import SimulatorScreen
from iotmeter_tui.screens.system import SystemScreen
from iotmeter_tui.view import jump
from iotmeter_tui.view.format import one_line
from iotmeter_tui.view.health import HealthTracker, StatusSnapshot, StoreLight
from iotmeter_tui.widgets.live_table import LiveTable
from iotmeter_tui.widgets.prompt_bar import PromptBar

if TYPE_CHECKING:
    from iotmeter_tui.backend.collector.health import CollectorHealth
    from iotmeter_tui.backend.config import Settings
    from iotmeter_tui.backend.runtime import Capabilities, ControlServices
    from iotmeter_tui.backend.simulator.device import DeviceInfo
    from iotmeter_tui.backend.simulator.fleet import FleetStats
    from iotmeter_tui.backend.stores import Stores

T = TypeVar("T")

# --- what the app needs from the backend ----------------------------------------------------


class HealthSource(Protocol):
    def health(self) -> CollectorHealth | None: ...


class SimulatorControl(Protocol):
    """The part of SimulatorController the simulator screen drives."""

    @property
    def running(self) -> bool: ...

    def stop(self, *, graceful: bool = True) -> None: ...
    def add_devices(self, count: int, kind: str = "mixed", rate: float = 1.0) -> list[str]: ...
    def remove_devices(self, device_ids: Iterable[str]) -> None: ...
    def power_off(self, device_ids: Iterable[str] | None = None, *,
                  graceful: bool = True) -> None: ...
    def power_on(self, device_ids: Iterable[str] | None = None) -> None: ...
    def reboot(self, device_ids: Iterable[str] | None = None) -> None: ...
    def set_rate(self, rate: float, device_ids: Iterable[str] | None = None) -> None: ...
    def set_faults(self, spec: Any, device_ids: Iterable[str] | None = None) -> None: ...
    def drop_connections(self, device_ids: Iterable[str] | None = None) -> None: ...
    def stats(self) -> FleetStats: ...
    def devices(self) -> list[DeviceInfo]: ...


class DashboardRuntime(Protocol):
    """What the dashboard uses of `iotmeter_tui.backend.runtime.Runtime`. `capabilities`
    says up front what it offers; `control` is None until `open_control()` (which may block:
    the app calls it on an I/O thread) or the runtime's own start has opened it."""

    @property
    def stores(self) -> Stores: ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def control(self) -> ControlServices | None: ...

    def open_control(self) -> ControlServices: ...

    @property
    def worker(self) -> HealthSource | None: ...

    @property
    def simulator(self) -> SimulatorControl | None: ...

    def start_simulator(self, devices: int, kind: str = "mixed",
                        rate: float = 1.0) -> list[str]: ...

    def store_status(self) -> list[Any]: ...


class StartableRuntime(DashboardRuntime, Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


# --- starting the runtime behind the UI -------------------------------------------------------


@dataclass
class RuntimeStarter:
    """Runs `runtime.start()` on a plain thread: it takes seconds (broker, collector child,
    simulated fleet) and the first paint must not wait for it. A plain thread, not a Textual
    worker, so `run_dashboard` can join it after the app has gone."""

    runtime: StartableRuntime
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="iotmeter-start", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.runtime.start()
        except Exception as exc:
            self.error = one_line(str(exc)) or type(exc).__name__
        finally:
            self.done.set()

    def join(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def phase(self) -> tuple[str, str]:
        """('starting' | 'running' | 'failed', detail)."""
        if self.error is not None:
            return "failed", f"start-up failed: {self.error}"
        if not self.done.is_set():
            rt: Any = self.runtime
            steps = [name for name, attr in (("broker", "broker"), ("collector", "worker"),
                                             ("simulator", "simulator"))
                     if getattr(rt, attr, None) is not None]
            return "starting", "starting " + (" · ".join(steps) + " …" if steps else "…")
        return "running", ""


# --- the app ----------------------------------------------------------------------------------

SCREENS_BY_NAME: dict[str, str] = {
    "fleet": "fleet",
    "devices": "fleet",
    "alerts": "alerts",
    "commands": "commands",
    "cmd": "commands",
    "ota": "ota",
    "firmware": "ota",
    "simulator": "simulator",
    "sim": "simulator",
    "system": "system",
    "sys": "system",
    "health": "system",
    "rejected": "rejected",
}

STATUS_PROBE_EVERY = 5  # store connectivity checks run every Nth health tick


class IotmeterApp(App[int]):
    """The dashboard. `now` (seconds since the epoch) is injectable so tests freeze time."""

    TITLE = "iotmeter"
    CSS_PATH = "app.tcss"
    ENABLE_COMMAND_PALETTE = False
    MODES: ClassVar[dict[str, str | Callable[[], Screen[Any]]]] = {
        "fleet": FleetScreen,
        "alerts": AlertsScreen,
        "commands": CommandsScreen,
        "ota": OtaScreen,
        "simulator": SimulatorScreen,
        "system": SystemScreen,
        "rejected": RejectedScreen,
    }
    # Global keys live here so the footer lists them after the view's own keys; check_action
    # switches them off while a dialog is open (its fields need q, : and ?).
    BINDINGS: ClassVar[list[BindingType]] = [
        # No key_display: a remapped key must show as itself (Textual shows colon as ":").
        # The tooltip is the longer text the help screen shows.
        Binding("colon", "jump_prompt", "view", id="app.jump_prompt",
                tooltip=f"jump to a view: {jump.described()}"),
        Binding("question_mark", "help", "help", id="app.help", tooltip="this help"),
        Binding("q", "quit", "quit", id="app.quit",
                tooltip="quit and stop everything the dashboard started"),
        Binding("ctrl+c,ctrl+q", "force_quit", "quit", show=False, priority=True,
                id="app.force_quit", tooltip="quit, even from a dialog"),
        Binding("ctrl+t", "next_theme", "theme", show=False, id="app.next_theme",
                tooltip="next colour theme (dark, light, the terminal's own)"),
        Binding("e", "export", "export", show=False, id="app.export",
                tooltip="export this view to CSV under $IOTMETER_HOME/exports (path shown)"),
    ]
    MODAL_OFF = frozenset({"jump_prompt", "help", "quit", "export"})
    THEMES = ("textual-dark", "textual-light", "ansi-dark", "ansi-light")

    def __init__(
        self,
        runtime: DashboardRuntime,
        *,
        now: Callable[[], float] = time.time,
        refresh_s: float = 1.0,
        start_runtime: bool = False,
        initial: str = "fleet",
        keymap: Mapping[str, str] | None = None,
        export_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.keymap = dict(keymap or {})
        settings = getattr(runtime, "settings", None)
        self.export_dir = export_dir or (settings.home / "exports" if settings else None)
        self.now = now
        self.refresh_s = refresh_s
        self.initial = initial
        self.starter = RuntimeStarter(runtime) if start_runtime else None  # type: ignore[arg-type]
        if start_runtime:
            start_resource_tracker()  # before Textual captures stderr (see its docstring)
        self.status = StatusSnapshot()
        self.health_tracker = HealthTracker()
        self.stores_ready = asyncio.Event()
        self.device_selection: list[str] = []  # marked in the fleet, offered by dialogs
        # Long-lived threads: the SQLite adapters keep one connection per thread, so a new
        # thread per read (Textual's thread workers) would leak a connection every second.
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="iotmeter-io")
        self._probe = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iotmeter-probe")
        self._ticks = 0
        self._polling = False
        self._probing = False
        self._heap_frozen = False
        self.last_export: Path | None = None

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    # --- background reads ---------------------------------------------------------------

    async def run_io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store or service call off the UI thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, functools.partial(fn, *args))

    @property
    def control_offered(self) -> bool:
        """Whether the runtime offers commands, OTA and device administration: asked of what
        it said up front, so nothing is opened to find out."""
        return self.runtime.capabilities.control

    async def control(self) -> ControlServices:
        """The runtime's control services. Its start opens them; until then (or when a store
        was down then) they are opened here, on an I/O thread, never on the UI's loop.
        Raises what opening raises, for the views to show as a status."""
        control = self.runtime.control
        if control is None:
            control = await self.run_io(self.runtime.open_control)
        return control

    async def _prepare_stores(self) -> None:
        try:
            await self.run_io(lambda: self.runtime.stores)
        except Exception as exc:
            self.status.errors["stores"] = one_line(str(exc))
        self.stores_ready.set()
        if self.starter is not None:
            self.starter.start()
        await self._poll_status()

    # --- lifecycle ------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.theme = self.THEMES[0]
        if self.keymap:
            known = known_bindings(KEYMAP_OWNERS)
            problems = keymap_problems(self.keymap, known)
            if problems:
                self.status.errors["keymap"] = "; ".join(problems)
            self.set_keymap({k: v for k, v in self.keymap.items() if k in known})
        self.switch_mode(self.initial)
        self.run_worker(self._prepare_stores(), group="prepare")
        self.set_interval(self.refresh_s, self._tick_status)

    def on_unmount(self) -> None:
        self._io.shutdown(wait=False, cancel_futures=True)
        self._probe.shutdown(wait=False, cancel_futures=True)
        if self._heap_frozen:
            gc.unfreeze()  # a process running one app after another (tests) frees the last

    def view_loaded(self) -> None:
        """A view has shown its first data. What start-up built (Textual's DOM and styles,
        the runtime, the modules) lives as long as the app: moved out of the garbage
        collector's full passes, once, after that paint. A full pass over the ~100,000
        objects of a running dashboard took 30-110 ms on the UI thread on a quiet machine,
        twice a key's redraw budget, a few times a minute (issue 18); now it walks only
        what was made since."""
        if not self._heap_frozen:
            self._heap_frozen = True
            self.call_after_refresh(gc.freeze)

    def _tick_status(self) -> None:
        # Skipped while a poll runs: a slow store must not pile polls up, nor cancel them.
        if self.stores_ready.is_set() and not self._polling:
            self.run_worker(self._poll_status(), group="status")

    async def _poll_status(self) -> None:
        self._polling = True
        try:
            await self._read_status()
        finally:
            self._polling = False
        if self._ticks % STATUS_PROBE_EVERY == 0 and not self._probing:
            self.run_worker(self._probe_stores(), group="probe")
        self._ticks += 1
        self._show_status()

    def _show_status(self) -> None:
        # The view under a dialog stays on screen, so its status line must keep moving
        # too (else clock and rates freeze while a dialog is open).
        view = self.current_view()
        if view is not None:
            view.show_status(self.status)

    def current_view(self) -> DashboardScreen | None:
        """The topmost view in the stack: the screen, or the one under its dialogs."""
        for screen in reversed(self.screen_stack):
            if isinstance(screen, DashboardScreen):
                return screen
        return None

    async def _read_status(self) -> None:
        status = self.status
        status.at = self.now()
        if self.starter is not None:
            status.phase, status.phase_detail = self.starter.phase()
        worker = self.runtime.worker
        if worker is None:
            status.collector = "none"
            status.health = None
        else:
            health = worker.health()
            status.health = health
            if health is None:
                status.collector = "starting" if status.phase == "starting" else "down"
            elif health.starting:
                status.collector = "starting"
            else:
                status.collector = "up" if health.broker_connected else "no broker"
            self.health_tracker.add(health)
        status.rate = self.health_tracker.rate()
        simulator = self.runtime.simulator
        status.sim_devices = status.sim_online = None
        if simulator is not None and simulator.running:
            try:
                stats = await self.run_io(simulator.stats)
                status.sim_devices, status.sim_online = stats.devices, stats.online
            except Exception:
                pass

    async def _probe_stores(self) -> None:
        """Store connectivity, on its own thread: a store that is down may take its full
        timeout to say so, and the health line must keep moving meanwhile."""
        self._probing = True
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._probe, self.runtime.store_status)
        except Exception as exc:
            self.status.errors["stores"] = one_line(str(exc))
        else:
            self.status.errors.pop("stores", None)
            self.status.stores = [StoreLight(s.name, s.ok, one_line(s.detail)) for s in results]
        finally:
            self._probing = False
        self._show_status()

    def refresh_stores(self) -> None:
        """Check store connectivity now (the system screen's `r`)."""
        if not self._probing:
            self.run_worker(self._probe_stores(), group="probe")

    # --- navigation -------------------------------------------------------------------------

    def jump(self, text: str) -> str | None:
        """Go where a `:` command says (`fleet`, `device dc-0001`, `al`, `q`, …). Returns an
        error message for the prompt, or None when it went."""
        word, _, arg = text.strip().partition(" ")
        word = word.lower()
        if not word:
            return None
        matches = [w for w in (*SCREENS_BY_NAME, *jump.JUMP_WORDS) if w.startswith(word)]
        target = word if word in SCREENS_BY_NAME or word in jump.JUMP_WORDS else None
        if target is None and matches:
            resolved = {SCREENS_BY_NAME.get(m, m) for m in matches}
            if len(resolved) > 1:
                return f"{word!r} is ambiguous: {', '.join(sorted(resolved))}"
            target = matches[0]
        if target is None:
            return f"unknown view {word!r}: try {', '.join(jump.JUMP_WORDS)}"
        if target in ("quit", "q"):
            self.exit(0)
        elif target == "help":
            self.show_help()
        elif target == "device":
            if not arg.strip():
                return "device needs an id: device dc-0001"
            self.open_device(arg.strip())
        else:
            self.show_view(SCREENS_BY_NAME[target])
        return None

    def show_view(self, mode: str) -> None:
        if self.current_mode != mode:
            self.switch_mode(mode)
        # `:fleet` from a device page means the list, as in k9s.
        while len(self.screen_stack) > 1 and isinstance(self.screen, DeviceScreen | RawScreen):
            self.pop_screen()

    def open_device(self, device_id: str) -> None:
        self.push_screen(DeviceScreen(device_id))

    def show_help(self) -> None:
        self.push_screen(HelpScreen(self.screen))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (isinstance(self.screen, ModalScreen) and action in self.MODAL_OFF)

    def action_jump_prompt(self) -> None:
        if isinstance(self.screen, DashboardScreen):
            self.screen.action_prompt_jump()

    def action_help(self) -> None:
        self.show_help()

    async def action_quit(self) -> None:
        self.exit(0)

    async def action_force_quit(self) -> None:
        self.exit(0)

    async def action_export(self) -> None:
        """`e`: the current view's data to a new CSV file; its path on screen."""
        view = self.current_view()
        try:
            table = await view.export_table() if view is not None else None
        except StoreError as exc:
            self.notify(f"export failed: {one_line(str(exc))}", severity="error", timeout=10)
            return
        if table is None:
            self.notify("nothing to export in this view", severity="warning", timeout=4)
            return
        if self.export_dir is None:
            self.notify("export: no IOTMETER_HOME to write to", severity="error")
            return
        try:
            path = await self.run_io(write_csv, self.export_dir, table, self.now_ms())
        except OSError as exc:
            self.notify(f"export failed: {one_line(str(exc))}", severity="error", timeout=10)
            return
        self.last_export = path
        self.notify(f"exported {len(table.rows):,} rows to {path}", title="CSV export",
                    timeout=15)

    def action_next_theme(self) -> None:
        current = self.THEMES.index(self.theme) if self.theme in self.THEMES else -1
        self.theme = self.THEMES[(current + 1) % len(self.THEMES)]

    # --- shutdown ---------------------------------------------------------------------------

    def shutdown_runtime(self, *, say: Callable[[str], None] | None = None) -> None:
        """Stop what this app started (after the app has exited)."""
        if self.starter is None:
            return
        if say:
            say("iotmeter: stopping simulator, collector and broker …")
        self.starter.join()
        try:
            self.starter.runtime.stop()
        except Exception as exc:
            if say:
                say(f"iotmeter: stop: {one_line(str(exc))}")


def _say(line: str) -> None:
    # After a SIGHUP the terminal is gone and writing to it fails; stopping must go on.
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr)


def run_dashboard(settings: Settings, simulate: str = "auto", *, view_only: bool = False) -> int:
    """`iotmeter`: the dashboard on the configured (or embedded) stores. Exit code 1 when the
    runtime failed to start (the app still ran, showing why). `view_only`: start no broker,
    collector or simulator (a session of `iotmeter serve`, attached to its runtime)."""
    from iotmeter_tui.backend.runtime import Runtime

    if view_only:
        runtime = Runtime(settings, simulate="no", start_collector=False, start_broker=False)
    else:
        runtime = Runtime(settings, simulate=simulate)
    app = IotmeterApp(runtime, start_runtime=True, keymap=settings.keymap)
    # A dropped SSH session (SIGHUP) or a service manager (SIGTERM) must not leave the
    # broker and the collector running: leave the app so the finally below stops them.
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, lambda *_: app.exit())
    try:
        app.run()
    finally:
        app.shutdown_runtime(say=_say)
    starter = app.starter
    if starter is not None and starter.error is not None:
        print(f"iotmeter: {starter.error}", file=sys.stderr)
        return 1
    return 0


# Every class whose bindings a keymap may name.
KEYMAP_OWNERS: list[type] = [
    IotmeterApp, FleetScreen, DeviceScreen, AlertsScreen, CommandsScreen, OtaScreen,
    SimulatorScreen, SystemScreen, RejectedScreen, RawScreen, MessageScreen, HelpScreen,
    FormDialog, LiveTable, PromptBar,
]
