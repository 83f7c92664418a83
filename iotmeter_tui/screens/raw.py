"""Raw messages: a device's latest messages exactly as it sent them (`r` on a device page),
and the rejected messages with their reasons (`:rejected`), filterable by reason and device.
Both read the archive and the collector's spool (backend/raw_messages.py). Every byte shown
went through `escaped()`: control characters and escape sequences a meter sends are shown
as escapes, never sent to the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widgets import Static

from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.backend.protocol import REJECTION_REASONS
from iotmeter_tui.backend.raw_messages import latest_raw, latest_rejected
from iotmeter_tui.backend.terminal import escaped
from iotmeter_tui.export import Cell, ExportTable, iso
from iotmeter_tui.screens.base import DashboardScreen
from iotmeter_tui.view.format import stamp
from iotmeter_tui.widgets.live_table import Column, LiveTable, Row

RAW_WINDOW_MS = 3_600_000  # the device's messages of the last hour
REJECTED_WINDOW_MS = 86_400_000
READ_EVERY_S = 5.0  # the archive is read object by object: not every second
MAX_SHOWN = 70_000  # a message is at most 64 KiB; its escapes may make it longer
SHOWN_IN_ROW = 2_000  # a row shows the start of a payload; enter opens it whole
REASONS: tuple[str | None, ...] = (None, *sorted(REJECTION_REASONS))

RAW_COLUMNS = (
    Column("ts", "DEVICE TIME", 14),
    Column("type", "TYPE", 11),
    Column("from", "FROM", 7, priority=2),
    Column("payload", "AS SENT", 30, flex=True),
)
REJECTED_COLUMNS = (
    Column("received", "RECEIVED", 14),
    Column("reason", "REASON", 15),
    Column("device", "DEVICE", 10),
    Column("detail", "DETAIL", 16, priority=2),
    Column("payload", "AS SENT", 20, flex=True, priority=1),
)


class MessageScreen(ModalScreen[None]):
    """One message in full (`enter` on a row): the table cuts long payloads at its width."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,q", "close", "close", id="message.close"),
    ]
    DEFAULT_CSS = """
    MessageScreen { align: center middle; background: $background 60%; }
    MessageScreen > VerticalScroll {
        width: 100; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    """

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text = title
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self.title_text, markup=False, classes="message-title")
            yield Static(self.text, markup=False, id="message-text")

    def action_close(self) -> None:
        self.dismiss(None)


def spool_root(runtime: object) -> Path | None:
    settings = getattr(runtime, "settings", None)
    return getattr(settings, "spool_dir", None)


class _Periodic(DashboardScreen):
    """Reads every READ_EVERY_S, not every refresh tick."""

    _last_read = -1e9

    def _tick(self) -> None:
        if self.is_current and self.dash.now() - self._last_read >= READ_EVERY_S:
            self.reload()

    async def load(self) -> None:
        self._last_read = self.dash.now()
        await self.read()

    async def read(self) -> None: ...


class RawScreen(_Periodic):
    VIEW = "Raw"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "back", id="raw.back"),
        Binding("enter", "show", "full message", id="raw.show"),
    ]

    def __init__(self, device_id: str) -> None:
        super().__init__()
        self.device_id = device_id
        self.messages: list[Sequence[Cell]] = []
        self._full: dict[str, tuple[str, str]] = {}

    def compose_body(self) -> ComposeResult:
        yield LiveTable(RAW_COLUMNS, id="raw-table",
                        empty_text="no messages from this device in the last hour")

    @property
    def table(self) -> LiveTable:
        return self.query_one("#raw-table", LiveTable)

    def focus_main(self) -> None:
        self.table.focus()

    def on_mount(self) -> None:
        super().on_mount()
        self.table.focus()

    def view_title(self) -> str:
        return f"Raw {self.device_id} · newest first"

    async def read(self) -> None:
        stores = self.dash.runtime.stores
        since = self.dash.now_ms() - RAW_WINDOW_MS
        try:
            found = await self.io(lambda: latest_raw(stores.archive, spool_root(self.dash.runtime),
                                                     self.device_id, since_ms=since))
        except (StoreError, ValueError) as exc:
            self.report("archive", exc)
            return
        self.report("archive", None)
        rows = []
        self.messages, self._full = [], {}
        for n, m in enumerate(found):
            rows.append(Row(str(n), (stamp(m.ts), escaped(m.msg_type, 20),
                                     (m.source, "muted"), escaped(m.payload, SHOWN_IN_ROW))))
            self._full[str(n)] = (f"{self.device_id} {escaped(m.msg_type, 20)} "
                                  f"{stamp(m.ts)} ({m.source})",
                                  escaped(m.payload, MAX_SHOWN))
            self.messages.append([iso(m.ts), m.msg_type, m.source,
                                  m.payload.decode("utf-8", "backslashreplace")])
        self.table.set_rows(rows)

    async def export_table(self) -> ExportTable:
        return ExportTable(f"raw-{self.device_id}", ("ts_utc", "msg_type", "source",
                                                      "payload"), list(self.messages))

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def action_show(self) -> None:
        row = self.table.cursor_row
        if row is not None and row.key in self._full:
            self.app.push_screen(MessageScreen(*self._full[row.key]))

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        event.stop()
        self.action_show()


class RejectedScreen(_Periodic):
    VIEW = "Rejected"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "reason", "reason", id="rejected.reason"),
        Binding("slash", "filter", "device", id="rejected.filter"),
        Binding("enter", "open", "device", id="rejected.open"),
    ]

    reason: reactive[str | None] = reactive(None, repaint=False, init=False)  # None: every one
    device: reactive[str] = reactive("", repaint=False, init=False)  # the `/` filter

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Sequence[Cell]] = []
        self._devices: dict[str, str] = {}

    def compose_body(self) -> ComposeResult:
        yield LiveTable(REJECTED_COLUMNS, id="rejected-table",
                        empty_text="no rejected messages in the last 24 h")

    @property
    def table(self) -> LiveTable:
        return self.query_one("#rejected-table", LiveTable)

    def focus_main(self) -> None:
        self.table.focus()

    def view_title(self) -> str:
        parts = ["Rejected", self.reason or "every reason"]
        if self.device:
            parts.append(f"/{self.device}")
        return " · ".join(parts)

    def search_text(self) -> str:
        return self.device

    def set_search(self, text: str) -> None:
        self.device = text

    def watch_device(self) -> None:
        self.state_changed()

    def watch_reason(self) -> None:
        self.state_changed()

    async def read(self) -> None:
        stores = self.dash.runtime.stores
        since = self.dash.now_ms() - REJECTED_WINDOW_MS
        reason, needle = self.reason, self.device.lower()
        try:
            found = await self.io(lambda: latest_rejected(
                stores.archive, spool_root(self.dash.runtime), since_ms=since, reason=reason))
        except (StoreError, ValueError) as exc:
            self.report("archive", exc)
            return
        self.report("archive", None)
        rows, self.rows, self._devices = [], [], {}
        for n, m in enumerate(found):
            if needle and needle not in m.device_id.lower():
                continue
            key = str(n)
            self._devices[key] = m.device_id
            rows.append(Row(key, (stamp(m.received_ms), (m.reason, "error"),
                                  escaped(m.device_id, 64) or "—", escaped(m.detail, 200),
                                  escaped(m.payload, SHOWN_IN_ROW))))
            self.rows.append([iso(m.received_ms), m.reason, m.device_id, m.detail, m.topic,
                              m.payload.decode("utf-8", "backslashreplace")])
        self.table.set_rows(rows)

    async def export_table(self) -> ExportTable:
        return ExportTable("rejected", ("received_utc", "reason", "device_id", "detail",
                                        "topic", "payload"), list(self.rows))

    def action_reason(self) -> None:
        self.reason = REASONS[(REASONS.index(self.reason) + 1) % len(REASONS)]

    def action_open(self) -> None:
        row = self.table.cursor_row
        device_id = self._devices.get(row.key) if row is not None else None
        if device_id:
            self.dash.open_device(device_id)
