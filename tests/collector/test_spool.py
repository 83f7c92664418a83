"""The write-ahead spool on real files: commit, read, torn tails, release, bounds, full disk."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotmeter_tui.backend.collector.spool import (
    ACCEPTED,
    REJECTED,
    Position,
    Spool,
    SpoolFull,
    SpoolRecord,
)


def record(seq: int, payload: bytes = b'{"x":1}', kind: int = ACCEPTED) -> SpoolRecord:
    return SpoolRecord(kind, 1_700_000_000_000 + seq, "dc-0001", "telemetry", "power_meter_dc",
                       3, seq, 1_700_000_000_000, "iot/dc-0001/telemetry",
                       "bad_field" if kind == REJECTED else "", "", payload)


def read_all(spool: Spool, start: Position | None = None) -> list[SpoolRecord]:
    position = spool.normalise(start)
    out: list[SpoolRecord] = []
    while True:
        batch, nxt = spool.read(position, max_records=7)
        if not batch and nxt == position:
            return out
        out.extend(batch)
        position = nxt


def test_record_round_trip_keeps_every_field() -> None:
    original = SpoolRecord(REJECTED, 5, "", "", "", -1, -1, -1, "iot/\u00e9/x", "not_json",
                           "detail \u2713", b"\xff\x00 raw")
    frame = original.encode()
    assert SpoolRecord.decode(frame[8:]) == original


def test_only_committed_records_are_visible(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([record(0), record(1)])
    assert read_all(spool) == []
    spool.commit()
    assert [r.seq for r in read_all(spool)] == [0, 1]


def test_reads_follow_across_segments_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for seq in range(30):
        spool.append([record(seq)])
        spool.commit()
        if seq % 10 == 9:
            spool.roll()
    assert [r.seq for r in read_all(spool)] == list(range(30))
    assert len(spool.segments()) == 4


def test_reopen_replays_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([record(s) for s in range(5)])
    spool.commit()
    segment = spool.active_segment
    spool.close()
    path = tmp_path / f"{segment:016d}.spool"
    with open(path, "ab") as fh:  # half a frame, as a crash mid-write leaves it
        fh.write(record(5).encode()[:11])
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert [r.seq for r in read_all(reopened)] == [0, 1, 2, 3, 4]
    assert path.stat().st_size == reopened.committed_size(segment)


def test_corrupt_record_ends_the_valid_prefix(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([record(s) for s in range(3)])
    spool.commit()
    segment = spool.active_segment
    spool.close()
    path = tmp_path / f"{segment:016d}.spool"
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF  # flip a byte in the last record's payload
    path.write_bytes(bytes(data))
    assert [r.seq for r in read_all(Spool(tmp_path, max_bytes=1 << 20))] == [0, 1]


def test_release_deletes_only_sealed_segments_every_cursor_passed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    first = spool.active_segment
    spool.append([record(0)])
    end_first = spool.commit()
    spool.roll()
    spool.append([record(1)])
    spool.commit()
    assert spool.release([end_first, Position(first, 0)]) == []  # one sink still behind
    assert spool.release([end_first, end_first]) == [first]
    assert spool.segments() == [spool.active_segment]
    # A cursor from before the oldest segment means "from the start".
    assert [r.seq for r in read_all(spool, Position(first, 0))] == [1]


def test_bound_raises_spool_full_and_keeps_committed_data(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=2_000)
    spool.append([record(s) for s in range(10)])
    spool.commit()
    with pytest.raises(SpoolFull):
        spool.append([record(s, b"x" * 2_000) for s in range(10, 12)])
    assert [r.seq for r in read_all(spool)] == list(range(10))


def test_an_empty_spool_takes_a_turn_larger_than_its_bound(tmp_path: Path) -> None:
    """Otherwise a turn bigger than the bound would be held for ever."""
    spool = Spool(tmp_path, max_bytes=1_000)
    spool.append([record(s, b"x" * 600) for s in range(3)])
    spool.commit()
    with pytest.raises(SpoolFull):
        spool.append([record(3)])
    assert [r.seq for r in read_all(spool)] == [0, 1, 2]


def test_segment_rolls_by_age_only_when_committed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_max_age_s=10)
    first = spool.active_segment
    assert not spool.roll_if_due(now=1e12)  # empty: nothing to seal
    spool.append([record(0)])
    assert not spool.roll_if_due(now=1e12)  # not committed yet
    spool.commit()
    assert spool.roll_if_due(now=1e12)
    assert spool.is_sealed(first) and spool.active_segment != first


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_disk_is_spool_full_and_nothing_half_written(tiny_disk: Path) -> None:
    spool = Spool(tiny_disk, max_bytes=1 << 30)
    written = 0
    with pytest.raises(SpoolFull, match="disk is full"):
        for seq in range(10_000):
            spool.append([record(seq, os.urandom(1_000))])
            spool.commit()
            written += 1
    assert written > 10
    # What was committed reads back whole; the failed append left no partial frame.
    assert [r.seq for r in read_all(spool)] == list(range(written))
    spool.close()
    segment_file = tiny_disk / f"{spool.active_segment:016d}.spool"
    assert Spool._recover(segment_file) == spool.committed_size(spool.active_segment)
