"""docs/simulator.md keeps up with the code: every flag, fault, command and system is there."""

from __future__ import annotations

from pathlib import Path

from iotmeter_tui.backend.simulator.cli import build_parser
from iotmeter_tui.backend.simulator.faults import PROBABILITIES
from iotmeter_tui.backend.simulator.physics import FEEDERS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "simulator.md").read_text()


def test_every_flag_is_documented() -> None:
    flags = [option for action in build_parser()._actions for option in action.option_strings
             if option.startswith("--") and option != "--help"]
    missing = [flag for flag in flags if f"`{flag}" not in DOC]
    assert not missing


def test_every_fault_command_and_system_is_documented() -> None:
    for name in (*PROBABILITIES, "clock_skew"):
        assert f"`{name}=" in DOC, name
    for command in ("ping", "set_interval", "set_config", "reboot"):
        assert f"`{command}`" in DOC, command
    for key in FEEDERS:
        assert f"`{key}`" in DOC, key
