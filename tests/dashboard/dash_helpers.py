"""Pilot helpers for the dashboard tests: wait for a screen's reads to land, read the screen
back as text."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from textual.pilot import Pilot

from iotmeter_tui.app import IotmeterApp
from iotmeter_tui.screens.base import DashboardScreen


def screen_text(app: Any) -> str:
    """The whole terminal as plain text, one line per row."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(segment.text for segment in strip) for strip in strips)


def flat_text(app: Any) -> str:
    """The terminal's words in one line: text that wraps still matches."""
    return " ".join(screen_text(app).split())


def toasts(app: Any) -> list[str]:
    """Messages of the notifications shown so far."""
    return [str(n.message) for n in app._notifications]


async def settle(pilot: Pilot[Any], timeout_s: float = 10.0) -> None:
    """Until the current screen has loaded at least once with nothing in flight, the app's
    first status poll and store probe are done, and the screen has repainted."""
    app = pilot.app
    assert isinstance(app, IotmeterApp)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await pilot.pause(0.01)
        screen = app.screen
        busy = isinstance(screen, DashboardScreen) and (screen.loads == 0 or screen._loading)
        if not busy and app._ticks >= 1 and not app._probing and not app._polling:
            break
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


async def reload_and_settle(pilot: Pilot[Any]) -> None:
    """Read the current screen's data again (tests run with a long refresh interval)."""
    screen = pilot.app.screen
    if isinstance(screen, DashboardScreen):
        before = screen.loads
        screen.reload()
        await wait_until(pilot, lambda: screen.loads > before and not screen._loading)
    await settle(pilot)


async def wait_until(pilot: Pilot[Any], predicate: Callable[[], Any], timeout_s: float = 10.0,
                     what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def press(pilot: Pilot[Any], *keys: str) -> None:
    """Press keys, then let the reads they started finish."""
    await pilot.press(*keys)
    await settle(pilot)


def drive(app: IotmeterApp, scenario: Callable[[Pilot[Any]], Any],
          size: tuple[int, int] = (120, 40)) -> None:
    """Run `scenario(pilot)` against the app, headless, after its first load."""

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            await scenario(pilot)

    asyncio.run(main())
