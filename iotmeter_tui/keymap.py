"""Remappable keys: every binding of the dashboard has an id (`app.quit`, `fleet.sort`, …) and
`IOTMETER_KEYMAP` (or a `[keymap]` table in the config file) maps ids to other keys, which
Textual applies (`App.set_keymap`). This module lists the ids there are, says which keymap
entries name none, and tells the help screen which keys are in force."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from textual.binding import Binding, BindingType


def known_bindings(owners: Iterable[type]) -> dict[str, Binding]:
    """Binding id -> binding, over the BINDINGS of `owners` (app, screens, widgets)."""
    found: dict[str, Binding] = {}
    for owner in owners:
        for binding in getattr(owner, "BINDINGS", []):
            if isinstance(binding, Binding) and binding.id:
                found.setdefault(binding.id, binding)
    return found


def keymap_problems(keymap: Mapping[str, str], known: Mapping[str, Binding]) -> list[str]:
    """One line per keymap entry that names no binding."""
    return [f"IOTMETER_KEYMAP: no binding {binding_id!r} (ids in docs/dashboard.md)"
            for binding_id in keymap if binding_id not in known]


def keys_in_force(binding: BindingType, keymap: Mapping[str, str]) -> str:
    """The binding's keys as the operator types them: remapped ones as remapped."""
    if not isinstance(binding, Binding):
        return ""
    keys = keymap.get(binding.id or "", binding.key)
    return ",".join(KEY_SHOWN.get(k.strip(), k.strip()) for k in keys.split(","))


KEY_SHOWN = {"colon": ":", "slash": "/", "question_mark": "?", "space": "space"}
