"""`FormDialog`: the one modal form every action uses (send a command, upload firmware and
start a campaign, add simulated devices, set a rate or faults). Fields are declared as data;
`parse` turns the texts into the caller's request or raises ValueError, whose message stays
in the dialog so the operator can correct it. Keyboard only: tab between fields, enter to
submit, escape to cancel."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Field:
    key: str
    label: str
    value: str = ""
    choices: Sequence[tuple[str, str]] = ()  # (label, value): a Select instead of an Input
    placeholder: str = ""


class FormDialog(ModalScreen[R | None], Generic[R]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "cancel", id="dialog.cancel"),
        Binding("ctrl+s", "submit", "submit", id="dialog.submit"),
    ]

    DEFAULT_CSS = """
    FormDialog {
        align: center middle;
        background: $background 60%;
    }
    FormDialog > #dialog {
        width: 76;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: round $primary;
        background: $surface;
        padding: 0 1;
    }
    FormDialog #dialog-title { text-style: bold; color: $text-primary; width: 1fr; }
    FormDialog #dialog-fields {
        grid-size: 2;
        grid-columns: 16 1fr;
        grid-rows: 1;
        grid-gutter: 0 1;
        height: auto;
    }
    FormDialog #dialog-fields > Label { height: 1; padding: 0; color: $text-muted; }
    FormDialog #dialog-fields > Input { height: 1; border: none; padding: 0 1; }
    FormDialog #dialog-fields > Select { height: 1; }
    FormDialog #dialog-error { color: $text-error; height: auto; }
    FormDialog #dialog-note { color: $text-muted; height: auto; }
    FormDialog #dialog-buttons { height: 1; align-horizontal: right; }
    FormDialog #dialog-buttons > Button { min-width: 10; height: 1; border: none; margin: 0 0 0 1; }
    """

    def __init__(
        self,
        title: str,
        fields: Sequence[Field],
        parse: Callable[[dict[str, str]], R],
        *,
        submit_label: str = "OK",
        note: str = "",
    ) -> None:
        super().__init__()
        self.title_text = title
        self.fields = list(fields)
        self.parse = parse
        self.submit_label = submit_label
        self.note = note

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            with Grid(id="dialog-fields"):
                for field in self.fields:
                    yield Label(field.label)
                    if field.choices:
                        yield Select(
                            [(label, value) for label, value in field.choices],
                            value=field.value or field.choices[0][1],
                            allow_blank=False,
                            id=f"field-{field.key}",
                            compact=True,
                        )
                    else:
                        yield Input(field.value, placeholder=field.placeholder,
                                    id=f"field-{field.key}", compact=True)
            if self.note:
                yield Static(self.note, id="dialog-note", markup=False)
            yield Static("", id="dialog-error", markup=False)
            with Horizontal(id="dialog-buttons"):
                yield Button(self.submit_label, variant="primary", id="dialog-ok",
                             compact=True)
                yield Button("Cancel", id="dialog-cancel", compact=True)

    def on_mount(self) -> None:
        first = self.query("#dialog-fields > *").exclude("Label").first()
        first.focus()

    def values(self) -> dict[str, str]:
        result: dict[str, str] = {}
        for field in self.fields:
            widget = self.query_one(f"#field-{field.key}")
            if isinstance(widget, Select):
                result[field.key] = "" if widget.is_blank() else str(widget.value)
            elif isinstance(widget, Input):
                result[field.key] = widget.value
        return result

    def set_value(self, key: str, value: str) -> None:
        widget = self.query_one(f"#field-{key}")
        if isinstance(widget, (Select, Input)):
            widget.value = value

    def action_submit(self) -> None:
        try:
            result = self.parse(self.values())
        except ValueError as exc:
            self.query_one("#dialog-error", Static).update(str(exc))
            return
        self.dismiss(result)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "dialog-ok":
            self.action_submit()
        else:
            self.action_cancel()


def parse_number(text: str, what: str, *, kind: type = float, minimum: float | None = None,
                 maximum: float | None = None) -> Any:
    """A number from a form field, or ValueError naming the field."""
    try:
        value = kind(text.strip())
    except ValueError:
        raise ValueError(f"{what}: {text.strip()!r} is not a {kind.__name__}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be at least {minimum:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{what} must be at most {maximum:g}")
    return value


def parse_ids(text: str) -> list[str]:
    """Device ids separated by commas or spaces."""
    return [part for part in text.replace(",", " ").split() if part]
