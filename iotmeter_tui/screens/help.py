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

# (binding id, what it does); "/" is each list's own filter binding.
GLOBAL_KEYS = (
    ("app.jump_prompt", "jump to a view: fleet, device ID, alerts, commands, ota, simulator, "
                        "system, quit"),
    ("", "filter the list (as you type; escape clears)"),
    ("app.help", "this help"),
    ("app.quit", "quit and stop everything the dashboard started"),
    ("app.next_theme", "next colour theme (dark, light, the terminal's own)"),
    ("app.export", "export this view to CSV under $IOTMETER_HOME/exports (path shown)"),
)


def _describe(bindings: Iterable[BindingType], keymap: Mapping[str, str]) -> list[tuple[str, str]]:
    rows = []
    for binding in bindings:
        if not isinstance(binding, Binding):
            continue
        rows.append((keys_in_force(binding, keymap), binding.description or binding.action))
    return rows


def _global_keys(keymap: Mapping[str, str]) -> list[tuple[str, str]]:
    from iotmeter_tui.app import IotmeterApp

    by_id = {b.id: b for b in IotmeterApp.BINDINGS if isinstance(b, Binding)}
    return [(keys_in_force(by_id[binding_id], keymap) if binding_id else "/", text)
            for binding_id, text in GLOBAL_KEYS]


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
                    ("everywhere", _global_keys(keymap))]
        lines = []
        for title, rows in sections:
            lines.append(f"[b $text-primary]{title}[/]")
            for keys, text in rows:
                lines.append(f"  [b $text-accent]{keys:<16}[/] {text}")
        with VerticalScroll():
            yield Static("\n".join(lines))

    def action_close(self) -> None:
        self.dismiss(None)
