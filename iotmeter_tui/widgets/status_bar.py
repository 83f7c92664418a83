"""The top status line (where am I, is ingest alive, are the stores up, what time is it) and
the notice line under the content (what is wrong right now, in one line, never a traceback).

Colours are theme variables ($text-success, $text-error, …), so both read on dark and light
themes."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.widgets import Static

from iotmeter_tui.view.format import clock, rate
from iotmeter_tui.view.health import StatusSnapshot

COLLECTOR_LOOK = {
    "up": ("$text-success", "●"),
    "starting": ("$text-warning", "◌"),
    "no broker": ("$text-error", "●"),
    "down": ("$text-error", "●"),
    "none": ("$text-muted", "-"),
}
STORE_SHORT = {"metadata": "meta", "timeseries": "ts", "archive": "arch"}


def _status_markup(view: str, status: StatusSnapshot) -> Content:
    colour, dot = COLLECTOR_LOOK.get(status.collector, ("$text-muted", "?"))
    parts: list[Content] = [
        Content.from_markup(" [b]iotmeter[/b] » [b $text-accent]$view[/]", view=view),
    ]
    collector = Content.from_markup(f"  collector [{colour}]{dot}[/]")
    if status.collector == "up" and status.rate is not None:
        collector += Content(f" {rate(status.rate)}")
    elif status.collector not in ("up", "none"):
        collector += Content.from_markup(f" [{colour}]$state[/]", state=status.collector)
    parts.append(collector)
    if status.stores:
        stores = Content("  ")
        for light in status.stores:
            look = "$text-success" if light.ok else "$text-error"
            name = STORE_SHORT.get(light.name, light.name)
            stores += Content.from_markup(f"$name[{look}]●[/] ", name=name)
        parts.append(stores)
    if status.sim_devices is not None:
        parts.append(Content(f" sim {status.sim_online}/{status.sim_devices}"))
    return Content("").join(parts)


class StatusBar(Horizontal):
    """One line at the top of every screen."""

    DEFAULT_CSS = """
    StatusBar {
        height: 1;
        dock: top;
        background: $panel;
        color: $foreground;
        & > #status-left { width: 1fr; height: 1; }
        & > #status-clock { width: auto; height: 1; padding: 0 1; color: $text-muted; }
    }
    """

    def __init__(self, view: str) -> None:
        super().__init__()
        self.view = view
        # What the line shows (None: nothing yet), so an unchanged line is not repainted.
        self._shown_left: tuple[str, tuple[object, ...]] | None = None
        self._shown_at: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="status-left", markup=False)
        yield Static(id="status-clock", markup=False)

    def show(self, status: StatusSnapshot, view: str | None = None) -> None:
        if view is not None:
            self.view = view
        # Called on every key that changes a view's state and every second: an unchanged
        # line is not repainted (a paint takes the frame a key's own paint may need), and
        # only a clock of another width changes the layout.
        left = _status_markup(self.view, status)
        at = f"{clock(int(status.at * 1000))} UTC" if status.at else ""
        shown_left = (left.plain, tuple(left.spans))
        if shown_left != self._shown_left:
            self.query_one("#status-left", Static).update(left, layout=False)
            self._shown_left = shown_left
        if at != self._shown_at:
            layout = self._shown_at is None or len(at) != len(self._shown_at)
            self.query_one("#status-clock", Static).update(at, layout=layout)
            self._shown_at = at


class NoticeLine(Static):
    """Errors and warnings in one line each; hidden when all is well."""

    DEFAULT_CSS = """
    NoticeLine {
        height: auto;
        max-height: 3;
        padding: 0 1;
        color: $text-error;
        background: $surface;
        display: none;
        &.-shown { display: block; }
    }
    """

    def __init__(self) -> None:
        super().__init__(markup=False)
        self._shown_lines: tuple[str, ...] = ()

    def show_lines(self, lines: list[str]) -> None:
        unique = tuple(dict.fromkeys(line for line in lines if line))
        if unique == self._shown_lines:
            return  # unchanged: no repaint, no layout change
        self._shown_lines = unique
        self.set_class(bool(unique), "-shown")
        self.update("\n".join(f"✖ {line}" for line in unique[:3]))

    @property
    def lines(self) -> tuple[str, ...]:
        return self._shown_lines
