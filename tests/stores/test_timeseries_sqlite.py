"""SQLite adapter specifics: how a sqlite:// URL names its file, and first use of a new file
from several threads at once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from iotmeter_tui.backend.errors import StoreRejected
from iotmeter_tui.backend.stores.factory import open_timeseries
from iotmeter_tui.backend.stores.timeseries import Point
from iotmeter_tui.backend.stores.timeseries_sqlite import SqliteTimeSeries

T0 = 1_795_740_000_123


def pt(device_id: str, ts: int, seq: int = 1, **fields: float) -> Point:
    return Point(device_id, "power_meter_dc", ts, 1, seq, fields)


def test_urls_name_files_as_config_local_path_reads_them(tmp_path: Path) -> None:
    """sqlite:///abs and sqlite:////abs are the same file; %-escapes are decoded."""
    directory = tmp_path / "my dir"
    three = open_timeseries("sqlite://" + str(directory / "ts.db"))
    three.write([pt("dev", T0, v=1.0)])
    three.close()
    four = open_timeseries(f"sqlite:///{directory}/ts.db")
    escaped = open_timeseries("sqlite://" + str(tmp_path) + "/my%20dir/ts.db")
    assert four.counts() == escaped.counts() == {"dev": 1}
    four.close()
    escaped.close()
    assert [p.name for p in tmp_path.iterdir()] == ["my dir"]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:////", "mysql://db/x"])
def test_urls_naming_no_store_are_refused(url: str) -> None:
    with pytest.raises(StoreRejected):
        open_timeseries(url)


def test_threads_first_using_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Switching a new file to WAL ignores busy_timeout: threads racing to do it used to get
    'database is locked' (about 1 round in 30 of this test)."""
    for attempt in range(60):
        store = SqliteTimeSeries(tmp_path / f"race-{attempt}.db")
        start = threading.Barrier(6)
        errors: list[BaseException] = []

        def work(n: int, store: SqliteTimeSeries = store, start: threading.Barrier = start,
                 errors: list[BaseException] = errors) -> None:
            start.wait()
            try:
                store.write([pt(f"t-{n}", T0 + i, i, v=float(i)) for i in range(10)])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [], f"attempt {attempt}"
        assert store.counts() == {f"t-{n}": 10 for n in range(6)}
        store.close()
