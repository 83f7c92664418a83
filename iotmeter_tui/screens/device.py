"""Device: one meter up close. Charts of voltage, current and power over a window `w` cycles
through; beside them a panel (digits 1-6) of latest values, configuration, recent alerts,
command history, sequence gaps and the data-quality score with its parts. `p` pings, `c`
sends any command, escape goes back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.reactive import reactive
from textual.widgets import ContentSwitcher, Static

from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.backend.stores.rollups import aligned_range
from iotmeter_tui.export import Cell, ExportTable, iso
from iotmeter_tui.screens.actions import open_command_dialog, send_to_devices
from iotmeter_tui.screens.base import DashboardScreen
from iotmeter_tui.screens.device_admin import delete_device, edit_config, edit_device
from iotmeter_tui.view.format import (
    STATUS_DOTS,
    ago,
    clock,
    key_fields,
    num,
    quality_cell,
    role_of,
    short_type,
)
from iotmeter_tui.widgets.live_chart import LiveChart
from iotmeter_tui.widgets.live_table import Column, LiveTable, Row

if TYPE_CHECKING:
    from iotmeter_tui.backend.stores import Stores
    from iotmeter_tui.backend.stores.metadata import (
        Alert,
        Command,
        Device,
        DeviceQuality,
        SeqState,
    )
    from iotmeter_tui.backend.stores.timeseries import Bucket, Latest

# Up to a year: windows of hours and more are read from the stores' rollups (aligned_range)
# when IOTMETER_ROLLUPS is on, else from raw points.
WINDOWS_MIN = (1, 5, 15, 60, 360, 1440, 10080, 43200, 525600)
DEFAULT_WINDOW_MIN = 5
CHART_UNITS = ("V", "A", "kW")
CHART_TITLES = ("voltage", "current", "power")
PANELS = ("values", "config", "alerts", "commands", "gaps", "quality")
PANEL_SHORT = ("val", "cfg", "alrt", "cmd", "gap", "qual")
HISTORY_POINTS = 240
RECENT = 50

PANEL_COLUMNS: dict[str, tuple[Column, ...]] = {
    "values": (Column("field", "FIELD", 18, flex=True), Column("value", "VALUE", 11,
                                                               align="right")),
    "config": (Column("key", "KEY", 18, flex=True), Column("value", "VALUE", 10)),
    "alerts": (Column("at", "RAISED", 8), Column("rule", "RULE", 12, flex=True),
               Column("state", "STATE", 8)),
    "commands": (Column("at", "TIME", 8), Column("name", "CMD", 8, flex=True),
                 Column("state", "STATE", 9), Column("detail", "DETAIL", 12, priority=1)),
    "gaps": (Column("boot", "BOOT", 5, align="right"), Column("received", "RECV", 7,
                                                             align="right"),
             Column("dup", "DUP", 4, align="right"), Column("missing", "MISS", 5,
                                                            align="right"),
             Column("gaps", "OPEN GAPS", 8, flex=True)),
    "quality": (Column("part", "PART", 14, flex=True), Column("value", "VALUE", 10,
                                                              align="right")),
}


@dataclass(slots=True)
class DeviceData:
    device: Device | None = None
    config: dict[str, Any] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    seq: list[SeqState] = field(default_factory=list)
    quality: DeviceQuality | None = None
    latest: Latest | None = None
    history: list[Bucket] | None = None  # None: not read this time
    fields: tuple[str, str, str] = ("voltage_v", "current_a", "power_kw")
    errors: dict[str, str | None] = field(default_factory=dict)


def read_device(stores: Stores, device_id: str,
                history: tuple[int, int] | None) -> DeviceData:
    """Everything the device page shows, in an I/O thread, with the chart data of the
    `history` range [start_ms, end_ms) when given; each store's failure is kept apart so
    the other's data still shows."""
    data = DeviceData()
    md, ts = stores.metadata, stores.timeseries
    try:
        data.device = md.get_device(device_id)
        data.config = md.get_config(device_id)
        data.alerts = md.list_alerts(device_id=device_id, limit=RECENT)
        data.commands = md.list_commands(device_id=device_id, limit=RECENT)
        data.seq = sorted(md.load_seq_states([device_id]), key=lambda s: -s.boot)
        data.quality = md.device_quality([device_id]).get(device_id)
        data.errors["metadata"] = None
    except StoreError as exc:
        data.errors["metadata"] = str(exc)
    device_type = data.device.device_type if data.device else None
    try:
        data.latest = ts.latest([device_id]).get(device_id)
        if device_type is None and data.latest is not None:
            device_type = data.latest.device_type
        data.fields = key_fields(device_type, data.latest.fields if data.latest else None)
        if history is not None:
            data.history = ts.history(device_id, list(data.fields), *history,
                                      max_points=HISTORY_POINTS)
        data.errors["timeseries"] = None
    except StoreError as exc:
        data.errors["timeseries"] = str(exc)
    return data


def telemetry_export(stores: Stores, device_id: str, start_ms: int,
                     end_ms: int) -> ExportTable:
    """Every stored point of the device in the chart's window: one row a message, one
    column a field (the union over the window), in an I/O thread."""
    points = stores.timeseries.points(device_id, start_ms, end_ms)
    names = sorted({name for p in points for name in p.fields})
    rows: list[Sequence[Cell]] = [[iso(p.ts), p.boot, p.seq, *(p.fields.get(n) for n in names)]
                                  for p in points]
    stem = f"telemetry-{device_id}"
    return ExportTable(stem, ("ts_utc", "boot", "seq", *names), rows)


def _gaps_text(state: SeqState) -> str:
    if not state.gaps:
        return "—"
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in state.gaps[:6]]
    more = len(state.gaps) - 6
    return ", ".join(parts) + (f" +{more}" if more > 0 else "")


def quality_rows(q: DeviceQuality | None, now_ms: int) -> list[Row]:
    """The score and what it is made of; counts decay with a one-hour half-life, so they
    read as "lately", with fractions (collector/quality.py)."""
    if q is None:
        return []

    def part(n: float) -> tuple[str, str]:
        return (f"{n:,.1f}", "error") if n >= 0.05 else ("0", "")

    skew_role = "error" if q.clock_skew_ms >= 60_000 else "warn" if q.clock_skew_ms >= 5000 else ""
    return [
        Row("score", ("score", quality_cell(q.score))),
        Row("received", ("received", f"{q.received:,.0f}")),
        Row("gaps", ("gaps (missing)", part(q.gaps))),
        Row("duplicates", ("duplicates", part(q.duplicates))),
        Row("rejects", ("rejects", part(q.rejects))),
        Row("counter_resets", ("counter resets", part(q.counter_resets))),
        Row("clock_skew", ("clock skew", (f"{q.clock_skew_ms / 1000:,.1f}s", skew_role))),
        Row("stuck", ("stuck fields", (str(q.stuck_fields), "error" if q.stuck_fields else ""))),
        Row("updated", ("scored", ago(q.updated_at, now_ms) + " ago")),
    ]


def panel_rows(panel: str, data: DeviceData, now_ms: int) -> list[Row]:
    if panel == "values":
        if data.latest is None:
            return []
        rows = [Row("_ts", ("measured", ago(data.latest.ts, now_ms) + " ago"))]
        rows += [Row(name, (name, num(value))) for name, value in
                 sorted(data.latest.fields.items())]
        return rows
    if panel == "config":
        return [Row(key, (key, json.dumps(value))) for key, value in
                sorted(data.config.items())]
    if panel == "alerts":
        return [Row(str(a.id), (clock(a.raised_at), a.rule, (a.state, role_of(a.state))))
                for a in data.alerts]
    if panel == "quality":
        return quality_rows(data.quality, now_ms)
    if panel == "commands":
        return [Row(c.id, (clock(c.created_at), c.name, (c.state, role_of(c.state)),
                           c.detail or c.result or "")) for c in data.commands]
    return [Row(str(s.boot), (str(s.boot), f"{s.received:,}", str(s.duplicates),
                              (str(s.missing), "error" if s.missing else ""), _gaps_text(s)))
            for s in data.seq]


class DeviceScreen(DashboardScreen):
    VIEW = "Device"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "back", id="device.back"),
        Binding("w", "window", "window", id="device.window"),
        Binding("p", "ping", "ping", id="device.ping"),
        Binding("c", "command", "command", id="device.command"),
        Binding("1", "panel(0)", "values", show=False, id="device.panel_0"),
        Binding("2", "panel(1)", "config", show=False, id="device.panel_1"),
        Binding("3", "panel(2)", "alerts", show=False, id="device.panel_2"),
        Binding("4", "panel(3)", "commands", show=False, id="device.panel_3"),
        Binding("5", "panel(4)", "gaps", show=False, id="device.panel_4"),
        Binding("6", "panel(5)", "quality", show=False, id="device.panel_5"),
        Binding("tab", "panel_next", "panel", show=False, id="device.panel_next"),
        Binding("r", "raw", "raw", id="device.raw"),
        Binding("n", "edit", "name/location", show=False, id="device.edit"),
        Binding("s", "config", "edit config", show=False, id="device.config"),
        Binding("x", "delete", "delete", show=False, id="device.delete"),
    ]

    window_min: reactive[int] = reactive(DEFAULT_WINDOW_MIN, repaint=False, init=False)
    # Index into PANELS; its key again still gives the panel the keyboard.
    panel: reactive[int] = reactive(0, repaint=False, init=False, always_update=True)

    def __init__(self, device_id: str) -> None:
        super().__init__()
        self.device_id = device_id
        self.data = DeviceData()
        self._history_at = 0  # when the chart data was read, and for which window
        self._history_for = 0

    def compose_body(self) -> ComposeResult:
        yield Static("", id="device-summary")
        with Horizontal(id="device-body"):
            with Vertical(id="device-charts"):
                for i, (title, unit) in enumerate(zip(CHART_TITLES, CHART_UNITS, strict=True)):
                    yield LiveChart(title, unit, id=f"chart-{i}")
            with Vertical(id="device-side"):
                yield Static("", id="device-tabs")
                with ContentSwitcher(initial="panel-values", id="device-panels"):
                    for panel in PANELS:
                        yield LiveTable(PANEL_COLUMNS[panel], id=f"panel-{panel}",
                                        empty_text=f"no {panel}")

    def view_title(self) -> str:
        return f"Device {self.device_id}"

    def on_mount(self) -> None:
        super().on_mount()
        self._show_tabs()
        self._panel_table().focus()

    def on_resize(self) -> None:
        self._show_tabs()

    def focus_main(self) -> None:
        self._panel_table().focus()

    def _panel_table(self) -> LiveTable:
        return self.query_one(f"#panel-{PANELS[self.panel]}", LiveTable)

    def _show_tabs(self) -> None:
        side = self.query_one("#device-side")
        full = sum(len(name) + 3 for name in PANELS) - 1  # "1 values 2 config ..."
        names = PANELS if side.size.width >= full else PANEL_SHORT
        parts = []
        for i, name in enumerate(names):
            label = f"{i + 1} {name}" if names is PANELS else f"{i + 1}{name}"
            parts.append(f"[reverse b]{label}[/]" if i == self.panel else f"[dim]{label}[/]")
        self.query_one("#device-tabs", Static).update(" ".join(parts))

    # --- data -------------------------------------------------------------------------------

    async def load(self) -> None:
        now_ms = self.dash.now_ms()
        window_ms = self.window_min * 60_000
        # A long window's chart changes only as fast as its buckets fill: read it again every
        # half bucket (every second at most, every minute at least), not every second.
        every_ms = min(60_000, max(1000, window_ms // HISTORY_POINTS // 2))
        due = (self._history_for != self.window_min or self.data.history is None
               or now_ms - self._history_at >= every_ms)
        # Aligned so a long window's buckets are whole rollup buckets: the store reads
        # minutes or hours instead of every raw point (rollups.aligned_range).
        span = aligned_range(now_ms - window_ms, now_ms + 1, HISTORY_POINTS) if due else None
        data = await self.io(read_device, self.dash.runtime.stores, self.device_id, span)
        for source, error in data.errors.items():
            self.report(source, error)
        if data.history is None:
            data.history = self.data.history
        elif not data.errors.get("timeseries"):
            self._history_at, self._history_for = now_ms, self.window_min
        self.data = data
        self._show_summary(now_ms)
        self._show_charts(now_ms)
        for panel in PANELS:
            self.query_one(f"#panel-{panel}", LiveTable).set_rows(
                panel_rows(panel, data, now_ms))

    async def export_table(self) -> ExportTable:
        now_ms = self.dash.now_ms()
        return await self.io(telemetry_export, self.dash.runtime.stores, self.device_id,
                             now_ms - self.window_min * 60_000, now_ms + 1)

    def _show_summary(self, now_ms: int) -> None:
        device = self.data.device
        summary = self.query_one("#device-summary", Static)
        if device is None:
            if self.data.errors.get("metadata") is None:
                summary.update(f" {self.device_id}: not in the registry")
            return
        status = device.connection_status
        colour = {"ok": "$text-success", "error": "$text-error"}.get(role_of(status),
                                                                       "$text-muted")
        hb = f"{device.heartbeat_s:g}s" if device.heartbeat_s else "—"
        score, role = quality_cell(device.quality)
        score_colour = {"error": "$text-error", "warn": "$text-warning"}.get(role, "")
        summary.update(
            f" [b]{device.device_id}[/b]  {short_type(device.device_type)}  "
            f"[{colour}]{STATUS_DOTS.get(status, '?')} {status}[/]  "
            f"fw {escape(device.fw_version or '—')}  seen {ago(device.last_seen, now_ms)}  "
            f"boot {device.boot if device.boot is not None else '—'}  hb {hb}  "
            + (f"quality [{score_colour}]{score}[/]  " if score_colour else f"quality {score}  ")
            +
            f"[$text-accent]window {_window_label(self.window_min)}[/]"
            + "".join(f"  [$text-muted]{label}[/] {escape(value)}" for label, value in
                      (("name", device.name), ("at", device.location)) if value)
        )

    def _show_charts(self, now_ms: int) -> None:
        for i, name in enumerate(self.data.fields):
            minutes, means, lows, highs = [], [], [], []
            for bucket in self.data.history or []:
                values = bucket.values.get(name)
                if not values:
                    continue
                minutes.append(round((bucket.ts - now_ms) / 60_000, 4))
                means.append(values["mean"])
                lows.append(values["min"])
                highs.append(values["max"])
            chart = self.query_one(f"#chart-{i}", LiveChart)
            chart.show_series(minutes, means, lows, highs, window_min=self.window_min)

    # --- keys -------------------------------------------------------------------------------

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()
        else:
            self.dash.show_view("fleet")

    def action_window(self) -> None:
        index = WINDOWS_MIN.index(self.window_min) if self.window_min in WINDOWS_MIN else 0
        self.window_min = WINDOWS_MIN[(index + 1) % len(WINDOWS_MIN)]

    def watch_window_min(self) -> None:
        self.state_changed()

    def action_panel(self, index: int) -> None:
        self.panel = index

    def watch_panel(self, index: int) -> None:
        self.query_one("#device-panels", ContentSwitcher).current = f"panel-{PANELS[index]}"
        self._show_tabs()
        self._panel_table().focus()

    def action_panel_next(self) -> None:
        self.action_panel((self.panel + 1) % len(PANELS))

    async def action_ping(self) -> None:
        await send_to_devices(self, [self.device_id], "ping", {}, 10.0)

    def action_edit(self) -> None:
        edit_device(self, self.device_id)

    def action_config(self) -> None:
        edit_config(self, self.device_id)

    def action_delete(self) -> None:
        delete_device(self, self.device_id, after=self.action_back)

    def action_raw(self) -> None:
        from iotmeter_tui.screens.raw import RawScreen

        self.app.push_screen(RawScreen(self.device_id))

    def action_command(self) -> None:
        open_command_dialog(self, [self.device_id])


def _window_label(minutes: int) -> str:
    if minutes < 60:
        return f"{minutes}m"
    return f"{minutes // 60}h" if minutes < 10080 else f"{minutes // 1440}d"
