"""The collector worker is spawned from inside a Textual app, whose sys.stderr is a capture
with no file descriptor. Starting multiprocessing's resource tracker beforehand is the one
workaround: no one swaps the global sys.stderr while a child starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import io, multiprocessing as mp, sys
from iotmeter_tui.backend.collector.worker import start_resource_tracker

class Captured(io.StringIO):  # what Textual puts in sys.stderr while it runs
    def fileno(self):
        return -1

def spawn():
    process = mp.get_context("spawn").Process(target=print, args=("child ran",))
    process.start()
    process.join(60)
    return process.exitcode

if sys.argv[1] == "prepared":
    start_resource_tracker()
sys.stderr = Captured()
try:
    print("exit", spawn())
except ValueError as exc:
    print("refused", exc)
"""


def _run(mode: str) -> str:
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                          timeout=120, check=True).stdout


def test_a_spawn_under_a_captured_stderr_fails_without_the_tracker_started() -> None:
    # The failure the workaround exists for; if multiprocessing stops needing it, this says so.
    assert "refused bad value(s) in fds_to_keep" in _run("bare")


def test_starting_the_tracker_first_lets_the_worker_spawn() -> None:
    out = _run("prepared")
    assert "child ran" in out and "exit 0" in out


def test_nothing_swaps_the_global_stderr() -> None:
    package = Path(__file__).resolve().parents[2] / "iotmeter_tui"
    offenders = [str(p) for p in package.rglob("*.py")
                 if "sys.stderr =" in p.read_text() or "sys.stdout =" in p.read_text()]
    assert offenders == []
