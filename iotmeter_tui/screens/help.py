"""Help (`?`): every key of the view underneath, hidden ones included, and the global ones.
Built from the bindings themselves, so it cannot drift from what the keys do."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from iotmeter_tui.widgets.live_table import LiveTable

GLOBAL_KEYS = (
    (":", "jump to a view: fleet, device ID, alerts, commands, ota, simulator, system, quit"),
    ("/", "filter the list (as you type; escape clears)"),
    ("?", "this help"),
    ("q", "quit and stop everything the dashboard started"),
    ("ctrl+t", "next colour theme (dark, light, the terminal's own)"),
)


def _describe(bindings: Iterable[BindingType]) -> list[tuple[str, str]]:
    rows = []
    for binding in bindings:
        if not isinstance(binding, Binding):
            continue
        keys = ",".join(k.replace("colon", ":").replace("slash", "/")
                        .replace("question_mark", "?") for k in binding.key.split(","))
        rows.append((keys, binding.description or binding.action))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; background: $background 60%; }
    HelpScreen > VerticalScroll {
        width: 72; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    """

    def __init__(self, under: Screen[object]) -> None:
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        sections = [("this view", _describe(getattr(type(self.under), "BINDINGS", []))),
                    ("lists", _describe(LiveTable.BINDINGS)),
                    ("everywhere", list(GLOBAL_KEYS))]
        lines = []
        for title, rows in sections:
            lines.append(f"[b $text-primary]{title}[/]")
            for keys, text in rows:
                lines.append(f"  [b $text-accent]{keys:<16}[/] {text}")
        with VerticalScroll():
            yield Static("\n".join(lines))

    def action_close(self) -> None:
        self.dismiss(None)
