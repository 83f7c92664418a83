"""The pure rules of rollups.py: durations, which resolution a query can read, how a chart's
range is aligned, which buckets a batch touches."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotmeter_tui.backend.stores.rollups import (
    HOUR_MS,
    MINUTE_MS,
    ONE_HOUR,
    ONE_MINUTE,
    Retention,
    aligned_range,
    bucket_runs,
    parse_retention,
    readable_resolution,
    touched_buckets,
)
from iotmeter_tui.backend.stores.timeseries import bucket_width

DAY_MS = 24 * HOUR_MS


@pytest.mark.parametrize(("text", "ms"), [
    ("1h", HOUR_MS), ("30d", 30 * DAY_MS), ("52w", 52 * 7 * DAY_MS), (" 12H ", 12 * HOUR_MS),
    ("inf", None), ("INF", None), ("forever", None),
])
def test_durations(text: str, ms: int | None) -> None:
    assert parse_retention(text) == ms


@pytest.mark.parametrize("text", ["0h", "30", "30m", "1.5d", "-1d", "1y", "", "d", "3600s"])
def test_bad_durations_say_what_is_wanted(text: str) -> None:
    with pytest.raises(ValueError, match=r"30d|1h minimum"):
        parse_retention(text)


def test_retention_per_level_and_recompute_floor() -> None:
    kept = Retention(raw_ms=DAY_MS, minute_ms=30 * DAY_MS, hour_ms=None)
    assert (kept.of(None), kept.of(ONE_MINUTE), kept.of(ONE_HOUR)) == (DAY_MS, 30 * DAY_MS, None)
    now = 100 * DAY_MS
    assert kept.recompute_floor(ONE_MINUTE, now) == now - DAY_MS + MINUTE_MS
    assert kept.recompute_floor(ONE_HOUR, now) == now - 30 * DAY_MS + HOUR_MS
    assert Retention().recompute_floor(ONE_MINUTE, now) == 0


def test_readable_resolution_needs_whole_buckets() -> None:
    assert readable_resolution(0, 3 * HOUR_MS, HOUR_MS) is ONE_HOUR
    assert readable_resolution(0, 3 * HOUR_MS, 2 * MINUTE_MS) is ONE_MINUTE
    assert readable_resolution(MINUTE_MS, 2 * HOUR_MS + MINUTE_MS, HOUR_MS) is ONE_MINUTE
    assert readable_resolution(1, 3 * HOUR_MS + 1, HOUR_MS) is None  # start off the minute
    assert readable_resolution(0, 3 * HOUR_MS - 1, HOUR_MS) is None  # end off the minute
    assert readable_resolution(0, HOUR_MS, 90_000) is None  # width of 1.5 minutes
    assert readable_resolution(0, HOUR_MS, 30_000) is None  # finer than a minute


@given(start=st.integers(0, 10**13), span=st.integers(1, 400 * DAY_MS),
       max_points=st.integers(1, 2000))
def test_aligned_range_covers_the_range_with_whole_rollup_buckets(
        start: int, span: int, max_points: int) -> None:
    end = start + span
    new_start, new_end = aligned_range(start, end, max_points)
    assert new_start <= start and new_end >= end
    width = bucket_width(new_start, new_end, max_points)
    if bucket_width(start, end, max_points) < MINUTE_MS:
        assert (new_start, new_end) == (start, end)  # short ranges read raw points
        return
    assert readable_resolution(new_start, new_end, width) is not None
    assert start - new_start < max(width, HOUR_MS)  # at most about one bucket earlier
    assert -(-(end - new_start) // width) <= max_points


def test_touched_buckets_and_runs() -> None:
    keys = [("a", 5), ("a", MINUTE_MS + 1), ("b", 3 * MINUTE_MS), ("a", 7), ("b", 0)]
    assert touched_buckets(keys, MINUTE_MS) == {"a": [0, MINUTE_MS], "b": [0, 3 * MINUTE_MS]}
    assert touched_buckets(keys, MINUTE_MS, floor_ms=MINUTE_MS) == {
        "a": [MINUTE_MS], "b": [3 * MINUTE_MS]}
    assert bucket_runs([0, MINUTE_MS, 3 * MINUTE_MS], MINUTE_MS) == [
        (0, 2 * MINUTE_MS), (3 * MINUTE_MS, 4 * MINUTE_MS)]
    assert bucket_runs([], MINUTE_MS) == []
