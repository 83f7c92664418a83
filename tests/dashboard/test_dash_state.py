"""A view's reads: a new filter cancels the read in flight (its late answer is never shown),
while a refresh that comes during a slow read waits for it instead of cancelling it."""

from __future__ import annotations

import threading
from typing import Any

from dash_dataset import FakeRuntime
from dash_helpers import drive, press, screen_text, settle, wait_until
from textual.worker import WorkerState

from iotmeter_tui.backend.stores import Stores
from iotmeter_tui.backend.stores.metadata import Device, MetadataStore
from iotmeter_tui.screens.fleet import FleetScreen


class GatedMetadata:
    """The real store, except that while `hold` is set a listing of every status (the
    unfiltered fleet) waits for `release`: a slow store, for one query only."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        self.hold = threading.Event()
        self.release = threading.Event()
        self.waiting = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def list_devices(self, **query: Any) -> list[Device]:
        if self.hold.is_set() and query.get("status") is None:
            self.waiting.set()
            self.release.wait(20)
        return self.store.list_devices(**query)


def gated_app(make_app: Any, dash_stores: Stores) -> tuple[Any, GatedMetadata]:
    gated = GatedMetadata(dash_stores.metadata)
    stores = Stores(gated, dash_stores.timeseries, dash_stores.archive,  # type: ignore[arg-type]
                    dash_stores.urls)
    return make_app(runtime=FakeRuntime(stores)), gated


def test_a_new_filter_cancels_the_read_in_flight(make_app: Any, dash_stores: Stores) -> None:
    app, gated = gated_app(make_app, dash_stores)

    async def scenario(pilot: Any) -> None:
        screen = pilot.app.screen
        assert isinstance(screen, FleetScreen)
        assert screen.table.total == 30
        gated.hold.set()
        screen.reload()
        stale = screen._load_worker
        await wait_until(pilot, gated.waiting.is_set, what="the slow read")
        loads = screen.loads
        await press(pilot, "o")  # online only: read at once, beside the slow read
        assert stale.state == WorkerState.CANCELLED
        assert screen.query_state.status == "online"
        online = [row.key for row in screen.table.rows]
        assert screen.table.total == len(online) < 30
        gated.release.set()  # the unfiltered answer arrives late ...
        await pilot.pause(0.3)
        await settle(pilot)
        # ... and is never shown: the online meters stay, title and rows agree.
        assert [row.key for row in screen.table.rows] == online
        assert screen.shown_query == screen.query_state
        assert f"Fleet {len(online)} · online" in screen_text(pilot.app)
        assert screen.loads == loads + 1  # the cancelled read completed nothing

    try:
        drive(app, scenario)
    finally:
        gated.release.set()


def test_a_refresh_during_a_slow_read_waits_for_it(make_app: Any,
                                                   dash_stores: Stores) -> None:
    app, gated = gated_app(make_app, dash_stores)

    async def scenario(pilot: Any) -> None:
        screen = pilot.app.screen
        assert isinstance(screen, FleetScreen)
        gated.hold.set()
        loads = screen.loads
        screen.reload()
        slow = screen._load_worker
        await wait_until(pilot, gated.waiting.is_set, what="the slow read")
        screen.reload()  # the refresh tick: not urgent
        screen.reload()
        assert screen._load_worker is slow and slow.is_running
        gated.hold.clear()
        gated.release.set()
        await wait_until(pilot, lambda: not screen._loading, what="the reads")
        assert slow.state == WorkerState.SUCCESS
        assert screen.loads == loads + 2  # the slow read, then one more for the refreshes
        assert screen.table.total == 30

    try:
        drive(app, scenario)
    finally:
        gated.release.set()
