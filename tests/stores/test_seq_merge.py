"""merge_seq_states: a seq is missing only when no collector has it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from iotmeter_tui.backend.stores.metadata import SeqState, merge_seq_states


def state(collector: str, seen: set[int]) -> SeqState:
    highest = max(seen)
    gaps, run = [], None
    for seq in range(highest + 1):
        if seq not in seen:
            run = (run[0], seq) if run and run[1] == seq - 1 else (seq, seq)
            if gaps and gaps[-1][0] == run[0]:
                gaps[-1] = run
            else:
                gaps.append(run)
    missing = sum(last - first + 1 for first, last in gaps)
    return SeqState("d", 1, highest, len(seen), 0, missing, tuple(gaps), 1, collector)


def test_one_row_is_returned_unchanged() -> None:
    row = state("a", {0, 1, 5})
    assert merge_seq_states([row]) == [row]


def test_seqs_above_a_collectors_highest_are_not_its_gaps_alone() -> None:
    (merged,) = merge_seq_states([state("a", {0, 1, 2}), state("b", {3, 6})])
    assert merged.highest_seq == 6
    assert merged.gaps == ((4, 5),) and merged.missing == 2
    assert merged.received == 5


@given(st.lists(st.sets(st.integers(0, 60), min_size=1), min_size=1, max_size=4))
def test_merged_gaps_are_exactly_what_nobody_received(shares: list[set[int]]) -> None:
    rows = [state(f"c{i}", seen) for i, seen in enumerate(shares)]
    (merged,) = merge_seq_states(rows)
    everyone = set().union(*shares)
    expected = [s for s in range(max(everyone) + 1) if s not in everyone]
    got = [s for first, last in merged.gaps for s in range(first, last + 1)]
    assert got == expected
    assert merged.missing == len(expected)
