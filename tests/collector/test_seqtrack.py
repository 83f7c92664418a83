"""SeqTracker: exact duplicate detection, reorder tolerance, gaps after the timeout."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from iotmeter_tui.backend.collector.seqtrack import (
    BOOTS_KEPT,
    MAX_RANGES,
    BootTrack,
    SeqTracker,
    Verdict,
)

TIMEOUT = 5_000


def test_in_order_messages_are_new_and_leave_no_gap() -> None:
    tracker = SeqTracker(TIMEOUT)
    assert [tracker.observe("d", 1, s, 0) for s in range(5)] == [Verdict.NEW] * 5
    track = tracker.get("d", 1)
    assert track is not None
    assert (track.highest, track.received, track.missing, track.gap_count) == (4, 5, 0, 0)


def test_repeat_is_duplicate_even_far_below_the_highest() -> None:
    tracker = SeqTracker(TIMEOUT)
    for s in range(10_000):
        tracker.observe("d", 1, s, 0)
    assert tracker.observe("d", 1, 3, 0) is Verdict.DUPLICATE
    assert tracker.observe("d", 1, 9_999, 0) is Verdict.DUPLICATE
    track = tracker.get("d", 1)
    assert track is not None and track.duplicates == 2 and track.received == 10_000


def test_reordered_message_fills_before_timeout_and_is_never_a_gap() -> None:
    tracker = SeqTracker(TIMEOUT)
    tracker.observe("d", 1, 0, 0)
    tracker.observe("d", 1, 2, 100)
    assert tracker.sweep(1_000) == 0
    assert tracker.observe("d", 1, 1, 1_200) is Verdict.FILL
    assert tracker.sweep(100_000) == 0
    track = tracker.get("d", 1)
    assert track is not None and track.gap_count == 0 and track.ranges() == ()


def test_missing_seq_becomes_gap_only_after_timeout() -> None:
    tracker = SeqTracker(TIMEOUT)
    tracker.observe("d", 1, 0, 0)
    tracker.observe("d", 1, 4, 1_000)  # 1..3 missing from t=1000
    assert tracker.sweep(5_999) == 0
    assert tracker.sweep(6_000) == 3
    assert tracker.sweep(60_000) == 0  # declared once
    track = tracker.get("d", 1)
    assert track is not None and track.gap_count == 3 and track.ranges() == ((1, 3),)
    # A very late arrival still fills (nothing is lost), and the gap shrinks.
    assert tracker.observe("d", 1, 2, 70_000) is Verdict.FILL
    assert track.gap_count == 2 and track.ranges() == ((1, 1), (3, 3))


def test_reboot_starts_a_new_sequence() -> None:
    tracker = SeqTracker(TIMEOUT)
    for s in range(3):
        tracker.observe("d", 7, s, 0)
    assert [tracker.observe("d", 8, s, 0) for s in range(3)] == [Verdict.NEW] * 3
    assert tracker.observe("d", 7, 1, 0) is Verdict.DUPLICATE


def test_only_recent_boots_are_kept() -> None:
    tracker = SeqTracker(TIMEOUT)
    for boot in range(BOOTS_KEPT + 2):
        tracker.observe("d", boot, 0, 0)
    assert tracker.get("d", 0) is None
    assert tracker.observe("d", 0, 5, 0) is Verdict.DUPLICATE  # older than memory


def test_restore_keeps_open_ranges_fillable() -> None:
    track = BootTrack.restore(highest=10, received=8, duplicates=1, gaps=[(3, 4)],
                              restored_at_ms=0)
    assert track.gap_count == 2
    assert track.observe(4, 1) is Verdict.FILL
    assert track.observe(4, 1) is Verdict.DUPLICATE
    assert track.observe(7, 1) is Verdict.DUPLICATE


def test_a_device_skipping_every_other_seq_keeps_a_bounded_list_of_ranges() -> None:
    """Issue 15 item 12: the registry stores every open range with each write, so a device
    skipping every other seq made that row grow to 10,000 ranges. The newest MAX_RANGES are
    kept; the older ones stay counted as gaps (missing seqs are never under-counted)."""
    assert MAX_RANGES <= 1_000
    tracker = SeqTracker(TIMEOUT)
    sent = 5 * MAX_RANGES
    for s in range(0, 2 * sent, 2):  # 1, 3, 5, ... never arrive
        tracker.observe("d", 1, s, 0)
    tracker.sweep(10 * TIMEOUT)
    track = tracker.get("d", 1)
    assert track is not None
    assert len(track.ranges()) == MAX_RANGES
    assert track.ranges()[-1] == (2 * sent - 3, 2 * sent - 3)  # the newest are kept
    assert track.gap_count == sent - 1  # every missing seq, kept or given up
    assert track.received == sent
    # A newest gap still fills; a given-up one is a duplicate (its loss is already counted).
    assert tracker.observe("d", 1, 2 * sent - 3, 0) is Verdict.FILL
    assert tracker.observe("d", 1, 1, 0) is Verdict.DUPLICATE
    assert track.gap_count == sent - 2


def test_restore_bounds_a_long_stored_list_of_ranges() -> None:
    gaps = [(2 * i + 1, 2 * i + 1) for i in range(3 * MAX_RANGES)]
    track = BootTrack.restore(highest=6 * MAX_RANGES, received=3 * MAX_RANGES, duplicates=0,
                              gaps=gaps, restored_at_ms=0)
    assert len(track.ranges()) == MAX_RANGES
    assert track.ranges()[0] == gaps[-MAX_RANGES]
    assert track.gap_count == 3 * MAX_RANGES


def test_take_changed_reports_each_state_once() -> None:
    tracker = SeqTracker(TIMEOUT)
    tracker.observe("a", 1, 0, 0)
    tracker.observe("b", 1, 0, 0)
    assert sorted((d, b) for d, b, _ in tracker.take_changed()) == [("a", 1), ("b", 1)]
    assert tracker.take_changed() == []
    tracker.mark_changed([("a", 1)])
    assert [(d, b) for d, b, _ in tracker.take_changed()] == [("a", 1)]


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=400), st.randoms())
def test_any_delivery_order_stores_each_seq_exactly_once(seqs: list[int],
                                                         rnd: random.Random) -> None:
    delivered = list(seqs)
    rnd.shuffle(delivered)
    tracker = SeqTracker(TIMEOUT)
    accepted = [s for s in delivered if tracker.observe("d", 0, s, 0) is not Verdict.DUPLICATE]
    assert sorted(accepted) == sorted(set(seqs))
    track = tracker.get("d", 0)
    if seqs:
        assert track is not None
        assert track.missing == (max(seqs) + 1) - len(set(seqs))
        tracker.sweep(TIMEOUT)
        assert track.gap_count == track.missing
