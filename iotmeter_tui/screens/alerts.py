"""Alerts: the lifecycle active → acknowledged → cleared, newest first. `a` acknowledges and
`x` clears the alert under the cursor (or every marked one); digits pick the state shown."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.reactive import reactive

from iotmeter_tui.backend.collector.alerts import GROUP_DEVICE
from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.export import Cell, ExportTable, iso
from iotmeter_tui.screens.base import DashboardScreen
from iotmeter_tui.view.format import num, role_of, stamp
from iotmeter_tui.widgets.live_table import Column, LiveTable, Row

if TYPE_CHECKING:
    from iotmeter_tui.backend.stores.metadata import Alert, MetadataStore

COLUMNS = (
    Column("raised_at", "RAISED", 14),
    Column("device_id", "DEVICE", 10),
    Column("rule", "RULE", 13),
    Column("severity", "SEVERITY", 8, priority=2),
    Column("state", "STATE", 12),
    Column("value", "VALUE", 7, align="right", priority=3),
    Column("message", "MESSAGE", 20, flex=True, priority=1),
)
STATE_KEYS = {"0": None, "1": "active", "2": "acknowledged", "3": "cleared"}
LIMIT = 500


def alert_row(alert: Alert) -> Row:
    return Row(
        str(alert.id),
        (
            stamp(alert.raised_at),
            alert.device_id,
            alert.rule,
            (alert.severity, role_of(alert.severity)),
            (alert.state, role_of(alert.state)),
            num(alert.value),
            alert.message,
        ),
        role="muted" if alert.state == "cleared" else "",
    )


def _matches(alert: Alert, needle: str) -> bool:
    needle = needle.lower()
    return any(needle in text.lower() for text in (alert.device_id, alert.rule, alert.message,
                                                    alert.severity))


def _apply(md: MetadataStore, verb: str, ids: list[int], at: int) -> int:
    change = md.acknowledge_alert if verb == "acknowledge" else md.clear_alert
    return sum(1 for alert_id in ids if change(alert_id, at))


class AlertsScreen(DashboardScreen):
    VIEW = "Alerts"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "acknowledge", "ack", id="alerts.acknowledge"),
        Binding("x", "clear", "clear", id="alerts.clear"),
        Binding("enter", "open", "device", id="alerts.open"),
        Binding("slash", "filter", "filter", id="alerts.filter"),
        Binding("0", "state(0)", "all", show=False, id="alerts.state_0"),
        Binding("1", "state(1)", "active", id="alerts.state_1"),
        Binding("2", "state(2)", "acked", show=False, id="alerts.state_2"),
        Binding("3", "state(3)", "cleared", show=False, id="alerts.state_3"),
    ]

    # None: every state. Its key again still puts the cursor back on the newest alert.
    state: reactive[str | None] = reactive(None, repaint=False, init=False, always_update=True)
    search: reactive[str] = reactive("", repaint=False, init=False)

    def __init__(self) -> None:
        super().__init__()
        self.alerts: dict[str, Alert] = {}

    def compose_body(self) -> ComposeResult:
        yield LiveTable(COLUMNS, id="alerts-table", markable=True, empty_text="no alerts")

    @property
    def table(self) -> LiveTable:
        return self.query_one("#alerts-table", LiveTable)

    def focus_main(self) -> None:
        self.table.focus()

    def view_title(self) -> str:
        title = f"Alerts · {self.state or 'all'}"
        return f"{title} · /{self.search}" if self.search else title

    async def load(self) -> None:
        md = self.dash.runtime.stores.metadata
        state, search = self.state, self.search
        try:
            alerts = await self.io(lambda: md.list_alerts(state=state, limit=LIMIT))
        except StoreError as exc:
            self.report("metadata", exc)
            return
        self.report("metadata", None)
        if search:
            alerts = [a for a in alerts if _matches(a, search)]
        self.alerts = {str(a.id): a for a in alerts}
        self.table.set_rows(alert_row(a) for a in alerts)

    async def export_table(self) -> ExportTable:
        rows: list[Sequence[Cell]] = [
            [a.id, iso(a.raised_at), a.device_id, a.rule, a.severity, a.state, a.value,
             a.message, iso(a.acknowledged_at), iso(a.cleared_at)]
            for a in self.alerts.values()]
        return ExportTable("alerts", ("id", "raised_at_utc", "device_id", "rule", "severity",
                                      "state", "value", "message", "acknowledged_at_utc",
                                      "cleared_at_utc"), rows)

    async def _change(self, verb: str) -> None:
        table = self.table
        ids = [int(key) for key in table.selection() if key in self.alerts]
        if not ids:
            return
        md = self.dash.runtime.stores.metadata
        try:
            changed = await self.io(_apply, md, verb, ids, self.dash.now_ms())
        except StoreError as exc:
            self.report("metadata", exc)
            return
        table.marked.clear()
        past = "acknowledged" if verb == "acknowledge" else "cleared"
        self.notify(f"{changed} of {len(ids)} alert(s) {past}", timeout=3)
        self.reload()

    async def action_acknowledge(self) -> None:
        await self._change("acknowledge")

    async def action_clear(self) -> None:
        await self._change("clear")

    def action_state(self, key: int) -> None:
        self.state = STATE_KEYS[str(key)]

    def watch_state(self) -> None:
        self.table.move_cursor(0)
        self.state_changed()

    def watch_search(self) -> None:
        self.state_changed()

    def action_open(self) -> None:
        row = self.table.cursor_row
        if row is None or row.key not in self.alerts:
            return
        alert = self.alerts[row.key]
        if alert.device_id == GROUP_DEVICE:  # a grouped alert names no one meter: the fleet
            self.dash.show_view("fleet")
            return
        self.dash.open_device(alert.device_id)

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        event.stop()
        self.action_open()

    def search_text(self) -> str:
        return self.search

    def set_search(self, text: str) -> None:
        self.search = text
