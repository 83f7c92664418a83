"""Help (`?`): every key of the view underneath, hidden ones included, and the global ones.
Built from the bindings themselves, so it cannot drift from what the keys do."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from iotmeter_tui.keymap import keys_in_force
from iotmeter_tui.widgets.live_table import LiveTable


def _describe(bindings: Iterable[BindingType], keymap: Mapping[str, str]) -> list[tuple[str, str]]:
    # A binding's tooltip is its longer text where it has one (the app's global keys do).
    rows = []
    for binding in bindings:
        if not isinstance(binding, Binding):
            continue
        text = binding.tooltip or binding.description or binding.action
        rows.append((keys_in_force(binding, keymap), text))
    return rows


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "close", id="help.close"),
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
        keymap = self.app._keymap  # the keys in force, remapped ones included
        sections = [("this view", _describe(getattr(type(self.under), "BINDINGS", []), keymap)),
                    ("lists", _describe(LiveTable.BINDINGS, keymap)),
                    ("everywhere", _describe(type(self.app).BINDINGS, keymap))]
        lines = []
        for title, rows in sections:
            lines.append(f"[b $text-primary]{title}[/]")
            for keys, text in rows:
                lines.append(f"  [b $text-accent]{keys:<16}[/] {text}")
        with VerticalScroll():
            yield Static("\n".join(lines))

    def action_close(self) -> None:
        self.dismiss(None)
