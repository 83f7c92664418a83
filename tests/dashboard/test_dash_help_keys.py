"""The help screen and the `:` prompt read their words from one place each, so they cannot
drift from what the keys and the prompt do. Pure: no app is run."""

from __future__ import annotations

from textual.binding import Binding

from iotmeter_tui.app import SCREENS_BY_NAME, IotmeterApp
from iotmeter_tui.screens.help import _describe
from iotmeter_tui.view.jump import ARGUMENTS, JUMP_WORDS, completions, described

GLOBAL = [b for b in IotmeterApp.BINDINGS if isinstance(b, Binding)]


def test_help_lists_every_global_key_with_its_longer_text() -> None:
    rows = _describe(IotmeterApp.BINDINGS, {})
    assert [text for _, text in rows] == [b.tooltip for b in GLOBAL]
    assert all(b.id and b.tooltip for b in GLOBAL)  # remappable, and explained in help
    assert ("ctrl+c,ctrl+q", "quit, even from a dialog") in rows


def test_help_shows_remapped_keys() -> None:
    rows = dict(_describe(IotmeterApp.BINDINGS, {"app.help": "f1"}))
    assert rows["f1"] == "this help"


def test_the_prompt_the_jump_and_help_share_one_word_list() -> None:
    assert [word.strip() for word in completions()] == list(JUMP_WORDS)
    assert "device " in completions()  # completion leaves room for the id
    jump_help = next(b.tooltip for b in GLOBAL if b.id == "app.jump_prompt")
    assert jump_help == f"jump to a view: {described()}"
    assert all(word in jump_help for word in JUMP_WORDS)
    # Every word is something IotmeterApp.jump acts on.
    handled = set(SCREENS_BY_NAME) | {"help", "quit"} | set(ARGUMENTS)
    assert set(JUMP_WORDS) <= handled
