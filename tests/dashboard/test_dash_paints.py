"""A key shows its effect in one paint (Textual paints at most once a frame, and a paint in
between costs the key a frame or two): a new list keeps the old view until its rows come, the
window around the viewport is read after the paint, an unchanged status line is not
repainted. The LiveTable here runs in a small real Textual app; no store behind it."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from dash_helpers import drive, settle, wait_until
from rich.style import Style
from textual import events
from textual.app import App, ComposeResult

from iotmeter_tui.widgets import live_table
from iotmeter_tui.widgets.live_table import Column, LiveTable, Row

TOTAL = 1000
COLUMNS = (Column("id", "METER", 10), Column("n", "N", 6, align="right"))
SIZE = (40, 11)  # a body of 10 rows under the header


def rows(offset: int, limit: int, *, prefix: str = "m") -> list[Row]:
    return [Row(f"{prefix}-{i:04d}", (f"{prefix}-{i:04d}", str(i)))
            for i in range(offset, min(TOTAL, offset + limit))]


class CountingTable(LiveTable):
    """Counts the rows drawn inside a paint (not ahead of one)."""

    drawn_in_paint = 0

    def _render_row(self, row: Row, index: int, width: int, base: Style) -> Any:
        if self._paint is not None:
            self.drawn_in_paint += 1
        return super()._render_row(row, index, width, base)


class TableApp(App[None]):
    """Serves the table's window from a list of TOTAL rows named `prefix`-NNNN, and notes
    each paint: the table's scroll offset and the screen's text, as the terminal gets it."""

    def __init__(self) -> None:
        super().__init__()
        self.prefix = "m"
        self.serve = True
        self.paints: list[tuple[int, str]] = []
        self.needed_after: list[int] = []  # paints made before each WindowNeeded arrived
        original = self._display

        def display(screen: Any, renderable: Any) -> None:
            original(screen, renderable)
            if renderable is not None and self.is_running:
                self.paints.append((int(self.table.scroll_offset.y), self.text()))

        self._display = display  # type: ignore[method-assign]

    def compose(self) -> ComposeResult:
        yield CountingTable(COLUMNS, id="table")

    @property
    def table(self) -> CountingTable:
        return self.query_one(CountingTable)

    def text(self) -> str:
        strips = self.screen._compositor.render_strips()
        return "\n".join("".join(segment.text for segment in strip) for strip in strips)

    def on_mount(self) -> None:
        self.table.focus()
        offset, limit = self.table.window()
        self.table.load_window(TOTAL, offset, rows(offset, limit, prefix=self.prefix))

    def on_live_table_window_needed(self, event: LiveTable.WindowNeeded) -> None:
        self.needed_after.append(len(self.paints))
        if self.serve:
            offset, limit = self.table.window()
            self.table.load_window(TOTAL, offset, rows(offset, limit, prefix=self.prefix))


def run(scenario: Any) -> None:
    async def main() -> None:
        app = TableApp()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await scenario(app, pilot)

    asyncio.run(main())


def first_row(text: str) -> str:
    return text.splitlines()[1].split()[0]


@pytest.fixture
def slow_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new list that comes late by the test machine's standards still counts as prompt."""
    monkeypatch.setattr(live_table, "HOME_WAIT_S", 30.0)


def test_new_list_is_painted_once_at_the_top_with_its_rows(slow_home: None) -> None:
    async def scenario(app: TableApp, pilot: Any) -> None:
        table = app.table
        table.move_cursor(500)
        await pilot.pause()
        assert first_row(app.text()) == "m-0491"
        painted = len(app.paints)
        table.home()  # a new sort: the screen reads the new list
        table.set_sort("n", True)
        await pilot.pause(0.1)
        assert len(app.paints) == painted, "the old rows were painted at the top"
        assert table.cursor == 0 and table.visible_rows() == (0, 10)
        app.prefix = "new"
        table.load_window(TOTAL, 0, rows(0, 10, prefix="new"))  # what the screen reads first
        await pilot.pause()
        top, text = app.paints[painted]
        assert top == 0
        assert first_row(text) == "new-0000"
        assert "N▼" in text.splitlines()[0]
        # Then the window around it, without a paint of the old rows anywhere.
        await pilot.pause(0.1)
        assert table.viewport_held() and len(table.rows) > 10
        assert all("m-" not in text for _, text in app.paints[painted:])

    run(scenario)


def test_new_list_that_is_late_shows_its_top_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_table, "HOME_WAIT_S", 0.05)

    async def scenario(app: TableApp, pilot: Any) -> None:
        table = app.table
        table.move_cursor(500)
        await pilot.pause()
        table.home()
        await wait_until(pilot, lambda: table.scroll_offset.y == 0, what="the top, unread")
        await pilot.pause()
        # The old window does not hold the top: placeholders until the new list comes.
        assert app.text().splitlines()[1].strip() == "…"
        table.load_window(TOTAL, 0, rows(0, 50, prefix="new"))
        await pilot.pause()
        assert first_row(app.text()) == "new-0000"

    run(scenario)


def test_key_before_the_new_list_comes_moves_from_its_top(slow_home: None) -> None:
    async def scenario(app: TableApp, pilot: Any) -> None:
        table = app.table
        table.move_cursor(500)
        await pilot.pause()
        table.home()
        await pilot.press("down", "down")
        assert table.cursor == 2 and table.scroll_offset.y == 0
        await pilot.press("pagedown")
        assert table.cursor == 12 and table.scroll_offset.y == 10

    run(scenario)


def test_wheel_before_the_new_list_comes_scrolls_from_its_top(slow_home: None) -> None:
    async def scenario(app: TableApp, pilot: Any) -> None:
        table = app.table
        table.move_cursor(500)
        await pilot.pause()
        table.home()
        table.post_message(events.MouseScrollDown(table, 1, 3, 0, 1, 0, False, False, False))
        await pilot.pause()
        assert table.scroll_offset.y == app.scroll_sensitivity_y

    run(scenario)


def test_window_around_held_rows_is_read_after_the_paint() -> None:
    async def scenario(app: TableApp, pilot: Any) -> None:
        table = app.table
        held_end = table.first + len(table.rows)
        for _ in range(3):
            await pilot.press("pagedown")
            await pilot.pause()
        assert table.first + len(table.rows) > held_end, "the window moved on"
        assert app.needed_after, "no window was asked for"
        paints_before = app.needed_after[-1]
        assert paints_before and app.paints[paints_before - 1][0] == 30, \
            "the page was not painted before its window was asked for"

    run(scenario)


def test_rows_off_screen_are_drawn_ahead_so_a_page_paints_few() -> None:
    async def scenario(app: TableApp, pilot: Any) -> None:
        table = app.table
        await pilot.pause(0.1)  # drawn ahead after the first paint
        table.drawn_in_paint = 0
        await pilot.press("pagedown")
        await pilot.pause()
        assert first_row(app.text()) == "m-0010"
        assert table.drawn_in_paint == 1  # the cursor's line; the page's others were ready

    run(scenario)


def test_rows_not_held_are_asked_for_at_once() -> None:
    async def scenario(app: TableApp, pilot: Any) -> None:
        app.serve = False
        painted = len(app.paints)
        await pilot.press("end")
        assert app.needed_after and app.needed_after[0] == painted  # before any paint
        assert not app.table.viewport_held()

    run(scenario)


def test_unchanged_status_line_is_not_repainted(make_app: Any) -> None:
    async def scenario(pilot: Any) -> None:
        app = pilot.app
        screen = app.screen
        await settle(pilot)
        paints: list[int] = []
        original = app._display

        def display(target: Any, renderable: Any) -> None:
            original(target, renderable)
            if renderable is not None:
                paints.append(1)

        app._display = display
        screen.show_status(app.status)
        await pilot.pause(0.1)
        assert not paints
        app.status.at += 1  # the clock moves on: one paint
        screen.show_status(app.status)
        await pilot.pause(0.1)
        assert paints

    drive(make_app(), scenario)


def test_start_up_objects_leave_the_full_collections_while_the_app_runs(
        make_app: Any) -> None:
    """A full garbage collection over the start-up heap held the UI thread for 30-110 ms."""
    async def scenario(pilot: Any) -> None:
        await settle(pilot)
        assert gc.get_freeze_count() > 10_000

    drive(make_app(), scenario)
    assert gc.get_freeze_count() == 0  # collectable again once the app is gone
