"""Fixtures for the dashboard tests: the deterministic dataset (dash_dataset.py) in a tmp
dir, the app over it with a frozen clock, and a helper to wait for a screen's data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dash_dataset import FakeRuntime, FakeSimulator, build_stores, frozen_now

from iotmeter_tui.app import IotmeterApp
from iotmeter_tui.backend.stores import Stores


@pytest.fixture
def dash_stores(tmp_path: Path) -> Iterator[Stores]:
    stores = build_stores(tmp_path / "dash")
    yield stores
    stores.close()


@pytest.fixture
def dash_runtime(dash_stores: Stores) -> FakeRuntime:
    return FakeRuntime(dash_stores, simulator=FakeSimulator())


@pytest.fixture
def make_app(dash_runtime: FakeRuntime) -> Callable[..., IotmeterApp]:
    def make(initial: str = "fleet", runtime: object | None = None) -> IotmeterApp:
        # A long refresh interval: snapshots are taken after the first load, and a second
        # refresh racing the screenshot would only repaint the same frozen data.
        return IotmeterApp(runtime or dash_runtime, now=frozen_now, refresh_s=30.0,  # type: ignore[arg-type]
                           initial=initial)

    return make
