"""Commands: the queue, newest first, states changing live (queued → sent → accepted →
done / rejected / failed / timed_out). `n` sends a command to the devices selected in the
fleet (or typed in the dialog); `r` sends the highlighted command again."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.reactive import reactive

from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.backend.stores.metadata import COMMAND_OPEN_STATES
from iotmeter_tui.export import Cell, ExportTable, iso
from iotmeter_tui.screens.actions import (
    DEFAULT_TIMEOUT_S,
    UNAVAILABLE,
    commands_offered,
    open_command_dialog,
    send_to_devices,
)
from iotmeter_tui.screens.base import DashboardScreen
from iotmeter_tui.view.format import ago, role_of, stamp
from iotmeter_tui.widgets.live_table import Column, LiveTable, Row

if TYPE_CHECKING:
    from iotmeter_tui.backend.stores.metadata import Command

COLUMNS = (
    Column("created_at", "CREATED", 14),
    Column("device_id", "DEVICE", 10),
    Column("name", "COMMAND", 12),
    Column("params", "PARAMS", 12, priority=3),
    Column("state", "STATE", 9),
    Column("attempts", "TRY", 3, align="right", priority=4),
    Column("updated_at", "AGE", 4, align="right", priority=2),
    Column("detail", "DETAIL", 10, flex=True, priority=1),
)
LIMIT = 500


def command_row(cmd: Command, now_ms: int) -> Row:
    params = json.dumps(cmd.params, separators=(",", ":")) if cmd.params else ""
    detail = cmd.detail or cmd.result or ""
    return Row(
        cmd.id,
        (
            stamp(cmd.created_at),
            cmd.device_id,
            cmd.name,
            params,
            (cmd.state, role_of(cmd.state)),
            str(cmd.attempts),
            ago(cmd.updated_at, now_ms),
            detail,
        ),
    )


def _matches(cmd: Command, needle: str) -> bool:
    needle = needle.lower()
    return any(needle in text.lower() for text in (cmd.device_id, cmd.name, cmd.state, cmd.id))


class CommandsScreen(DashboardScreen):
    VIEW = "Commands"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "new", "new", id="commands.new"),
        Binding("r", "resend", "resend", id="commands.resend"),
        Binding("o", "open_only", "open only", id="commands.open_only"),
        Binding("enter", "open", "device", id="commands.open"),
        Binding("slash", "filter", "filter", id="commands.filter"),
    ]

    open_only: reactive[bool] = reactive(False, repaint=False, init=False)
    search: reactive[str] = reactive("", repaint=False, init=False)

    def __init__(self) -> None:
        super().__init__()
        self.commands: dict[str, Command] = {}

    def compose_body(self) -> ComposeResult:
        yield LiveTable(COLUMNS, id="commands-table", empty_text="no commands yet")

    @property
    def table(self) -> LiveTable:
        return self.query_one("#commands-table", LiveTable)

    def focus_main(self) -> None:
        self.table.focus()

    def view_title(self) -> str:
        title = "Commands · open" if self.open_only else "Commands"
        return f"{title} · /{self.search}" if self.search else title

    def search_text(self) -> str:
        return self.search

    def set_search(self, text: str) -> None:
        self.search = text

    def watch_search(self) -> None:
        self.state_changed()

    def watch_open_only(self) -> None:
        self.state_changed()

    async def load(self) -> None:
        self.report("service", None if commands_offered(self) else
                    f"{UNAVAILABLE}: the queue is shown, sending is off")
        md = self.dash.runtime.stores.metadata
        open_only, search = self.open_only, self.search
        try:
            commands = await self.io(lambda: md.list_commands(limit=LIMIT))
        except StoreError as exc:
            self.report("metadata", exc)
            return
        self.report("metadata", None)
        if open_only:
            commands = [c for c in commands if c.state in COMMAND_OPEN_STATES]
        if search:
            commands = [c for c in commands if _matches(c, search)]
        self.commands = {c.id: c for c in commands}
        now_ms = self.dash.now_ms()
        self.table.set_rows(command_row(c, now_ms) for c in commands)

    async def export_table(self) -> ExportTable:
        rows: list[Sequence[Cell]] = [
            [c.id, iso(c.created_at), c.device_id, c.name, json.dumps(c.params), c.state,
             c.attempts, c.result, c.detail, iso(c.updated_at)]
            for c in self.commands.values()]
        return ExportTable("commands", ("id", "created_at_utc", "device_id", "name", "params",
                                        "state", "attempts", "result", "detail",
                                        "updated_at_utc"), rows)

    def action_new(self) -> None:
        ids = list(self.dash.device_selection)
        row = self.table.cursor_row
        if not ids and row is not None and row.key in self.commands:
            ids = [self.commands[row.key].device_id]
        open_command_dialog(self, ids)

    async def action_resend(self) -> None:
        row = self.table.cursor_row
        if row is None or row.key not in self.commands:
            return
        cmd = self.commands[row.key]
        timeout = DEFAULT_TIMEOUT_S
        if cmd.expires_at is not None:
            timeout = max(1.0, (cmd.expires_at - cmd.created_at) / 1000)
        await send_to_devices(self, [cmd.device_id], cmd.name, dict(cmd.params), timeout)

    def action_open_only(self) -> None:
        self.open_only = not self.open_only

    def action_open(self) -> None:
        row = self.table.cursor_row
        if row is not None and row.key in self.commands:
            self.dash.open_device(self.commands[row.key].device_id)

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        event.stop()
        self.action_open()

