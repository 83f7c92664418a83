"""Snapshots of every view at 80x24 and 120x40 (and the dialogs, help and the store-down line
at 80x24) from the deterministic dataset with a frozen clock.

Regenerate after an intended change with `pytest tests/dashboard --snapshot-update`, look at
the report (snapshot_report.html) and commit tests/dashboard/__snapshots__/."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from dash_dataset import DownStore, FakeRuntime
from dash_helpers import settle, wait_until
from textual.widgets import Input

from iotmeter_tui.backend.stores import Stores

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]
VIEWS = ["fleet", "alerts", "commands", "ota", "simulator", "system"]


def ready(then: Callable[[Any], Awaitable[None]] | None = None) -> Callable[[Any], Any]:
    """run_before for snap_compare: wait for the view's data, do `then`, wait again, and
    stop input cursors blinking so the picture is the same every time."""

    async def run_before(pilot: Any) -> None:
        await settle(pilot)
        if then is not None:
            await then(pilot)
            await settle(pilot)
        for field in pilot.app.screen.query(Input):
            field.cursor_blink = False
        await settle(pilot)

    return run_before


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("view", VIEWS)
def test_view_snapshot(snap_compare: Any, make_app: Any, view: str,
                       size: tuple[int, int]) -> None:
    assert snap_compare(make_app(view), terminal_size=size, run_before=ready())


@pytest.mark.parametrize("size", SIZES)
def test_device_snapshot(snap_compare: Any, make_app: Any, size: tuple[int, int]) -> None:
    async def open_device(pilot: Any) -> None:
        pilot.app.open_device("dc-0001")
        await wait_until(pilot, lambda: getattr(pilot.app.screen, "loads", 0) >= 1,
                         what="device loaded")

    assert snap_compare(make_app(), terminal_size=size, run_before=ready(open_device))


def test_fleet_marked_filtered_sorted_snapshot(snap_compare: Any, make_app: Any) -> None:
    assert snap_compare(make_app(), terminal_size=(80, 24),
                        press=["slash", "d", "c", "enter", "S", "space", "space"],
                        run_before=ready())


def test_command_dialog_snapshot(snap_compare: Any, make_app: Any) -> None:
    assert snap_compare(make_app(), terminal_size=(80, 24), press=["space", "c"],
                        run_before=ready())


def test_campaign_dialog_snapshot(snap_compare: Any, make_app: Any) -> None:
    assert snap_compare(make_app("ota"), terminal_size=(80, 24), press=["u"],
                        run_before=ready())


def test_help_snapshot(snap_compare: Any, make_app: Any) -> None:
    assert snap_compare(make_app(), terminal_size=(80, 24), press=["question_mark"],
                        run_before=ready())


def test_jump_prompt_snapshot(snap_compare: Any, make_app: Any) -> None:
    assert snap_compare(make_app(), terminal_size=(80, 24), press=["colon", "s", "i"],
                        run_before=ready())


def test_metadata_down_snapshot(snap_compare: Any, make_app: Any, dash_stores: Stores) -> None:
    down = DownStore("postgresql", "no connection to db:5432 (connection refused)")
    stores = Stores(down, dash_stores.timeseries, dash_stores.archive,  # type: ignore[arg-type]
                    dash_stores.urls)
    assert snap_compare(make_app(runtime=FakeRuntime(stores)), terminal_size=(80, 24),
                        run_before=ready())


# --- raw and rejected messages, device administration dialogs -------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_raw_messages_snapshot(snap_compare: Any, make_app: Any, dash_runtime: Any,
                               tmp_path: Any, size: tuple[int, int]) -> None:
    from test_dash_raw import fill

    fill(dash_runtime, tmp_path)

    async def open_raw(pilot: Any) -> None:
        pilot.app.open_device("dc-0001")
        await settle(pilot)
        await pilot.press("r")
        await wait_until(pilot, lambda: getattr(pilot.app.screen, "VIEW", "") == "Raw"
                         and pilot.app.screen.loads >= 1, what="raw loaded")

    assert snap_compare(make_app(), terminal_size=size, run_before=ready(open_raw))


@pytest.mark.parametrize("size", SIZES)
def test_rejected_snapshot(snap_compare: Any, make_app: Any, dash_runtime: Any,
                           tmp_path: Any, size: tuple[int, int]) -> None:
    from test_dash_raw import fill

    fill(dash_runtime, tmp_path)
    assert snap_compare(make_app("rejected"), terminal_size=size, run_before=ready())


@pytest.mark.parametrize("size", SIZES)
def test_add_device_dialog_snapshot(snap_compare: Any, make_app: Any,
                                    size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, press=["a"], run_before=ready())


@pytest.mark.parametrize("size", SIZES)
def test_config_dialog_snapshot(snap_compare: Any, make_app: Any, size: tuple[int, int]) -> None:
    async def open_config(pilot: Any) -> None:
        pilot.app.open_device("dc-0001")
        await settle(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: pilot.app.screen.__class__.__name__ == "FormDialog",
                         what="config dialog")

    assert snap_compare(make_app(), terminal_size=size, run_before=ready(open_config))
