"""The fold of new points into rollup rows (stores/rollup_fold.py), as pure logic: what a
batch holds, what is folded, what is sent back to be recomputed, what is kept in memory. The
same rules against a real InfluxDB are in test_timeseries_rollups.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from iotmeter_tui.backend.stores.rollup_fold import FoldedRows, PackedRow, RollupBatch
from iotmeter_tui.backend.stores.rollups import HOUR_MS, MINUTE_MS, ONE_HOUR, ONE_MINUTE
from iotmeter_tui.backend.stores.timeseries import Point

H0 = 1_795_737_600_000  # a whole hour


def pt(device_id: str, ts: int, **fields: float) -> Point:
    return Point(device_id, "power_meter_dc", ts, 1, 0, fields)


def plain(row: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    return {name: list(acc) for name, acc in row.items()}


def test_a_batch_folds_each_minute_and_keeps_no_points() -> None:
    batch = RollupBatch.of([pt("a", H0 + 1_000, v=5.0, w=1), pt("a", H0 + 30_000, v=3.0),
                            pt("a", H0 + 61_000, v=7.0), pt("b", H0 + 2_000, v=-1.0)])
    assert len(batch) == 4 and list(batch.names) == ["v", "w"]
    a0 = batch.minutes[("a", H0)]
    assert (a0.first, a0.newest, a0.ordered) == (H0 + 1_000, H0 + 30_000, True)
    assert a0.row == {"v": [3.0, 5.0, 8.0, 2.0, 3.0, H0 + 30_000.0],
                      "w": [1.0, 1.0, 1.0, 1.0, 1.0, H0 + 1_000.0]}
    assert batch.minutes[("a", H0 + MINUTE_MS)].row == {
        "v": [7.0, 7.0, 7.0, 1.0, 7.0, H0 + 61_000.0]}
    assert batch.minutes[("b", H0)].row == {"v": [-1.0, -1.0, -1.0, 1.0, -1.0, H0 + 2_000.0]}


def test_points_out_of_order_or_at_one_ts_mark_their_minute() -> None:
    batch = RollupBatch.of([pt("a", H0 + 5, v=1.0), pt("a", H0 + 5, v=2.0),
                            pt("b", H0 + 9, v=1.0), pt("b", H0 + 3, v=4.0),
                            pt("c", H0 + 1, v=1.0), pt("c", H0 + 2, v=1.0)])
    assert [batch.minutes[(d, H0)].ordered for d in "abc"] == [False, False, True]
    b = batch.minutes[("b", H0)]
    assert (b.first, b.newest, b.row["v"][4]) == (H0 + 3, H0 + 9, 1.0)  # last: the newest ts


def test_a_point_no_store_could_hold_is_left_out() -> None:
    batch = RollupBatch.of([pt("a", H0, v=float("nan")), pt("bad\x00id", H0, v=1.0),
                            pt("a", H0 + 1, v=2.0)])
    assert len(batch) == 1 and list(batch.minutes) == [("a", H0)]


def test_an_hour_takes_its_minutes_one_after_another() -> None:
    hours = FoldedRows(ONE_HOUR)
    batch = RollupBatch.of([pt("a", H0 + i * MINUTE_MS, v=float(i)) for i in range(61)])
    assert hours.keys(batch.minutes) == {("a", H0), ("a", H0 + HOUR_MS)}
    hours.learn({key: {} for key in hours.keys(batch.minutes)})
    folded, redo = hours.fold(batch.minutes, ["v"])
    assert redo == set()
    assert plain(folded[("a", H0)]) == {
        "v": [0.0, 59.0, sum(range(60)), 60.0, 59.0, H0 + 59.0 * MINUTE_MS]}
    assert plain(folded[("a", H0 + HOUR_MS)]) == {
        "v": [60.0, 60.0, 60.0, 1.0, 60.0, H0 + 60.0 * MINUTE_MS]}
    # A minute older than what its hour holds: the whole hour is recomputed, not folded.
    late = RollupBatch.of([pt("a", H0 + 5 * MINUTE_MS + 1, v=-1.0),
                           pt("b", H0 + 1, v=2.0)])
    hours.learn({("b", H0): {}})
    folded, redo = hours.fold(late.minutes, ["v"])
    assert (set(folded), redo) == ({("b", H0)}, {("a", H0)})


def test_only_points_newer_than_the_whole_row_are_folded() -> None:
    rows = FoldedRows(ONE_MINUTE)
    rows.learn({("a", H0): {"v": [1.0, 4.0, 5.0, 2.0, 4.0, H0 + 10_000.0],
                            "w": [0.0, 0.0, 0.0, 1.0, 0.0, H0 + 20_000.0]},
                ("b", H0): {}})
    newer = RollupBatch.of([pt("a", H0 + 30_000, v=9.0, x=1.0), pt("b", H0 + 5, v=2.0)])
    folded, redo = rows.fold(newer.minutes, ["v"])  # x: not a field rollups hold
    assert redo == set()
    assert plain(folded[("a", H0)]) == {"v": [1.0, 9.0, 14.0, 3.0, 9.0, H0 + 30_000.0],
                                        "w": [0.0, 0.0, 0.0, 1.0, 0.0, H0 + 20_000.0]}
    assert plain(rows.rows[("b", H0)]) == {"v": [2.0, 2.0, 2.0, 1.0, 2.0, H0 + 5.0]}
    # Older than w's newest (though newer than v's was), or twice at one ts: recomputed.
    older = RollupBatch.of([pt("a", H0 + 15_000, v=0.0)])
    assert rows.fold(older.minutes, ["v"]) == ({}, {("a", H0)})
    twice = RollupBatch.of([pt("b", H0 + 9, v=1.0), pt("b", H0 + 9, v=1.0)])
    assert rows.fold(twice.minutes, ["v"]) == ({}, {("b", H0)})
    # A write that failed: the rows are read from the store again.
    rows.forget([("a", H0), ("zz", H0)])
    assert rows.unknown([("a", H0), ("b", H0)]) == [("a", H0)]


def test_rows_are_kept_around_the_newest_bucket_written() -> None:
    now = H0 + 30 * MINUTE_MS + 5_000
    current = now - now % MINUTE_MS
    rows = FoldedRows(ONE_MINUTE)
    rows.keep({("a", current - 5 * MINUTE_MS): {}, ("a", current - 4 * MINUTE_MS): {},
               ("a", current - 3 * MINUTE_MS): {}}, now)
    assert sorted(b for _, b in rows.rows) == [current - 4 * MINUTE_MS, current - 3 * MINUTE_MS]
    assert rows.unknown([("a", current - 3 * MINUTE_MS), ("a", current - 5 * MINUTE_MS)]) == [
        ("a", current - 5 * MINUTE_MS)]
    # A clock far ahead does not move the window: the wall clock's next bucket is as far as
    # it goes, and the far bucket itself is written but not kept.
    far = current + 10_000 * MINUTE_MS
    rows.keep({("b", far): {}, ("b", current + MINUTE_MS): {}}, now)
    assert list(rows.rows) == [("b", current + MINUTE_MS)]
    # The hour moves on: the hour before the previous one goes.
    hours = FoldedRows(ONE_HOUR)
    hours.keep({("a", H0): {}, ("a", H0 + HOUR_MS): {}}, H0 + HOUR_MS + 1)
    hours.keep({("a", H0 + 2 * HOUR_MS): {}}, H0 + 2 * HOUR_MS + 1)
    assert sorted(b for _, b in hours.rows) == [H0 + HOUR_MS, H0 + 2 * HOUR_MS]


def test_a_packed_row_folds_puts_and_adds_fields_like_a_dict_of_lists() -> None:
    row = PackedRow({"v": [1.0, 4.0, 5.0, 2.0, 4.0, 10.0]})
    other = PackedRow({"v": [0.0, 0.0, 0.0, 1.0, 0.0, 1.0]})
    assert row.layout is other.layout  # one layout for every row with these fields
    row.fold("v", [0.5, 6.0, 6.5, 2.0, 6.0, 20.0])
    row.fold("w", [3.0, 3.0, 3.0, 1.0, 3.0, 15.0])
    assert plain(row) == {"v": [0.5, 6.0, 11.5, 4.0, 6.0, 20.0],
                          "w": [3.0, 3.0, 3.0, 1.0, 3.0, 15.0]}
    assert row.newest() == 20.0 and PackedRow().newest() == float("-inf")
    row.fold("v", [9.0, 9.0, 9.0, 1.0, 9.0, 5.0])  # older: `last` stays
    assert row["v"][4] == 6.0
    row.put("w", [7.0, 7.0, 7.0, 1.0, 7.0, 16.0])
    assert plain(row)["w"] == [7.0, 7.0, 7.0, 1.0, 7.0, 16.0] and len(row) == 2
