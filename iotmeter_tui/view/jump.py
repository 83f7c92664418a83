"""The words the `:` prompt understands: one list for the jump itself (`IotmeterApp.jump`),
the prompt's completion and the help screen."""

from __future__ import annotations

from typing import Final

JUMP_WORDS: Final = ("fleet", "device", "alerts", "commands", "ota", "simulator", "system",
                     "rejected", "help", "quit")
# Words followed by an argument: completion adds the space, help names the argument.
ARGUMENTS: Final = {"device": "ID"}


def completions() -> tuple[str, ...]:
    """What the prompt completes to: `device ` with its space, so the id can follow."""
    return tuple(f"{word} " if word in ARGUMENTS else word for word in JUMP_WORDS)


def described() -> str:
    """The words as help lists them: `fleet, device ID, alerts, …`."""
    return ", ".join(f"{word} {ARGUMENTS[word]}" if word in ARGUMENTS else word
                     for word in JUMP_WORDS)
