"""The MetadataStore contract: one suite, run unchanged against PostgreSQL and SQLite on real
servers and files. Adapter-specific failure behaviour lives in test_metadata_outage.py."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from itertools import chain, pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotmeter_tui.backend.config import local_path
from iotmeter_tui.backend.errors import AlreadyExists, StoreError, StoreRejected
from iotmeter_tui.backend.stores.factory import open_metadata
from iotmeter_tui.backend.stores.metadata import (
    DEVICE_ORDER_COLUMNS,
    ApiKey,
    AuditEntry,
    Campaign,
    Command,
    DeviceUpdate,
    Firmware,
    MetadataStore,
    SeqState,
    encode_device_cursor,
)
from iotmeter_tui.backend.stores.metadata_postgres import PostgresBackend
from iotmeter_tui.backend.stores.metadata_sql import (
    MIGRATIONS,
    Migration,
    SqlBackend,
    SqlMetadataStore,
    now_ms,
)
from iotmeter_tui.backend.stores.metadata_sqlite import SqliteBackend

ADAPTERS = ["postgresql", "sqlite"]
REPO = Path(__file__).resolve().parents[2]
LATEST = MIGRATIONS[-1].version


@pytest.fixture(params=ADAPTERS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_database").url)
    return f"sqlite:///{tmp_path}/metadata.db"


@pytest.fixture
def store(store_url: str) -> Iterator[MetadataStore]:
    opened = open_metadata(store_url)
    yield opened
    opened.close()


def backend_for(url: str) -> SqlBackend:
    if url.startswith("sqlite:"):
        return SqliteBackend(local_path(url))
    return PostgresBackend(url)


def hello(device_id: str, at: int, **changes: Any) -> DeviceUpdate:
    fields: dict[str, Any] = {
        "device_type": "power_meter_dc",
        "fw_version": "1.0.0",
        "boot": 1,
        "heartbeat_s": 10.0,
    }
    return DeviceUpdate(device_id, at, **(fields | changes))


def status(device_id: str, state: str, at: int, last_seen: int | None = None) -> DeviceUpdate:
    return DeviceUpdate(
        device_id, at if last_seen is None else last_seen, connection_status=state, status_at=at
    )


# --- migrations -----------------------------------------------------------------------------


def test_first_use_migrates_to_the_latest_version(store: MetadataStore) -> None:
    assert store.schema_version() == LATEST
    assert store.migrate() == []


def test_opening_twice_applies_nothing_the_second_time(store_url: str) -> None:
    first = open_metadata(store_url)
    assert first.migrate() == [m.version for m in MIGRATIONS]
    first.apply_collector_batch([hello("dev-1", 1000)], [])
    first.close()
    second = open_metadata(store_url)
    try:
        assert second.migrate() == []
        assert second.get_device("dev-1") is not None
    finally:
        second.close()


def test_a_new_migration_is_applied_forward_only(store_url: str) -> None:
    open_metadata(store_url).close()
    base = SqlMetadataStore(backend_for(store_url))
    base.apply_collector_batch([hello("dev-1", 1000)], [])
    base.close()
    step = Migration(LATEST + 1, "test: a column", ("ALTER TABLE devices ADD COLUMN site TEXT",))
    newer = SqlMetadataStore(backend_for(store_url), migrations=(*MIGRATIONS, step))
    try:
        assert newer.migrate() == [LATEST + 1]
        assert newer.migrate() == []
        assert newer.schema_version() == LATEST + 1
        assert newer.get_device("dev-1") is not None  # the data survived the step
    finally:
        newer.close()


def test_a_schema_newer_than_the_code_is_refused(store_url: str) -> None:
    step = Migration(LATEST + 1, "test: from the future", ("CREATE TABLE later (x INTEGER)",))
    newer = SqlMetadataStore(backend_for(store_url), migrations=(*MIGRATIONS, step))
    newer.migrate()
    newer.close()
    older = open_metadata(store_url)
    try:
        with pytest.raises(StoreRejected, match="newer than this iotmeter"):
            older.get_device("dev-1")
    finally:
        older.close()


def test_a_failing_migration_is_rolled_back_and_named(store_url: str) -> None:
    broken = Migration(
        LATEST + 1,
        "test: half good",
        (
            "CREATE TABLE half_done (x INTEGER)",
            "THIS IS NOT SQL",
        ),
    )
    store = SqlMetadataStore(backend_for(store_url), migrations=(*MIGRATIONS, broken))
    try:
        with pytest.raises(StoreRejected, match=rf"migration {LATEST + 1} \(test: half good\)"):
            store.migrate()
    finally:
        store.close()
    current = open_metadata(store_url)
    try:
        assert current.schema_version() == LATEST  # the steps before it stay applied
    finally:
        current.close()
    fixed = Migration(LATEST + 1, "test: fixed", ("CREATE TABLE half_done (x INTEGER)",))
    retry = SqlMetadataStore(backend_for(store_url), migrations=(*MIGRATIONS, fixed))
    try:
        assert retry.migrate() == [LATEST + 1]  # the table from the failed try was rolled back
    finally:
        retry.close()


def test_threads_migrating_at_once_apply_each_step_once(store_url: str) -> None:
    stores = [open_metadata(store_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))

    def migrate(store: MetadataStore) -> list[int]:
        barrier.wait()
        return store.migrate()

    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            applied = list(pool.map(migrate, stores))
    finally:
        for opened in stores:
            opened.close()
    # Each step is its own transaction, so with several steps two threads may share the
    # work; what matters is that every step is applied exactly once.
    assert sorted(chain.from_iterable(applied)) == [m.version for m in MIGRATIONS]


def test_processes_starting_at_once_both_succeed(store_url: str) -> None:
    code = (
        "import sys\n"
        "from iotmeter_tui.backend.stores.factory import open_metadata\n"
        "from iotmeter_tui.backend.stores.metadata import DeviceUpdate\n"
        "store = open_metadata(sys.argv[1])\n"
        "store.apply_collector_batch([DeviceUpdate(sys.argv[2], 1000)], [])\n"
        "store.close()\n"
    )
    env = os.environ | {"PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, store_url, f"proc-{i}"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    store = open_metadata(store_url)
    try:
        assert store.schema_version() == LATEST
        assert sorted(store.device_types()) == ["proc-0", "proc-1", "proc-2"]
    finally:
        store.close()


# --- collector batches ----------------------------------------------------------------------


def test_an_unknown_device_is_registered_with_defaults(store: MetadataStore) -> None:
    before = now_ms()
    store.apply_collector_batch([DeviceUpdate("dev-1", 5000)], [])
    device = store.get_device("dev-1")
    assert device is not None
    assert (device.device_type, device.connection_status, device.fw_version) == (
        "unknown",
        "unknown",
        None,
    )
    assert (device.last_seen, device.boot, device.heartbeat_s) == (5000, None, None)
    assert before <= device.created_at <= now_ms()
    assert store.get_device("nobody") is None


def test_a_hello_sets_the_registry_fields(store: MetadataStore) -> None:
    store.apply_collector_batch([DeviceUpdate("dev-1", 1000)], [])
    store.apply_collector_batch([hello("dev-1", 2000, fw_version="2.1.0", boot=7)], [])
    device = store.get_device("dev-1")
    assert device is not None
    assert (device.device_type, device.fw_version, device.boot, device.heartbeat_s) == (
        "power_meter_dc",
        "2.1.0",
        7,
        10.0,
    )
    assert store.device_types() == {"dev-1": "power_meter_dc"}


def test_unset_fields_keep_their_values_and_last_seen_only_grows(store: MetadataStore) -> None:
    store.apply_collector_batch([hello("dev-1", 5000)], [])
    store.apply_collector_batch([DeviceUpdate("dev-1", 3000)], [])  # an older message, late
    device = store.get_device("dev-1")
    assert device is not None
    assert device.last_seen == 5000
    assert (device.device_type, device.fw_version, device.boot) == ("power_meter_dc", "1.0.0", 1)
    store.apply_collector_batch([DeviceUpdate("dev-1", 6000, device_type="unknown")], [])
    device = store.get_device("dev-1")
    assert device is not None
    assert (device.last_seen, device.device_type) == (6000, "power_meter_dc")


def test_a_late_last_will_does_not_override_a_newer_online(store: MetadataStore) -> None:
    store.apply_collector_batch([status("dev-1", "online", 2000)], [])
    store.apply_collector_batch([status("dev-1", "offline", 1500)], [])
    device = store.get_device("dev-1")
    assert device is not None
    assert (device.connection_status, device.status_changed_at) == ("online", 2000)
    store.apply_collector_batch([status("dev-1", "offline", 2500)], [])
    device = store.get_device("dev-1")
    assert device is not None
    assert (device.connection_status, device.status_changed_at) == ("offline", 2500)


def test_a_status_at_the_same_time_replaces_the_stored_one(store: MetadataStore) -> None:
    store.apply_collector_batch([status("dev-1", "online", 2000)], [])
    store.apply_collector_batch([status("dev-1", "offline", 2000)], [])
    device = store.get_device("dev-1")
    assert device is not None and device.connection_status == "offline"


def test_a_status_without_time_is_as_old_as_its_message(store: MetadataStore) -> None:
    store.apply_collector_batch([DeviceUpdate("dev-1", 3000, connection_status="online")], [])
    device = store.get_device("dev-1")
    assert device is not None
    assert (device.connection_status, device.status_changed_at) == ("online", 3000)


def test_several_updates_of_one_device_in_a_batch_apply_in_order(store: MetadataStore) -> None:
    store.apply_collector_batch(
        [
            hello("dev-1", 1000, fw_version="1.0.0"),
            status("dev-1", "online", 1001),
            hello("dev-1", 1002, fw_version="1.1.0"),
            status("dev-1", "offline", 1003),
            status("dev-1", "online", 900, last_seen=1004),  # stale status, fresh message
        ],
        [],
    )
    device = store.get_device("dev-1")
    assert device is not None
    assert (
        device.fw_version,
        device.connection_status,
        device.status_changed_at,
        device.last_seen,
    ) == ("1.1.0", "offline", 1003, 1004)


def test_seq_states_are_upserted_per_boot(store: MetadataStore) -> None:
    first = SeqState("dev-1", 1, 10, 9, 0, 2, ((3, 4),), 1000)
    store.apply_collector_batch([DeviceUpdate("dev-1", 1000)], [first])
    later = replace(
        first, highest_seq=20, received=20, duplicates=1, missing=1, gaps=((4, 4),), updated_at=2000
    )
    next_boot = SeqState("dev-1", 2, 0, 1, 0, 0, (), 2500)
    other = SeqState("dev-2", 1, 5, 6, 0, 0, (), 2500)
    store.apply_collector_batch([], [later, next_boot, other])
    assert store.load_seq_states(["dev-1"]) == [later, next_boot]
    assert store.load_seq_states() == [later, next_boot, other]
    assert store.load_seq_states([]) == []


def test_each_collector_keeps_its_own_seq_rows_and_readers_get_them_merged(
    store: MetadataStore,
) -> None:
    # Two collectors sharing a subscription: each saw part of dev-1's boot 3.
    a = SeqState("dev-1", 3, 9, 5, 0, 5, ((1, 1), (3, 3), (5, 5), (7, 7)), 1000, "col-a")
    b = SeqState("dev-1", 3, 8, 4, 1, 5, ((0, 0), (2, 2), (4, 4), (6, 6), (8, 8)), 1100, "col-b")
    store.apply_collector_batch([], [a, b])
    assert store.load_seq_states(["dev-1"], collector="col-a") == [a]
    assert store.load_seq_states(collector="col-b") == [b]
    (merged,) = store.load_seq_states(["dev-1"])
    assert (merged.highest_seq, merged.received, merged.duplicates) == (9, 9, 1)
    assert merged.gaps == () and merged.missing == 0  # what one lacks, the other has


def test_load_seq_states_takes_many_ids(store: MetadataStore) -> None:
    states = [SeqState(f"dev-{i:04d}", 1, i, i + 1, 0, 0, (), 1000) for i in range(1200)]
    store.apply_collector_batch([], states)
    wanted = [f"dev-{i:04d}" for i in range(0, 1200, 2)] + ["nobody"]
    assert store.load_seq_states(iter(wanted)) == states[::2]


def test_the_cursor_is_stored_with_the_batch(store: MetadataStore) -> None:
    assert store.get_cursor("spool") is None
    store.apply_collector_batch([], [], ("spool", "segment-1:0"))
    store.apply_collector_batch([DeviceUpdate("dev-1", 1)], [], ("spool", "segment-1:42"))
    assert store.get_cursor("spool") == "segment-1:42"
    assert store.get_cursor("other") is None


def test_a_rejected_batch_changes_nothing(store: MetadataStore) -> None:
    store.apply_collector_batch([DeviceUpdate("dev-1", 1000)], [], ("spool", "1"))
    bad = DeviceUpdate("dev-2", 2000, connection_status="sleeping")  # not a status
    with pytest.raises(StoreRejected) as caught:
        store.apply_collector_batch(
            [DeviceUpdate("dev-1", 3000), bad],
            [SeqState("dev-1", 1, 1, 1, 0, 0, (), 1)],
            ("spool", "2"),
        )
    assert caught.value.retryable is False
    device = store.get_device("dev-1")
    assert device is not None and device.last_seen == 1000
    assert store.get_device("dev-2") is None
    assert store.load_seq_states() == []
    assert store.get_cursor("spool") == "1"


_types = st.sampled_from([None, "power_meter_dc", "power_meter_ac"])
_updates = st.lists(
    st.builds(
        DeviceUpdate,
        device_id=st.sampled_from(["a", "b", "c"]),
        last_seen=st.integers(0, 50),
        device_type=_types,
        fw_version=st.sampled_from([None, "1.0", "2.0"]),
        boot=st.none() | st.integers(0, 3),
        heartbeat_s=st.none() | st.sampled_from([5.0, 30.0]),
        connection_status=st.sampled_from([None, "online", "offline"]),
        status_at=st.none() | st.integers(0, 50),
    ),
    max_size=12,
)


def _model(updates: list[DeviceUpdate]) -> dict[str, tuple[Any, ...]]:
    """What the registry must hold after `updates`, applied one by one."""
    rows: dict[str, dict[str, Any]] = {}
    for u in updates:
        row = rows.setdefault(
            u.device_id,
            {
                "device_type": "unknown",
                "connection_status": "unknown",
                "fw_version": None,
                "last_seen": None,
                "boot": None,
                "heartbeat_s": None,
                "status_changed_at": None,
            },
        )
        row["device_type"] = u.device_type or row["device_type"]
        for name in ("fw_version", "boot", "heartbeat_s"):
            if getattr(u, name) is not None:
                row[name] = getattr(u, name)
        row["last_seen"] = max(u.last_seen, row["last_seen"] or u.last_seen)
        if u.connection_status is not None:
            at = u.last_seen if u.status_at is None else u.status_at
            if row["status_changed_at"] is None or at >= row["status_changed_at"]:
                row["connection_status"], row["status_changed_at"] = u.connection_status, at
    return {key: tuple(row.values()) for key, row in rows.items()}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(updates=_updates, cuts=st.lists(st.integers(0, 12), max_size=3))
def test_batches_agree_with_a_one_by_one_model(
    store: MetadataStore, updates: list[DeviceUpdate], cuts: list[int]
) -> None:
    # Each example gets its own device ids, so examples share the store without interfering.
    prefix = uuid.uuid4().hex[:8]
    updates = [replace(u, device_id=f"{prefix}-{u.device_id}") for u in updates]
    bounds = sorted({0, len(updates), *(min(c, len(updates)) for c in cuts)})
    for start, end in pairwise(bounds):
        store.apply_collector_batch(updates[start:end], [])
    stored = {
        d.device_id: (
            d.device_type,
            d.connection_status,
            d.fw_version,
            d.last_seen,
            d.boot,
            d.heartbeat_s,
            d.status_changed_at,
        )
        for d in store.list_devices(search=prefix)
    }
    assert stored == _model(updates)


def test_silent_online_devices_are_marked_offline(store: MetadataStore) -> None:
    store.apply_collector_batch(
        [
            hello("quiet", 10_000, heartbeat_s=10.0),
            status("quiet", "online", 10_000),
            hello("chatty", 50_000, heartbeat_s=10.0),
            status("chatty", "online", 50_000),
            hello("slow", 10_000, heartbeat_s=60.0),
            status("slow", "online", 10_000),
            hello("gone", 1_000),
            status("gone", "offline", 1_000),
            DeviceUpdate("no-hello", 1_000, connection_status="online"),
        ],
        [],
    )
    assert store.mark_silent_offline(60_000, factor=3.0) == ["quiet"]
    quiet = store.get_device("quiet")
    assert quiet is not None
    assert (quiet.connection_status, quiet.status_changed_at) == ("offline", 60_000)
    assert store.mark_silent_offline(60_000) == []
    # Heard again after being marked: a newer online wins.
    store.apply_collector_batch([status("quiet", "online", 61_000)], [])
    quiet = store.get_device("quiet")
    assert quiet is not None and quiet.connection_status == "online"


# --- registry / dashboard -------------------------------------------------------------------


def _fleet(store: MetadataStore) -> None:
    store.apply_collector_batch(
        [
            hello("dc-0001", 5000, fw_version="1.2.0"),
            status("dc-0001", "online", 5000),
            hello("dc-0002", 3000, fw_version="1.3.0"),
            status("dc-0002", "offline", 3000),
            hello("AC-0003", 4000, device_type="power_meter_ac", fw_version="2.0.0"),
            status("AC-0003", "online", 4000),
            DeviceUpdate("dc_50%", 1000),
            DeviceUpdate("x-new", 2000),
        ],
        [],
    )


def _ids(devices: list[Any]) -> list[str]:
    return [d.device_id for d in devices]


def test_list_devices_filters(store: MetadataStore) -> None:
    _fleet(store)
    assert _ids(store.list_devices()) == ["AC-0003", "dc-0001", "dc-0002", "dc_50%", "x-new"]
    assert _ids(store.list_devices(search="ac-")) == ["AC-0003"]
    assert _ids(store.list_devices(search="power_meter_ac")) == ["AC-0003"]
    assert _ids(store.list_devices(search="1.3")) == ["dc-0002"]
    assert _ids(store.list_devices(search="_5")) == ["dc_50%"]  # _ and % are literal
    assert _ids(store.list_devices(search="%")) == ["dc_50%"]
    assert _ids(store.list_devices(status="online")) == ["AC-0003", "dc-0001"]
    assert _ids(store.list_devices(device_type="unknown")) == ["dc_50%", "x-new"]
    assert _ids(store.list_devices(status="online", device_type="power_meter_dc", search="DC")) == [
        "dc-0001"
    ]
    assert store.count_devices() == 5
    assert store.count_devices(search="dc") == 3
    assert store.count_devices(status="offline") == 1
    assert store.count_devices(device_type="power_meter_ac", status="offline") == 0


def test_list_devices_orders_and_pages(store: MetadataStore) -> None:
    _fleet(store)
    assert _ids(store.list_devices(order_by="last_seen", descending=True)) == [
        "dc-0001",
        "AC-0003",
        "dc-0002",
        "x-new",
        "dc_50%",
    ]
    # Ties break on device_id; devices without a firmware version sort last both ways.
    assert _ids(store.list_devices(order_by="connection_status")) == [
        "dc-0002",
        "AC-0003",
        "dc-0001",
        "dc_50%",
        "x-new",
    ]
    assert _ids(store.list_devices(order_by="fw_version"))[-2:] == ["dc_50%", "x-new"]
    assert _ids(store.list_devices(order_by="fw_version", descending=True))[-2:] == [
        "x-new",
        "dc_50%",
    ]
    every = _ids(store.list_devices(order_by="last_seen"))
    pages = [_ids(store.list_devices(order_by="last_seen", offset=o, limit=2)) for o in (0, 2, 4)]
    assert list(chain.from_iterable(pages)) == every
    assert _ids(store.list_devices(offset=3)) == ["dc_50%", "x-new"]
    for column in DEVICE_ORDER_COLUMNS:
        assert len(store.list_devices(order_by=column, descending=True)) == 5


def test_list_devices_refuses_an_unknown_order(store: MetadataStore) -> None:
    with pytest.raises(ValueError, match="cannot order devices"):
        store.list_devices(order_by="last_seen; DROP TABLE devices")


def test_counts_by_status_name_every_status(store: MetadataStore) -> None:
    assert store.device_counts_by_status() == {"online": 0, "offline": 0, "unknown": 0}
    _fleet(store)
    assert store.device_counts_by_status() == {"online": 2, "offline": 1, "unknown": 2}


def test_config_values_round_trip_as_json(store: MetadataStore) -> None:
    assert store.get_config("dev-1") == {}
    values: dict[str, Any] = {
        "interval_s": 5,
        "gain": 1.25,
        "label": "north",
        "on": True,
        "none": None,
        "list": [1, "a"],
        "obj": {"k": [1]},
    }
    for key, value in values.items():
        store.set_config("dev-1", key, value)
    store.set_config("dev-1", "interval_s", 10)
    store.set_config("dev-2", "label", "south")
    assert store.get_config("dev-1") == values | {"interval_s": 10}
    assert store.get_config("dev-2") == {"label": "south"}
    assert store.get_configs() == {"dev-1": values | {"interval_s": 10},
                                   "dev-2": {"label": "south"}}
    with pytest.raises(StoreRejected):
        store.set_config("dev-1", "bad", float("nan"))
    with pytest.raises(StoreRejected):
        store.set_config("dev-1", "bad", object())


# --- alerts ---------------------------------------------------------------------------------


def test_raising_an_open_alert_again_refreshes_it(store: MetadataStore) -> None:
    alert, new = store.raise_alert("dev-1", "overvoltage", "warning", 910.0, "910 V", 1000)
    assert new
    assert (alert.state, alert.value, alert.raised_at, alert.updated_at) == (
        "active",
        910.0,
        1000,
        1000,
    )
    again, new = store.raise_alert("dev-1", "overvoltage", "critical", 950.0, "950 V", 2000)
    assert not new
    assert (
        again.id,
        again.severity,
        again.value,
        again.message,
        again.raised_at,
        again.updated_at,
    ) == (alert.id, "critical", 950.0, "950 V", 1000, 2000)
    other, new = store.raise_alert("dev-1", "overcurrent", "warning", None, "I", 2000)
    assert new and other.id != alert.id and other.value is None
    assert [a.id for a in store.open_alerts("dev-1")] == [alert.id, other.id]


def test_an_acknowledged_alert_is_still_the_open_one(store: MetadataStore) -> None:
    alert, _ = store.raise_alert("dev-1", "temp", "warning", 80.0, "hot", 1000)
    assert store.acknowledge_alert(alert.id, 1500)
    assert not store.acknowledge_alert(alert.id, 1600)
    again, new = store.raise_alert("dev-1", "temp", "warning", 85.0, "hotter", 2000)
    assert not new
    assert (again.id, again.state, again.acknowledged_at) == (alert.id, "acknowledged", 1500)


def test_after_clearing_the_same_rule_raises_a_new_alert(store: MetadataStore) -> None:
    alert, _ = store.raise_alert("dev-1", "temp", "warning", 80.0, "hot", 1000)
    assert store.clear_alert(alert.id, 1500)
    assert not store.clear_alert(alert.id, 1600)
    assert not store.acknowledge_alert(alert.id, 1600)
    fresh, new = store.raise_alert("dev-1", "temp", "warning", 81.0, "hot", 2000)
    assert new and fresh.id != alert.id
    assert store.open_alerts() == [fresh]
    cleared = store.list_alerts(state="cleared")
    assert [(a.id, a.cleared_at, a.updated_at) for a in cleared] == [(alert.id, 1500, 1500)]


def test_clear_alerts_for_a_rule(store: MetadataStore) -> None:
    a, _ = store.raise_alert("dev-1", "temp", "warning", 80.0, "hot", 1000)
    store.raise_alert("dev-1", "volt", "warning", 80.0, "v", 1000)
    store.raise_alert("dev-2", "temp", "warning", 80.0, "hot", 1000)
    assert store.clear_alerts_for("dev-1", "temp", 3000) == [a.id]
    assert store.clear_alerts_for("dev-1", "temp", 3001) == []
    assert sorted((x.device_id, x.rule) for x in store.open_alerts()) == [
        ("dev-1", "volt"),
        ("dev-2", "temp"),
    ]


def test_list_alerts_newest_first_with_filters(store: MetadataStore) -> None:
    ids = [
        store.raise_alert(f"dev-{i % 2}", f"rule-{i}", "info", float(i), "m", 1000 + i)[0].id
        for i in range(6)
    ]
    assert [a.id for a in store.list_alerts()] == ids[::-1]
    assert [a.id for a in store.list_alerts(device_id="dev-1")] == [ids[5], ids[3], ids[1]]
    assert [a.id for a in store.list_alerts(limit=2)] == [ids[5], ids[4]]
    store.acknowledge_alert(ids[2], 2000)
    assert [a.id for a in store.list_alerts(state="acknowledged")] == [ids[2]]
    assert len(store.list_alerts(state="active", device_id="dev-0")) == 2


def test_open_alerts_are_counted_per_device(store: MetadataStore) -> None:
    assert store.open_alert_counts() == {}
    a, _ = store.raise_alert("dev-1", "temp", "warning", 80.0, "hot", 1000)
    store.raise_alert("dev-1", "volt", "critical", 1.0, "v", 1000)
    b, _ = store.raise_alert("dev-2", "temp", "warning", 80.0, "hot", 1000)
    store.raise_alert("dev-3", "temp", "warning", 80.0, "hot", 1000)
    store.acknowledge_alert(b.id, 1100)  # acknowledged is still open
    store.clear_alert(a.id, 1200)
    store.raise_alert("dev-4", "temp", "warning", 80.0, "hot", 1000)
    store.clear_alerts_for("dev-4", "temp", 1300)
    assert store.open_alert_counts() == {"dev-1": 1, "dev-2": 1, "dev-3": 1}
    assert store.open_alert_counts(["dev-2", "dev-4", "nope", "dev-2"]) == {"dev-2": 1}
    assert store.open_alert_counts([]) == {}
    # The counts agree with the alerts listed, over more ids than one IN list holds.
    many = [f"dev-{i}" for i in range(1200)]
    assert store.open_alert_counts(many) == {
        d: n for d, n in store.open_alert_counts().items() if d in many}


def test_concurrent_raises_make_one_alert(store_url: str) -> None:
    stores = [open_metadata(store_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))

    def raise_it(store: MetadataStore) -> tuple[int, bool]:
        barrier.wait()
        alert, new = store.raise_alert("dev-1", "temp", "warning", 1.0, "m", 1000)
        return alert.id, new

    try:
        stores[0].migrate()
        with ThreadPoolExecutor(len(stores)) as pool:
            outcomes = list(pool.map(raise_it, stores))
        assert len({alert_id for alert_id, _ in outcomes}) == 1
        assert sorted(new for _, new in outcomes) == [False, False, False, True]
    finally:
        for opened in stores:
            opened.close()


# --- commands -------------------------------------------------------------------------------


def _command(command_id: str = "cmd-1", device_id: str = "dev-1", at: int = 1000) -> Command:
    return Command(
        command_id,
        device_id,
        "set_interval",
        {"interval_s": 5, "tags": ["a"]},
        "queued",
        at,
        at,
        at + 60_000,
    )


def test_a_command_round_trips(store: MetadataStore) -> None:
    cmd = _command()
    store.create_command(cmd)
    assert store.get_command("cmd-1") == cmd
    assert store.get_command("nope") is None
    with pytest.raises(StoreRejected):
        store.create_command(cmd)


def test_a_command_moves_forward_until_final(store: MetadataStore) -> None:
    store.create_command(_command())
    assert store.update_command("cmd-1", state="sent", at=1100, sent=True)
    assert store.update_command("cmd-1", state="sent", at=1200, sent=True)  # a retry
    assert store.update_command("cmd-1", state="accepted", at=1300, result="accepted")
    assert store.update_command("cmd-1", state="done", at=1400, result="done", detail="ok")
    final = store.get_command("cmd-1")
    assert final is not None
    assert (
        final.state,
        final.attempts,
        final.sent_at,
        final.updated_at,
        final.result,
        final.detail,
    ) == ("done", 2, 1200, 1400, "done", "ok")
    for state in ("failed", "sent", "timed_out"):
        assert not store.update_command("cmd-1", state=state, at=1500, sent=True)
    assert store.get_command("cmd-1") == final
    assert not store.update_command("nope", state="sent", at=1)


@pytest.mark.parametrize("final", ["done", "rejected", "failed", "timed_out"])
def test_every_final_command_state_is_final(store: MetadataStore, final: str) -> None:
    store.create_command(_command())
    assert store.update_command("cmd-1", state=final, at=2000, detail="why")
    assert not store.update_command("cmd-1", state="queued", at=3000)
    cmd = store.get_command("cmd-1")
    assert cmd is not None and (cmd.state, cmd.detail) == (final, "why")


def test_an_unknown_command_state_is_refused(store: MetadataStore) -> None:
    store.create_command(_command())
    with pytest.raises(StoreRejected):
        store.update_command("cmd-1", state="teleported", at=2000)


def test_pending_and_listed_commands(store: MetadataStore) -> None:
    for i, device in enumerate(["dev-1", "dev-2", "dev-1", "dev-1"]):
        store.create_command(_command(f"cmd-{i}", device, at=1000 + i))
    store.update_command("cmd-0", state="done", at=2000)
    store.update_command("cmd-2", state="sent", at=2000, sent=True)
    assert [c.id for c in store.pending_commands()] == ["cmd-1", "cmd-2", "cmd-3"]
    assert [c.id for c in store.pending_commands("dev-1")] == ["cmd-2", "cmd-3"]
    assert [c.id for c in store.list_commands()] == ["cmd-3", "cmd-2", "cmd-1", "cmd-0"]
    assert [c.id for c in store.list_commands(device_id="dev-1", limit=2)] == ["cmd-3", "cmd-2"]
    assert [c.id for c in store.list_commands(state="sent")] == ["cmd-2"]


# --- OTA ------------------------------------------------------------------------------------


def _firmware(version: str = "2.0.0", at: int = 1000) -> Firmware:
    return Firmware(version, 123_456, "ab" * 32, f"_firmware/{version}.bin", at)


def _campaign(campaign_id: str = "camp-1", at: int = 5000) -> Campaign:
    return Campaign(campaign_id, "2.0.0", "type=power_meter_dc", 10, 20.0, "running", at, at)


def test_firmware_round_trips(store: MetadataStore) -> None:
    store.add_firmware(_firmware("1.0.0", 1000))
    store.add_firmware(_firmware("2.0.0", 2000))
    assert store.get_firmware("2.0.0") == _firmware("2.0.0", 2000)
    assert store.get_firmware("9.9.9") is None
    assert [f.version for f in store.list_firmware()] == ["2.0.0", "1.0.0"]
    with pytest.raises(StoreRejected):
        store.add_firmware(_firmware("1.0.0", 3000))


def test_a_firmware_signature_round_trips(store: MetadataStore) -> None:
    signature = base64.b64encode(bytes(range(64))).decode()
    signed = replace(_firmware("3.0.0"), signature=signature)
    store.add_firmware(signed)
    store.add_firmware(_firmware("3.0.1"))
    assert store.get_firmware("3.0.0") == signed
    assert store.get_firmware("3.0.1").signature is None  # type: ignore[union-attr]
    assert {f.version: f.signature for f in store.list_firmware()} == {
        "3.0.0": signature, "3.0.1": None}


def test_a_campaign_starts_with_pending_targets(store: MetadataStore) -> None:
    store.add_firmware(_firmware())
    store.create_campaign(_campaign(), ["dev-2", "dev-1", "dev-2"])
    assert store.get_campaign("camp-1") == _campaign()
    assert store.get_campaign("nope") is None
    targets = store.list_targets("camp-1")
    assert [
        (t.device_id, t.state, t.attempts, t.progress_pct, t.started_at, t.updated_at)
        for t in targets
    ] == [("dev-1", "pending", 0, None, None, 5000), ("dev-2", "pending", 0, None, None, 5000)]
    store.create_campaign(_campaign("camp-2", 6000), [])
    assert [c.id for c in store.list_campaigns()] == ["camp-2", "camp-1"]
    assert [c.id for c in store.list_campaigns(limit=1)] == ["camp-2"]
    assert store.list_targets("camp-2") == []


def test_targets_are_counted_per_campaign_and_state(store: MetadataStore) -> None:
    store.add_firmware(_firmware())
    store.create_campaign(_campaign(), ["dev-1", "dev-2", "dev-3", "dev-4"])
    store.create_campaign(_campaign("camp-2", 6000), ["dev-1"])
    store.create_campaign(_campaign("camp-3", 7000), [])
    store.update_target("camp-1", "dev-1", state="offered", at=6000, started=True)
    store.update_target("camp-1", "dev-1", state="done", at=6100, progress_pct=100.0)
    store.update_target("camp-1", "dev-2", state="failed", at=6100, error="bad hash")
    store.update_target("camp-1", "dev-3", state="downloading", at=6100, progress_pct=10.0)
    store.update_target("camp-2", "dev-1", state="done", at=6200)
    assert store.ota_target_counts(["camp-1", "camp-2", "camp-3", "nope", "camp-1"]) == {
        "camp-1": {"done": 1, "failed": 1, "downloading": 1, "pending": 1},
        "camp-2": {"done": 1},
    }
    assert store.ota_target_counts(["camp-2"]) == {"camp-2": {"done": 1}}
    assert store.ota_target_counts([]) == {}
    for campaign_id in ("camp-1", "camp-2"):  # what counting the listed targets gives
        listed: dict[str, int] = {}
        for target in store.list_targets(campaign_id):
            listed[target.state] = listed.get(target.state, 0) + 1
        assert store.ota_target_counts([campaign_id])[campaign_id] == listed


def test_a_campaign_for_missing_firmware_is_refused_whole(store: MetadataStore) -> None:
    with pytest.raises(StoreRejected):
        store.create_campaign(_campaign(), ["dev-1"])
    assert store.get_campaign("camp-1") is None
    assert store.list_targets("camp-1") == []


def test_update_campaign(store: MetadataStore) -> None:
    store.add_firmware(_firmware())
    store.create_campaign(_campaign(), ["dev-1"])
    assert store.update_campaign("camp-1", state="paused", at=6000, detail="too many failures")
    assert store.update_campaign("camp-1", state="running", at=7000)
    campaign = store.get_campaign("camp-1")
    assert campaign is not None
    assert (campaign.state, campaign.updated_at, campaign.detail) == (
        "running",
        7000,
        "too many failures",
    )
    assert not store.update_campaign("nope", state="running", at=1)


def test_a_target_moves_forward_until_final(store: MetadataStore) -> None:
    store.add_firmware(_firmware())
    store.create_campaign(_campaign(), ["dev-1"])
    assert store.update_target("camp-1", "dev-1", state="offered", at=6000, started=True)
    assert store.update_target("camp-1", "dev-1", state="downloading", at=6100, progress_pct=40.0)
    assert store.update_target("camp-1", "dev-1", state="verifying", at=6200, error="bad hash")
    # A new attempt starts clean.
    assert store.update_target("camp-1", "dev-1", state="offered", at=7000, started=True)
    (target,) = store.list_targets("camp-1")
    assert (
        target.state,
        target.attempts,
        target.started_at,
        target.progress_pct,
        target.error,
    ) == ("offered", 2, 7000, None, None)
    assert store.update_target("camp-1", "dev-1", state="done", at=8000, progress_pct=100.0)
    assert not store.update_target("camp-1", "dev-1", state="failed", at=9000, error="x")
    (target,) = store.list_targets("camp-1")
    assert (target.state, target.updated_at, target.progress_pct, target.error) == (
        "done",
        8000,
        100.0,
        None,
    )
    assert not store.update_target("camp-1", "dev-9", state="done", at=1)


# --- lifecycle, threads, speed --------------------------------------------------------------


def test_check_passes_and_a_closed_store_refuses(store_url: str) -> None:
    store = open_metadata(store_url)
    store.check()
    store.close()
    with pytest.raises(StoreError):
        store.get_device("dev-1")


def test_threads_share_one_store(store: MetadataStore) -> None:
    def work(worker: int) -> None:
        for i in range(20):
            store.apply_collector_batch([DeviceUpdate(f"w{worker}-{i}", i)], [])
            store.list_devices(limit=10)
            store.raise_alert(f"w{worker}", "r", "info", float(i), "m", i)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(work, range(6)))
    assert store.count_devices() == 120
    assert len(store.open_alerts()) == 6


def test_collectors_sharing_the_load_do_not_deadlock(store_url: str) -> None:
    ids = [f"dev-{i:03d}" for i in range(200)]
    stores = [open_metadata(store_url) for _ in range(2)]
    stores[0].migrate()
    barrier = threading.Barrier(len(stores))

    def collect(worker: int) -> None:
        barrier.wait()
        order = ids if worker == 0 else ids[::-1]  # the same devices, in opposite orders
        for round_ in range(15):
            stores[worker].apply_collector_batch(
                [DeviceUpdate(d, round_ * 10 + worker) for d in order],
                [SeqState(d, 1, round_, round_, 0, 0, (), round_) for d in order],
            )

    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            list(pool.map(collect, range(len(stores))))
        assert stores[0].count_devices() == 200
        device = stores[0].get_device("dev-000")
        assert device is not None and device.last_seen == 141
    finally:
        for opened in stores:
            opened.close()


def _timed(action: Callable[[], object], repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        action()
    return (time.perf_counter() - start) / repeat * 1000


def test_dashboard_queries_over_ten_thousand_devices_are_fast(
    store: MetadataStore, store_url: str
) -> None:
    batches = [
        [hello(f"dc-{b * 1000 + i:05d}", 1000 + i, boot=b) for i in range(1000)] for b in range(10)
    ]
    insert_ms = _timed(lambda: store.apply_collector_batch(batches.pop(), []), repeat=10)
    updates = [
        DeviceUpdate(f"dc-{i:05d}", 5000 + i, connection_status="online")
        for i in range(0, 10_000, 10)
    ]
    update_ms = _timed(lambda: store.apply_collector_batch(updates, []), repeat=3)
    page_ms = _timed(lambda: store.list_devices(limit=50, offset=5000), repeat=20)
    sorted_ms = _timed(
        lambda: store.list_devices(order_by="last_seen", descending=True, limit=50, offset=200),
        repeat=20,
    )
    count_ms = _timed(lambda: store.count_devices(), repeat=20)
    filtered_ms = _timed(lambda: store.count_devices(status="online"), repeat=20)
    print(
        f"\n{store_url.split(':')[0]}: insert 1000 new {insert_ms:.1f} ms, update 1000 "
        f"{update_ms:.1f} ms, page {page_ms:.2f} ms, page by last_seen {sorted_ms:.2f} ms, "
        f"count {count_ms:.2f} ms, count online {filtered_ms:.2f} ms"
    )
    assert store.count_devices() == 10_000
    assert store.count_devices(status="online") == 1000
    # Generous bounds: a shared CI machine is slow, not ten times slower.
    assert max(page_ms, sorted_ms, count_ms, filtered_ms) < 50
    assert max(insert_ms, update_ms) < 1000


# --- device administration -------------------------------------------------------


def test_an_operator_registers_a_device_before_it_is_heard(store: MetadataStore) -> None:
    device = store.create_device("dc-0100", "power_meter_dc", name="Feeder 7",
                                 location="Depot North", metadata={"rack": 3, "tags": ["a"]},
                                 at=1234)
    assert device == store.get_device("dc-0100")
    assert (device.device_type, device.connection_status, device.created_at) == (
        "power_meter_dc", "unknown", 1234)
    assert (device.name, device.location, device.metadata) == (
        "Feeder 7", "Depot North", {"rack": 3, "tags": ["a"]})
    assert device.last_seen is None
    bare = store.create_device("dc-0101")
    assert (bare.device_type, bare.name, bare.location, bare.metadata) == (
        "unknown", None, None, {})


def test_registering_a_known_device_is_a_conflict(store: MetadataStore) -> None:
    store.apply_collector_batch([hello("dc-0001", 5000)], [])
    with pytest.raises(AlreadyExists, match="dc-0001"):
        store.create_device("dc-0001")
    store.create_device("dc-0002")
    with pytest.raises(AlreadyExists):
        store.create_device("dc-0002", "power_meter_ac")
    assert store.get_device("dc-0002").device_type == "unknown"  # type: ignore[union-attr]


def test_the_collector_keeps_what_operators_wrote(store: MetadataStore) -> None:
    store.create_device("dc-0001", name="Feeder", location="North", metadata={"k": 1})
    store.apply_collector_batch([hello("dc-0001", 5000), status("dc-0001", "online", 5000)], [])
    device = store.get_device("dc-0001")
    assert device is not None
    assert (device.device_type, device.connection_status, device.last_seen) == (
        "power_meter_dc", "online", 5000)
    assert (device.name, device.location, device.metadata) == ("Feeder", "North", {"k": 1})
    # A device the collector registered has the empty defaults.
    store.apply_collector_batch([DeviceUpdate("heard-1", 100)], [])
    heard = store.get_device("heard-1")
    assert heard is not None and (heard.name, heard.location, heard.metadata) == (None, None, {})


def test_update_device_info_changes_only_the_given_fields(store: MetadataStore) -> None:
    store.create_device("dc-0001", name="Feeder", location="North", metadata={"k": 1})
    changed = store.update_device_info("dc-0001", location="South")
    assert changed is not None
    assert (changed.name, changed.location, changed.metadata) == ("Feeder", "South", {"k": 1})
    changed = store.update_device_info("dc-0001", name=None, metadata={})
    assert changed is not None and (changed.name, changed.location, changed.metadata) == (
        None, "South", {})
    assert store.update_device_info("dc-0001") == store.get_device("dc-0001")
    assert store.update_device_info("nobody", name="x") is None
    with pytest.raises(StoreRejected, match="metadata"):
        store.update_device_info("dc-0001", metadata={"bad": float("nan")})


def test_deleting_a_device_closes_what_points_at_it(store: MetadataStore) -> None:
    store.apply_collector_batch(
        [hello("dc-0001", 5000), hello("dc-0002", 5000)],
        [SeqState("dc-0001", 1, 10, 11, 0, 0, (), 5000)])
    store.set_config("dc-0001", "nominal_v", 750)
    store.set_config("dc-0002", "nominal_v", 1500)
    store.create_command(_command("cmd-open", "dc-0001"))
    store.create_command(_command("cmd-done", "dc-0001"))
    store.update_command("cmd-done", state="done", at=2000)
    store.create_command(_command("cmd-other", "dc-0002"))
    alert, _ = store.raise_alert("dc-0001", "undervoltage", "critical", 400.0, "low", 3000)
    other, _ = store.raise_alert("dc-0002", "undervoltage", "critical", 400.0, "low", 3000)
    store.add_firmware(_firmware())
    store.create_campaign(_campaign(), ["dc-0001", "dc-0002"])

    deleted = store.delete_device("dc-0001", at=9000)
    assert deleted is not None
    assert (deleted.configs, deleted.seq_rows, deleted.commands_failed,
            deleted.targets_skipped, deleted.alerts_cleared) == (1, 1, 1, 1, 1)
    assert store.get_device("dc-0001") is None
    assert store.get_config("dc-0001") == {}
    assert store.load_seq_states(["dc-0001"]) == []
    failed = store.get_command("cmd-open")
    assert failed is not None and (failed.state, failed.detail) == ("failed", "device deleted")
    assert store.get_command("cmd-done").state == "done"  # type: ignore[union-attr]
    assert [a.id for a in store.open_alerts()] == [other.id]
    assert alert.id in [a.id for a in store.list_alerts(state="cleared")]
    targets = {t.device_id: t.state for t in store.list_targets("camp-1")}
    assert targets == {"dc-0001": "skipped", "dc-0002": "pending"}
    # The other device is untouched, and a second delete finds nothing.
    assert store.get_config("dc-0002") == {"nominal_v": 1500}
    assert store.get_command("cmd-other").state == "queued"  # type: ignore[union-attr]
    assert store.delete_device("dc-0001") is None
    # Heard again: registered again, as a new unknown device.
    store.apply_collector_batch([DeviceUpdate("dc-0001", 9500)], [])
    again = store.get_device("dc-0001")
    assert again is not None and again.device_type == "unknown" and again.created_at >= 9000


def test_search_matches_name_and_location(store: MetadataStore) -> None:
    _fleet(store)
    store.update_device_info("dc-0002", name="Feeder Seven", location="Depot North")
    assert _ids(store.list_devices(search="seven")) == ["dc-0002"]
    assert _ids(store.list_devices(search="depot n")) == ["dc-0002"]
    assert store.count_devices(search="depot") == 1


@pytest.mark.parametrize("column", DEVICE_ORDER_COLUMNS)
@pytest.mark.parametrize("descending", [False, True])
def test_keyset_pages_walk_every_order(store: MetadataStore, column: str,
                                       descending: bool) -> None:
    _fleet(store)
    store.update_device_info("dc-0001", name="b", location="y")
    store.update_device_info("x-new", name="a")
    every = _ids(store.list_devices(order_by=column, descending=descending))
    walked: list[str] = []
    after = None
    while True:
        page = store.list_devices(order_by=column, descending=descending, limit=2, after=after)
        if not page:
            break
        walked += _ids(page)
        after = encode_device_cursor(page[-1], column, descending)
    assert walked == every


def test_keyset_pages_survive_inserts_and_deletes(store: MetadataStore) -> None:
    _fleet(store)
    first = store.list_devices(limit=2)
    assert _ids(first) == ["AC-0003", "dc-0001"]
    after = encode_device_cursor(first[-1])
    store.delete_device("AC-0003")
    store.create_device("AAA-before")  # sorts before the page already read
    assert _ids(store.list_devices(limit=2, after=after)) == ["dc-0002", "dc_50%"]


def test_a_bad_or_foreign_cursor_is_refused(store: MetadataStore) -> None:
    _fleet(store)
    token = encode_device_cursor(store.list_devices(limit=1)[0], "last_seen", True)
    with pytest.raises(ValueError, match="another sort order"):
        store.list_devices(after=token)
    for bad in ("", "not-base64!", "W10", "WzEsMiwzLDRd"):
        with pytest.raises(ValueError, match="cursor"):
            store.list_devices(after=bad)


def test_counts_by_status_and_type_and_alerts_by_severity(store: MetadataStore) -> None:
    assert store.count_devices_by_status_and_type() == {}
    assert store.count_open_alerts_by_severity() == {}
    _fleet(store)
    assert store.count_devices_by_status_and_type() == {
        ("online", "power_meter_dc"): 1, ("offline", "power_meter_dc"): 1,
        ("online", "power_meter_ac"): 1, ("unknown", "unknown"): 2}
    a, _ = store.raise_alert("dc-0001", "undervoltage", "critical", 1.0, "m", 1)
    store.raise_alert("dc-0002", "undervoltage", "critical", 1.0, "m", 1)
    b, _ = store.raise_alert("dc-0002", "gap", "warning", 1.0, "m", 1)
    store.acknowledge_alert(b.id, 2)
    store.clear_alert(a.id, 3)
    assert store.count_open_alerts_by_severity() == {"critical": 1, "warning": 1}


def _key(name: str = "ci", role: str = "operator", key_hash: str = "h" * 64) -> ApiKey:
    return ApiKey(name, role, key_hash, 1000)


def test_api_keys_round_trip_and_revoke(store: MetadataStore) -> None:
    store.add_api_key(_key("ci", "operator", "a" * 64))
    store.add_api_key(_key("admin-1", "admin", "b" * 64))
    assert store.get_api_key_by_hash("a" * 64) == _key("ci", "operator", "a" * 64)
    assert store.get_api_key("admin-1") == _key("admin-1", "admin", "b" * 64)
    assert store.get_api_key_by_hash("c" * 64) is None
    assert [k.name for k in store.list_api_keys()] == ["admin-1", "ci"]
    store.touch_api_key("ci", at=5000)
    store.touch_api_key("ci", at=4000)  # last use only grows
    assert store.get_api_key("ci").last_used_at == 5000  # type: ignore[union-attr]
    assert store.revoke_api_key("ci", at=6000) is True
    assert store.revoke_api_key("ci", at=7000) is False
    assert store.revoke_api_key("nobody") is False
    revoked = store.get_api_key_by_hash("a" * 64)
    assert revoked is not None and revoked.revoked_at == 6000 and not revoked.active


def test_an_api_key_name_or_hash_is_taken_for_good(store: MetadataStore) -> None:
    store.add_api_key(_key("ci", key_hash="a" * 64))
    store.revoke_api_key("ci")
    with pytest.raises(AlreadyExists, match="ci"):
        store.add_api_key(_key("ci", key_hash="b" * 64))
    with pytest.raises(AlreadyExists):
        store.add_api_key(_key("other", key_hash="a" * 64))
    with pytest.raises(StoreRejected):
        store.add_api_key(_key("bad-role", role="root", key_hash="c" * 64))


def test_audit_entries_list_newest_first_with_filters(store: MetadataStore) -> None:
    added = [
        store.add_audit(AuditEntry(0, 1000 + i, actor, role, action, f"dev-{i}", "ok",
                                   request_id=f"req-{i}", detail={"i": i} if i % 2 else None))
        for i, (actor, role, action) in enumerate([
            ("alice", "cli", "device.create"), ("ci", "operator", "command.send"),
            ("alice", "cli", "device.delete"), ("ci", "operator", "device.create")])
    ]
    assert [e.id for e in added] == sorted({e.id for e in added})
    listed = store.list_audit()
    assert listed == list(reversed(added))
    assert listed[2].detail == {"i": 1} and listed[3].detail is None
    assert [e.target for e in store.list_audit(actor="alice")] == ["dev-2", "dev-0"]
    assert [e.target for e in store.list_audit(action="device.create")] == ["dev-3", "dev-0"]
    assert [e.target for e in store.list_audit(since=1002)] == ["dev-3", "dev-2"]
    assert [e.target for e in store.list_audit(limit=2)] == ["dev-3", "dev-2"]
    assert [e.target for e in store.list_audit(limit=2, before_id=added[2].id)] == [
        "dev-1", "dev-0"]


def test_commands_and_campaigns_record_who_created_them(store: MetadataStore) -> None:
    store.create_command(replace(_command("cmd-1"), created_by="alice"))
    store.create_command(_command("cmd-2"))
    assert store.get_command("cmd-1").created_by == "alice"  # type: ignore[union-attr]
    assert store.get_command("cmd-2").created_by is None  # type: ignore[union-attr]
    store.add_firmware(_firmware())
    store.create_campaign(replace(_campaign(), created_by="ci"), ["dev-1"])
    assert store.get_campaign("camp-1").created_by == "ci"  # type: ignore[union-attr]


def test_replace_config_makes_the_whole_config(store: MetadataStore) -> None:
    store.set_config("dc-0001", "nominal_v", 750)
    store.set_config("dc-0001", "x_note", "old")
    store.set_config("dc-0002", "nominal_v", 1500)
    store.replace_config("dc-0001", {"nominal_v": 900, "interval_s": 0.5})
    assert store.get_config("dc-0001") == {"interval_s": 0.5, "nominal_v": 900}
    store.replace_config("dc-0001", {})
    assert store.get_config("dc-0001") == {}
    assert store.get_config("dc-0002") == {"nominal_v": 1500}


_paged_fleet = st.lists(
    st.tuples(
        st.sampled_from(["a", "B", "c-1", "c_1", "z"]),  # id stems: ties in other columns
        st.one_of(st.none(), st.integers(0, 3)),  # last_seen: NULLs and ties
        st.one_of(st.none(), st.sampled_from(["1.0", "1.1", "2.0"])),  # fw_version
        st.one_of(st.none(), st.sampled_from(["east", "West", "north"])),  # location
        st.one_of(st.none(), st.sampled_from([12.5, 80.0, 100.0])),  # quality score
    ),
    max_size=14,
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fleet=_paged_fleet, page=st.integers(1, 4),
       column=st.sampled_from(["device_id", "last_seen", "fw_version", "location",
                               "quality"]),
       descending=st.booleans())
def test_keyset_pages_agree_with_one_listing(
    store: MetadataStore,
    fleet: list[tuple[str, int | None, str | None, str | None, float | None]],
    page: int, column: str, descending: bool
) -> None:
    from iotmeter_tui.backend.stores.metadata import DeviceQuality

    # Each example gets its own ids (found by the search on the prefix).
    prefix = uuid.uuid4().hex[:8]
    for i, (stem, last_seen, fw, location, score) in enumerate(fleet):
        device_id = f"{prefix}-{stem}-{i}"
        store.create_device(device_id, location=location)
        if score is not None:
            store.save_quality([DeviceQuality(device_id, score, 1, 0, 0, 0, 0, 0, 0, 1)])
        if last_seen is not None or fw is not None:
            store.apply_collector_batch(
                [DeviceUpdate(device_id, last_seen if last_seen is not None else 0,
                              fw_version=fw)], [])
    every = _ids(store.list_devices(search=prefix, order_by=column, descending=descending))
    walked: list[str] = []
    after = None
    while batch := store.list_devices(search=prefix, order_by=column, descending=descending,
                                      limit=page, after=after):
        walked += _ids(batch)
        after = encode_device_cursor(batch[-1], column, descending)
    assert walked == every and len(every) == len(fleet)
# --- data quality -----------------------------------------------------------------------------

def test_quality_scores_are_upserted_and_read_per_device(store: MetadataStore) -> None:
    from iotmeter_tui.backend.stores.metadata import DeviceQuality

    first = DeviceQuality("q-1", 97.5, 100.0, 2.5, 0.0, 1.0, 0.0, 0, 1200, 1000)
    other = DeviceQuality("q-2", 40.0, 10.0, 0.0, 0.0, 0.0, 2.0, 1, 70_000, 1000)
    store.save_quality([first, other])
    store.save_quality([])  # nothing to write is not an error
    assert store.device_quality() == {"q-1": first, "q-2": other}
    newer = DeviceQuality("q-1", 100.0, 50.0, 0.0, 0.0, 0.0, 0.0, 0, 10, 2000)
    store.save_quality([newer])
    assert store.device_quality(["q-1", "missing"]) == {"q-1": newer}
    assert store.device_quality(f"x-{i}" for i in range(1500)) == {}


def test_devices_carry_their_quality_and_sort_worst_first(store: MetadataStore) -> None:
    from iotmeter_tui.backend.stores.metadata import DeviceQuality

    for device_id in ("good", "bad", "fair", "unscored"):
        store.create_device(device_id, "power_meter_dc")
    store.save_quality([DeviceQuality("good", 100.0, 50, 0, 0, 0, 0, 0, 10, 1000),
                        DeviceQuality("bad", 41.5, 50, 40, 0, 0, 1, 2, 10, 1000),
                        DeviceQuality("fair", 88.0, 50, 6, 0, 0, 0, 0, 10, 1000)])
    worst_first = store.list_devices(order_by="quality")
    assert _ids(worst_first) == ["bad", "fair", "good", "unscored"]  # unscored: last
    assert [d.quality for d in worst_first] == [41.5, 88.0, 100.0, None]
    assert _ids(store.list_devices(order_by="quality", descending=True)) == [
        "good", "fair", "bad", "unscored"]
    assert _ids(store.list_devices(order_by="quality", search="a", limit=1)) == ["bad"]
    got = store.get_device("bad")
    assert got is not None and got.quality == 41.5
    # Other orders and filters still carry the score.
    assert {d.device_id: d.quality for d in store.list_devices(status="unknown")} == {
        "good": 100.0, "bad": 41.5, "fair": 88.0, "unscored": None}
    # A deleted device's score goes with it: registered again, it starts unscored.
    store.delete_device("bad")
    assert "bad" not in store.device_quality()
    store.create_device("bad")
    again = store.get_device("bad")
    assert again is not None and again.quality is None
