"""`LiveTable`: a line-API table that renders only the rows on screen.

Textual's DataTable keeps every row (and its renderables) in memory; a fleet of 10,000 meters
that changes every second makes it slow. This widget holds a *window* of rows (whatever the
screen fetched from the store around the viewport) and knows the total, so the scrollbar is
true while only ~3 pages of rows ever exist in memory. Changed rows are repainted line by
line; nothing is cleared and rebuilt, so live updates never flicker.

Textual paints at most once a frame, and the frame after a paint comes one to two frames
(17-33 ms) later. So a key shows its effect in one paint: a new list (sort, filter) keeps the old
view until its first rows arrive rather than painting the old rows at the top first, and the
rows around the viewport are asked for after the paint when the ones on screen are held.

Cells carry a *role* (ok, warn, error, muted, accent) instead of a colour; roles map to
component classes styled with theme variables, so the same table reads on dark and light
themes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.timer import Timer

from iotmeter_tui.backend.terminal import safe_text

ROLES = ("ok", "warn", "error", "muted", "accent")
SEPARATOR = 1  # blank cells between columns
STRIP_CACHE = 2000  # rendered lines kept, the least recently drawn dropped first
HOME_WAIT_S = 0.1  # a new list not read by then: show its top with the old rows meanwhile
DRAW_AHEAD = 16  # held rows drawn off screen per turn of the event loop (a key waits for few)
BAR_FULL = "━"
BAR_EMPTY = "─"


@dataclass(frozen=True, slots=True)
class Column:
    """One column. `priority` 0 is always shown; higher numbers are dropped first when the
    terminal is too narrow. `flex` columns share whatever width is left over."""

    key: str
    title: str
    width: int
    align: str = "left"  # left | right
    priority: int = 0
    flex: bool = False


@dataclass(frozen=True, slots=True)
class Bar:
    """A progress bar cell: `pct` 0..100 (None: unknown)."""

    pct: float | None
    role: str = "accent"


# A cell is plain text, (text, role), or a Bar.
Cell = str | tuple[str, str] | Bar


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    cells: tuple[Cell, ...]
    role: str = ""  # applied to every plain cell of the row (e.g. muted for offline)


@dataclass(slots=True)
class _Layout:
    width: int
    columns: list[tuple[int, int, int]] = field(default_factory=list)  # (index, x, width)


class LiveTable(ScrollView, can_focus=True):
    """A windowed table: `set_rows` for small in-memory lists, `load_window` for pages
    fetched from a store. Posts `WindowNeeded` when the viewport nears the edge of what it
    holds, `Highlighted` when the cursor moves and `Selected` on a double click. Enter is
    left to the screen, which knows what opening a row means (and lists it in the footer)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "up", show=False, id="table.up"),
        Binding("down,j", "cursor(1)", "down", show=False, id="table.down"),
        Binding("pageup,ctrl+b", "page(-1)", "page up", show=False, id="table.page_up"),
        Binding("pagedown,ctrl+f", "page(1)", "page down", show=False, id="table.page_down"),
        Binding("home,g", "first", "top", show=False, id="table.first"),
        Binding("end,G", "last", "bottom", show=False, id="table.last"),
        Binding("space", "mark", "mark", show=False, id="table.mark"),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "live-table--header",
        "live-table--cursor",
        "live-table--cursor-blurred",
        "live-table--marked",
        "live-table--ok",
        "live-table--warn",
        "live-table--error",
        "live-table--muted",
        "live-table--accent",
        "live-table--bar-empty",
    }

    DEFAULT_CSS = """
    LiveTable {
        height: 1fr;
        overflow-x: hidden;
        overflow-y: auto;
        scrollbar-size-vertical: 1;
        background: $surface;
        & > .live-table--header { text-style: bold; color: $text-primary; background: $panel; }
        & > .live-table--cursor {
            background: $block-cursor-background; color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
        & > .live-table--cursor-blurred { background: $block-cursor-blurred-background; }
        & > .live-table--marked { color: $text-accent; text-style: bold; }
        & > .live-table--ok { color: $text-success; }
        & > .live-table--warn { color: $text-warning; }
        & > .live-table--error { color: $text-error; }
        & > .live-table--muted { color: $text-muted; }
        & > .live-table--accent { color: $text-accent; }
        & > .live-table--bar-empty { color: $text-muted; }
    }
    """

    class Highlighted(Message):
        def __init__(self, table: LiveTable, row: Row | None) -> None:
            super().__init__()
            self.table = table
            self.row = row

        @property
        def control(self) -> LiveTable:
            return self.table

    class Selected(Message):
        def __init__(self, table: LiveTable, row: Row) -> None:
            super().__init__()
            self.table = table
            self.row = row

        @property
        def control(self) -> LiveTable:
            return self.table

    class WindowNeeded(Message):
        """The viewport is near (or past) the edge of the rows held: fetch `window()`."""

        def __init__(self, table: LiveTable) -> None:
            super().__init__()
            self.table = table

        @property
        def control(self) -> LiveTable:
            return self.table

    def __init__(
        self,
        columns: Sequence[Column],
        *,
        empty_text: str = "nothing to show",
        markable: bool = False,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.columns = list(columns)
        self.empty_text = empty_text
        self.markable = markable
        self.total = 0
        self.first = 0  # index of rows[0] in the whole list
        self.rows: list[Row] = []
        self.cursor = 0
        self.marked: set[str] = set()
        self.sort_key: str | None = None
        self.descending = False
        self.loaded = False  # False until the first load: the empty text says "loading"
        self._column_layout = _Layout(0)
        self._window_requested = False
        self._window_after_paint = False  # a WindowNeeded waits for the paint under way
        self._home_pending = False  # home(): the view goes to the top with the new rows
        self._home_timer: Timer | None = None
        self._paint: tuple[Style, int] | None = None  # (base style, width) of this paint
        self._drawing_ahead = False
        self._last_highlight: str | None = None
        self._strips: LRUCache[tuple[object, ...], Strip] = LRUCache(STRIP_CACHE)

    # --- data in ----------------------------------------------------------------------------

    def set_rows(self, rows: Iterable[Row]) -> None:
        """Replace the whole list (small tables: alerts, commands, targets)."""
        rows = list(rows)
        self.load_window(len(rows), 0, rows)

    def load_window(self, total: int, offset: int, rows: Sequence[Row]) -> None:
        """Rows [offset, offset + len(rows)) of a list of `total`. Repaints only rows whose
        content changed, unless the total (and so the scroll range) changed."""
        old_total, old_offset, old_rows = self.total, self.first, self.rows
        was_loaded = self.loaded
        self.total, self.first, self.rows = max(0, total), max(0, offset), list(rows)
        self.loaded = True
        self._window_requested = self._window_after_paint = False
        if self.cursor >= self.total:
            self.cursor = max(0, self.total - 1)
        going_home = self._home_pending
        if going_home:
            self._end_home()
        if old_total != self.total or not was_loaded:
            self._update_virtual_size()
        if old_total != self.total or not was_loaded or going_home:
            self.refresh()
        else:
            top = self._top()
            for index in range(top, min(self.total, top + self._body_height())):
                if _row_at(old_rows, old_offset, index) != self.row_at(index):
                    self.refresh_line(index + 1)
        self._announce_highlight()
        self._check_window()
        self._draw_ahead_soon()

    def visible_rows(self) -> tuple[int, int]:
        """(offset, limit) of the rows on screen."""
        return self._top(), self._body_height()

    def window(self) -> tuple[int, int]:
        """(offset, limit) worth fetching: the visible page and two pages either side, so
        page up/down land on rows already held while the next window is read."""
        page = max(10, self._body_height())
        start = max(0, self._top() - 2 * page)
        return start, page * 5

    def viewport_held(self) -> bool:
        """Every row on screen is held (nothing drawn as a placeholder)."""
        top = self._top()
        end = min(self.total, top + self._body_height())
        return self.loaded and all(self.row_at(i) is not None for i in range(top, end))

    def row_at(self, index: int) -> Row | None:
        return _row_at(self.rows, self.first, index)

    @property
    def cursor_row(self) -> Row | None:
        return self.row_at(self.cursor)

    def selection(self) -> list[str]:
        """Marked row keys (in held order), or the cursor's key when none are marked."""
        if self.marked:
            return sorted(self.marked)
        row = self.cursor_row
        return [row.key] if row else []

    def set_sort(self, key: str | None, descending: bool) -> None:
        self.sort_key, self.descending = key, descending
        if self.is_mounted and not self._home_pending:  # pending: painted with the rows
            self.refresh(Region(0, 0, self.size.width, 1))  # the header, whatever the scroll

    # --- cursor and scrolling -----------------------------------------------------------------

    def move_cursor(self, index: int) -> None:
        self._show_home()  # a key on a list not read yet moves from its top, as it shows
        if self.total == 0:
            return
        index = max(0, min(self.total - 1, index))
        if index == self.cursor:
            return
        old, self.cursor = self.cursor, index
        top, height = self._top(), self._body_height()
        if index < top:
            self.scroll_to(y=index, animate=False, immediate=True)
        elif index >= top + height:
            self.scroll_to(y=index - height + 1, animate=False, immediate=True)
        else:
            self.refresh_line(old + 1)
            self.refresh_line(index + 1)
        self._announce_highlight()
        self._check_window()

    def home(self) -> None:
        """Cursor and view back to the first row without asking for rows: the caller is
        about to read a new list (load_window asks again if need be). The view moves to the
        top in the paint that shows the new list's rows (or after HOME_WAIT_S, or at the next
        key, whichever comes first): painting the old rows at the top first would take the
        frame the new rows need."""
        self._window_requested = True
        self.cursor = 0
        if self.is_mounted:
            self._home_pending = True
            if self._home_timer is not None:
                self._home_timer.stop()
            self._home_timer = self.set_timer(HOME_WAIT_S, self._show_home)
        self._announce_highlight()

    def _show_home(self) -> None:
        """The pending move to the top, now (the new list is late, or a key came)."""
        if self._home_pending:
            self._end_home()
            self.refresh()

    def _end_home(self) -> None:
        self._home_pending = False
        if self._home_timer is not None:
            self._home_timer.stop()
            self._home_timer = None
        self.scroll_to(y=0, animate=False, immediate=True)

    def action_cursor(self, delta: int) -> None:
        self.move_cursor(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self._show_home()
        height = self._body_height()
        target_top = max(0, min(self.total - height, self._top() + direction * height))
        self.scroll_to(y=target_top, animate=False, immediate=True)
        self.move_cursor(self.cursor + direction * height)
        self._check_window()

    def action_first(self) -> None:
        self.move_cursor(0)

    def action_last(self) -> None:
        self.move_cursor(self.total - 1)

    def action_mark(self) -> None:
        row = self.cursor_row
        if not self.markable or row is None:
            return
        self.marked.symmetric_difference_update({row.key})
        self.refresh_line(self.cursor + 1)
        self.move_cursor(self.cursor + 1)

    def action_select(self) -> None:
        row = self.cursor_row
        if row is not None:
            self.post_message(self.Selected(self, row))

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:
            self.move_cursor(self._top() + event.y - 1)
            if event.chain == 2:
                self.action_select()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        if self._home_pending:
            # Scrolled (the mouse wheel) before the new list came: from its top, as shown.
            self._end_home()
            self.scroll_to(y=max(0.0, new_value - old_value), animate=False, immediate=True)
            self.refresh()
            return
        super().watch_scroll_y(old_value, new_value)
        self._check_window()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()  # a new theme: every cached line has old colours

    def on_resize(self, event: events.Resize) -> None:
        self._update_virtual_size()
        self._check_window()

    def on_focus(self) -> None:
        self.refresh_line(self.cursor + 1)

    def on_blur(self) -> None:
        self.refresh_line(self.cursor + 1)

    def _top(self) -> int:
        return 0 if self._home_pending else int(self.scroll_offset.y)

    def _body_height(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _update_virtual_size(self) -> None:
        self.virtual_size = Size(self.scrollable_content_region.width, self.total + 1)

    def _check_window(self) -> None:
        """Ask for rows when the visible range (and a page and a half either side) is not
        all held."""
        if self._window_requested or not self.loaded or self.total == 0:
            return
        # Asked for well before the edge: a page key lands on held rows while the window
        # around it is read.
        top, height = self._top(), self._body_height()
        want_start = max(0, top - height - height // 2)
        want_end = min(self.total, top + 2 * height + height // 2)
        held_end = self.first + len(self.rows)
        if want_start < self.first or want_end > held_end:
            self._window_requested = True
            if self.viewport_held():
                # The rows on screen are here: paint them first. The read's rows are built
                # on this thread, and its reply landing before the paint would delay it.
                self._window_after_paint = True
                self.call_after_refresh(self._ask_window)
            else:
                self.post_message(self.WindowNeeded(self))

    def _ask_window(self) -> None:
        if self._window_after_paint:  # not answered meanwhile (a refresh's read)
            self._window_after_paint = False
            self.post_message(self.WindowNeeded(self))

    def _announce_highlight(self) -> None:
        row = self.cursor_row
        key = row.key if row else None
        if key != self._last_highlight:
            self._last_highlight = key
            self.post_message(self.Highlighted(self, row))

    # --- rendering ------------------------------------------------------------------------

    def _draw_ahead_soon(self) -> None:
        if not self._drawing_ahead and self.is_mounted:
            self._drawing_ahead = True
            self.call_after_refresh(self._draw_ahead)

    def _draw_ahead(self) -> None:
        """Draw held rows that are off screen into the line cache, nearest the viewport
        first, a few per turn after the paint: a page key then paints rows drawn already
        (drawing its new rows was a third of a page key's paint)."""
        self._drawing_ahead = False
        if not self.is_mounted or not self.rows:
            return
        base, width = self.rich_style, self.scrollable_content_region.width
        top, height = self._top(), self._body_height()

        def distance(index: int) -> int:
            return index - top - height if index >= top + height else top - index

        drawn = 0
        for index in sorted(range(self.first, self.first + len(self.rows)), key=distance):
            row = self.rows[index - self.first]
            key = self._strip_key(row, index, width)
            if index == self.cursor or top <= index < top + height or key in self._strips:
                continue  # the cursor's line and the screen's are drawn by the paint
            if drawn == DRAW_AHEAD:
                self._draw_ahead_soon()
                return
            self._strips[key] = self._render_row(row, index, width, base)
            drawn += 1

    def _strip_key(self, row: Row, index: int, width: int) -> tuple[object, ...]:
        return (row, index == self.cursor, self.has_focus, row.key in self.marked, width)

    def _columns_for(self, width: int) -> list[tuple[int, int, int]]:
        if self._column_layout.width == width and self._column_layout.columns:
            return self._column_layout.columns
        shown = list(range(len(self.columns)))

        def needed(indices: list[int]) -> int:
            return sum(self.columns[i].width for i in indices) + SEPARATOR * len(indices)

        # Drop the least important columns until the rest fit.
        while needed(shown) > width + SEPARATOR:
            droppable = [i for i in shown if self.columns[i].priority > 0]
            if not droppable:
                break
            shown.remove(max(droppable, key=lambda i: (self.columns[i].priority, i)))
        # Flex columns share what is left over; the first takes the remainder.
        spare = max(0, width + SEPARATOR - needed(shown))
        flex = [i for i in shown if self.columns[i].flex]
        share, extra = divmod(spare, len(flex)) if flex else (0, 0)
        layout, x = [], 0
        for i in shown:
            w = self.columns[i].width
            if flex and i in flex:
                w += share + (extra if i == flex[0] else 0)
            layout.append((i, x, w))
            x += w + SEPARATOR
        self._column_layout = _Layout(width, layout)
        return layout

    def render_lines(self, crop: Region) -> list[Strip]:
        # The same base style and width for every line of a paint: found once, not per line
        # (rich_style walks the styles of every ancestor; it was a fifth of a scroll's paint).
        self._paint = (self.rich_style, self.scrollable_content_region.width)
        try:
            return super().render_lines(crop)
        finally:
            self._paint = None

    def render_line(self, y: int) -> Strip:
        base, width = self._paint or (self.rich_style, self.scrollable_content_region.width)
        if y == 0:
            return self._render_header(width, base)
        index = self._top() + y - 1
        if index >= self.total:
            if index == 0 and self.total == 0:
                text = self.empty_text if self.loaded else "loading…"
                style = base + self.get_component_rich_style("live-table--muted")
                return Strip([Segment(f" {text}"[:width].ljust(width), style)], width)
            return Strip.blank(width, base)
        row = self.row_at(index)
        if row is None:
            style = base + self.get_component_rich_style("live-table--muted")
            return Strip([Segment(" …".ljust(width), style)], width)
        # Scrolling repaints every line, and a refresh brings mostly unchanged rows: a row
        # drawn before is drawn from the cache.
        key = self._strip_key(row, index, width)
        strip = self._strips.get(key)
        if strip is None:
            strip = self._strips[key] = self._render_row(row, index, width, base)
        return strip

    def _render_header(self, width: int, base: Style) -> Strip:
        style = base + self.get_component_rich_style("live-table--header")
        segments: list[Segment] = []
        for i, _x, w in self._columns_for(width):
            column = self.columns[i]
            title = column.title
            if column.key == self.sort_key:
                title = f"{title}{'▼' if self.descending else '▲'}"
            segments.append(Segment(_fit(title, w, column.align) + " " * SEPARATOR, style))
        return Strip(segments).adjust_cell_length(width, style)

    def _role_style(self, role: str) -> Style:
        if role in ROLES:
            return self.get_component_rich_style(f"live-table--{role}")
        return Style()

    def _render_row(self, row: Row, index: int, width: int, base: Style) -> Strip:
        row_style = base + self._role_style(row.role)
        marked = row.key in self.marked
        if marked:
            row_style += self.get_component_rich_style("live-table--marked")
        overlay: Style | None = None
        if index == self.cursor:
            overlay = self.get_component_rich_style(
                "live-table--cursor" if self.has_focus else "live-table--cursor-blurred"
            )
        segments: list[Segment] = []
        for i, _x, w in self._columns_for(width):
            column = self.columns[i]
            cell = row.cells[i] if i < len(row.cells) else ""
            if isinstance(cell, Bar):
                segments.extend(self._render_bar(cell, w, row_style))
            else:
                text, role = (cell, "") if isinstance(cell, str) else cell
                if marked and i == 0:
                    text = f"*{text}"
                style = row_style + self._role_style(role) if role else row_style
                segments.append(Segment(_fit(text, w, column.align), style))
            segments.append(Segment(" " * SEPARATOR, row_style))
        if overlay is not None:
            # The cursor's colours win over the cells' own (post_style), as in k9s.
            segments = list(Segment.apply_style(segments, post_style=overlay))
            row_style += overlay
        # Fewer, longer segments: every later stage (compositor, terminal output) works per
        # segment, and plain cells share the row's style with their separators.
        return Strip(segments).adjust_cell_length(width, row_style).simplify()

    def _render_bar(self, bar: Bar, width: int, row_style: Style) -> list[Segment]:
        label = "  ?%" if bar.pct is None else f"{bar.pct:4.0f}%"
        bar_width = max(0, width - len(label) - 1)
        pct = 0.0 if bar.pct is None else max(0.0, min(100.0, bar.pct))
        filled = round(bar_width * pct / 100)
        return [
            Segment(BAR_FULL * filled, row_style + self._role_style(bar.role)),
            Segment(BAR_EMPTY * (bar_width - filled),
                    row_style + self.get_component_rich_style("live-table--bar-empty")),
            Segment(" " + label, row_style),
        ]


def _row_at(rows: Sequence[Row], offset: int, index: int) -> Row | None:
    position = index - offset
    if 0 <= position < len(rows):
        return rows[position]
    return None


def _fit(text: str, width: int, align: str) -> str:
    """`text` truncated with an ellipsis or padded to exactly `width` cells; a device's
    control characters never reach the terminal."""
    text = safe_text(text)
    cells = cell_len(text)
    if cells > width:
        return _truncate(text, width)
    pad = " " * (width - cells)
    return pad + text if align == "right" else text + pad


def _truncate(text: str, width: int) -> str:
    if width <= 0:
        return ""
    out = Text(text)
    out.truncate(width, overflow="ellipsis", pad=True)
    return out.plain
