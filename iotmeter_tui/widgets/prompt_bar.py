"""The k9s-style prompt at the bottom of a screen: `:` to jump to a view, `/` to filter.

One widget for both: a prefix label and an input. `/` filters as you type (the screen
debounces); enter keeps the text, escape closes (and, for a filter, clears it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import Input, Label


class PromptInput(Input):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "cancel", show=False, id="prompt.cancel"),
    ]

    def action_cancel(self) -> None:
        bar = self.parent
        if isinstance(bar, PromptBar):
            bar.cancel()


class PromptBar(Horizontal):
    DEFAULT_CSS = """
    PromptBar {
        height: 1;
        display: none;
        background: $panel;
        &.-open { display: block; }
        & > Label { width: auto; padding: 0 0 0 1; color: $text-accent; text-style: bold; }
        & > PromptInput {
            width: 1fr; height: 1; border: none; padding: 0 1; background: $panel;
        }
        & > #prompt-hint { width: auto; color: $text-error; padding: 0 1; }
    }
    """

    class Submitted(Message):
        def __init__(self, kind: str, value: str) -> None:
            super().__init__()
            self.kind = kind
            self.value = value

    class Changed(Message):
        def __init__(self, kind: str, value: str) -> None:
            super().__init__()
            self.kind = kind
            self.value = value

    class Cancelled(Message):
        def __init__(self, kind: str) -> None:
            super().__init__()
            self.kind = kind

    def __init__(self, jump_words: Sequence[str] = ()) -> None:
        super().__init__()
        self.kind = ":"
        self._jump_words = list(jump_words)

    def compose(self) -> ComposeResult:
        yield Label(":", id="prompt-kind")
        yield PromptInput(id="prompt-input", compact=True)
        yield Label("", id="prompt-hint")

    @property
    def is_open(self) -> bool:
        return self.has_class("-open")

    def open(self, kind: str, value: str = "") -> None:
        self.kind = kind
        self.query_one("#prompt-kind", Label).update(kind)
        self.hint("")
        field = self.query_one(PromptInput)
        field.suggester = (
            SuggestFromList(self._jump_words, case_sensitive=False) if kind == ":" else None
        )
        field.value = value
        field.cursor_position = len(value)
        self.add_class("-open")
        field.focus()

    def hint(self, text: str) -> None:
        self.query_one("#prompt-hint", Label).update(text)

    def close(self) -> None:
        self.remove_class("-open")

    def cancel(self) -> None:
        self.close()
        self.post_message(self.Cancelled(self.kind))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.hint("")
        self.post_message(self.Changed(self.kind, event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Submitted(self.kind, event.value))
