"""Fleet: every meter in the registry, live. Only the rows around the viewport are read
(list_devices with offset/limit, plus count_devices for the scrollbar); sort and filter run
in the store's query; live values are read for the visible rows only, so 10,000 meters cost
what 60 do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.reactive import reactive

from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.export import Cell, ExportTable, iso
from iotmeter_tui.screens.actions import open_command_dialog, send_to_devices
from iotmeter_tui.screens.base import DashboardScreen
from iotmeter_tui.screens.device_admin import add_device, delete_device, edit_device
from iotmeter_tui.view.format import (
    STATUS_DOTS,
    ago,
    key_fields,
    num,
    quality_cell,
    role_of,
    short_type,
)
from iotmeter_tui.widgets.live_table import Column, LiveTable, Row

if TYPE_CHECKING:
    from iotmeter_tui.backend.stores import Stores
    from iotmeter_tui.backend.stores.metadata import Device
    from iotmeter_tui.backend.stores.timeseries import Latest

COLUMNS = (
    Column("device_id", "DEVICE", 12, flex=True),
    Column("device_type", "TYPE", 4),
    Column("connection_status", "STATUS", 9),
    Column("fw_version", "FIRMWARE", 9, priority=3),
    Column("last_seen", "SEEN", 5, align="right"),
    Column("volts", "VOLTS", 7, align="right"),
    Column("amps", "AMPS", 7, align="right"),
    Column("kw", "KW", 7, align="right"),
    Column("alerts", "ALERTS", 6, align="right", priority=2),
    Column("quality", "QUAL", 5, align="right", priority=1),  # 5: room for "QUAL▲"
)
# Columns the store can sort by, in the order `s` walks through them.
SORTABLE = ("device_id", "device_type", "connection_status", "fw_version", "last_seen",
            "quality")
STATUS_FILTERS = (None, "online", "offline", "unknown")
SILENT_FLEET_HINT = ("no meter is online: ':sim' then 's' starts simulated meters (or run "
                     "iotmeter --simulate yes); real meters publish to the collector's broker")


@dataclass(frozen=True, slots=True)
class FleetQuery:
    search: str | None = None
    status: str | None = None
    order_by: str = "device_id"
    descending: bool = False


@dataclass(slots=True)
class FleetPage:
    total: int
    offset: int
    devices: list[Device]
    latest: dict[str, Latest]
    alert_counts: dict[str, int]
    errors: dict[str, str | None]
    online: int | None = None  # meters online fleet-wide (None: not read)


def read_page(stores: Stores, query: FleetQuery, offset: int, limit: int) -> FleetPage:
    """One refresh of the fleet table, in an I/O thread. A store that fails leaves its part
    empty and its error in `errors`; the others still show."""
    md = stores.metadata
    errors: dict[str, str | None] = {}
    filters = {"search": query.search, "status": query.status}
    try:
        total = md.count_devices(**filters)
        online = md.count_devices(status="online")
        devices = md.list_devices(**filters, order_by=query.order_by,
                                  descending=query.descending, offset=offset, limit=limit)
        errors["metadata"] = None
    except StoreError as exc:
        errors["metadata"] = str(exc)
        return FleetPage(0, offset, [], {}, {}, errors)
    latest: dict[str, Latest] = {}
    try:
        latest = stores.timeseries.latest([d.device_id for d in devices])
        errors["timeseries"] = None
    except StoreError as exc:
        errors["timeseries"] = str(exc)
    counts: dict[str, int] = {}
    try:  # the rows read only, counted in the store
        counts = md.open_alert_counts([d.device_id for d in devices])
    except StoreError as exc:
        errors["metadata"] = str(exc)
    return FleetPage(total, offset, devices, latest, counts, errors, online)


def fleet_export(stores: Stores, query: FleetQuery) -> ExportTable:
    """Every meter the fleet view lists under its filter and sort (not just the rows on
    screen), with the values the view shows, in an I/O thread."""
    md = stores.metadata
    devices = md.list_devices(search=query.search, status=query.status,
                              order_by=query.order_by, descending=query.descending)
    latest = stores.timeseries.latest([d.device_id for d in devices]) if devices else {}
    alerts = md.open_alert_counts()
    rows: list[Sequence[Cell]] = []
    for d in devices:
        values: list[float | None] = [None, None, None]
        point = latest.get(d.device_id)
        if point is not None:
            names = key_fields(d.device_type, point.fields)
            values = [point.fields.get(name) for name in names]
        rows.append([d.device_id, d.device_type, d.connection_status, d.fw_version,
                     iso(d.last_seen), *values, alerts.get(d.device_id, 0), d.quality])
    return ExportTable("fleet", ("device_id", "device_type", "connection_status",
                                 "fw_version", "last_seen_utc", "volts", "amps", "kw",
                                 "open_alerts", "quality"), rows)


def device_row(device: Device, latest: Latest | None, alerts: int, now_ms: int) -> Row:
    status = device.connection_status
    volts = amps = kw = None
    if latest is not None:
        v_field, a_field, kw_field = key_fields(device.device_type, latest.fields)
        volts, amps, kw = (latest.fields.get(v_field), latest.fields.get(a_field),
                           latest.fields.get(kw_field))
    return Row(
        device.device_id,
        (
            device.device_id,
            short_type(device.device_type),
            (f"{STATUS_DOTS.get(status, '?')} {status}", role_of(status)),
            device.fw_version or "—",
            ago(device.last_seen, now_ms),
            num(volts),
            num(amps),
            num(kw),
            (str(alerts), "error") if alerts else ("·", "muted"),
            quality_cell(device.quality),
        ),
        role="muted" if status == "offline" else "",
    )


class FleetScreen(DashboardScreen):
    VIEW = "Fleet"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "open", id="fleet.open"),
        Binding("slash", "filter", "filter", id="fleet.filter"),
        Binding("s", "sort", "sort", id="fleet.sort"),
        Binding("S", "reverse", "reverse", show=False, id="fleet.reverse"),
        Binding("o", "status_filter", "status", id="fleet.status_filter"),
        Binding("p", "ping", "ping", id="fleet.ping"),
        Binding("c", "command", "command", id="fleet.command"),
        Binding("a", "add", "add device", show=False, id="fleet.add"),
        Binding("n", "edit", "name/location", show=False, id="fleet.edit"),
        Binding("x", "delete", "delete device", show=False, id="fleet.delete"),
    ]

    # Sort and filters: a new value lists from the top and is read at once.
    query_state: reactive[FleetQuery] = reactive(FleetQuery(), repaint=False, init=False)
    total: reactive[int] = reactive(0, repaint=False, init=False)  # meters the query lists

    def __init__(self) -> None:
        super().__init__()
        self.shown_query: FleetQuery | None = None  # the query the rows on screen answer

    def compose_body(self) -> ComposeResult:
        table = LiveTable(COLUMNS, id="fleet-table", markable=True,
                          empty_text="no devices in the registry yet")
        table.set_sort("device_id", False)
        yield table

    @property
    def table(self) -> LiveTable:
        return self.query_one("#fleet-table", LiveTable)

    def focus_main(self) -> None:
        self.table.focus()

    def view_title(self) -> str:
        q = self.query_state
        parts = [f"Fleet {self.total:,}"]
        if q.status:
            parts.append(q.status)
        if q.search:
            parts.append(f"/{q.search}")
        return " · ".join(parts)

    # --- data -------------------------------------------------------------------------------

    async def load(self) -> None:
        table = self.table
        query = self.query_state
        # A new sort or filter: the rows on screen first (a smaller read, painted sooner);
        # the table then asks for the window around them (WindowNeeded).
        first_of_query = table.loaded and query != self.shown_query
        offset, limit = table.visible_rows() if first_of_query else table.window()
        page = await self.io(read_page, self.dash.runtime.stores, query, offset, limit)
        if query != self.query_state:
            return  # no longer wanted: the read for the new query is under way
        for source, error in page.errors.items():
            self.report(source, error)
        if page.errors.get("metadata"):
            if not table.loaded:
                table.empty_text = "registry unavailable"
                table.load_window(0, 0, [])
            return
        now_ms = self.dash.now_ms()
        rows = [device_row(d, page.latest.get(d.device_id),
                           page.alert_counts.get(d.device_id, 0), now_ms)
                for d in page.devices]
        table.empty_text = ("no devices match the filter" if query.search or query.status
                            else "no devices in the registry yet")
        table.load_window(page.total, page.offset, rows)
        self.shown_query = query
        self.report("fleet", SILENT_FLEET_HINT if self._fleet_is_silent(page) else None)
        self.total = page.total

    def _fleet_is_silent(self, page: FleetPage) -> bool:
        """Nothing online and nothing on its way: say how to start a fleet (a
        dead fleet on screen and no word why is a first-day dead end)."""
        if page.online != 0 or self.dash.status.phase == "starting":
            return False
        return not self.dash.status.sim_devices  # simulated meters on their way: wait

    async def export_table(self) -> ExportTable:
        return await self.io(fleet_export, self.dash.runtime.stores, self.query_state)

    def on_live_table_window_needed(self, event: LiveTable.WindowNeeded) -> None:
        self.reload(urgent=True)

    def watch_query_state(self, query: FleetQuery) -> None:
        """A new sort or filter: read it at once, from the top of the list -- what the
        operator sorted or filtered for. (Keeping the cursor's index deep in the list would
        also make the store sort down to that offset.)"""
        table = self.table
        table.home()  # first: the new sort's arrow is then painted with its rows
        table.set_sort(query.order_by, query.descending)
        self.state_changed()

    def watch_total(self) -> None:
        self.show_status(self.dash.status)  # the title counts the meters listed

    def _requery(self, **changes: Any) -> None:
        self.query_state = replace(self.query_state, **changes)

    # --- keys -------------------------------------------------------------------------------

    def action_open(self) -> None:
        row = self.table.cursor_row
        if row is not None:
            self.dash.open_device(row.key)

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        event.stop()
        self.dash.open_device(event.row.key)

    def on_live_table_highlighted(self, event: LiveTable.Highlighted) -> None:
        # Dialogs opened from other views (new command, OTA campaign) offer the devices
        # marked here; the cursor alone is no choice of targets.
        self.dash.device_selection = sorted(self.table.marked)

    def action_sort(self) -> None:
        current = SORTABLE.index(self.query_state.order_by)
        self._requery(order_by=SORTABLE[(current + 1) % len(SORTABLE)], descending=False)

    def action_reverse(self) -> None:
        self._requery(descending=not self.query_state.descending)

    def action_status_filter(self) -> None:
        current = STATUS_FILTERS.index(self.query_state.status)
        self._requery(status=STATUS_FILTERS[(current + 1) % len(STATUS_FILTERS)])

    def search_text(self) -> str:
        return self.query_state.search or ""

    def set_search(self, text: str) -> None:
        self._requery(search=text or None)

    async def action_ping(self) -> None:
        ids = self.table.selection()
        if ids:
            await send_to_devices(self, ids, "ping", {}, 10.0)

    def action_command(self) -> None:
        open_command_dialog(self, self.table.selection())

    def action_add(self) -> None:
        add_device(self)

    def action_edit(self) -> None:
        row = self.table.cursor_row
        if row is not None:
            edit_device(self, row.key)

    def action_delete(self) -> None:
        row = self.table.cursor_row
        if row is not None:
            delete_device(self, row.key)
