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
    RecordHead,
    Spool,
    SpoolFull,
    SpoolRecord,
)


def record(seq: int, payload: bytes = b'{"x":1}', kind: int = ACCEPTED) -> SpoolRecord:
    if kind == REJECTED:
        return SpoolRecord.rejected(received_ms=1_700_000_000_000 + seq,
                                    topic="iot/dc-0001/telemetry", reason="bad_field",
                                    detail="", payload=payload, device_id="dc-0001")
    return SpoolRecord.accepted(received_ms=1_700_000_000_000 + seq, device_id="dc-0001",
                                msg_type="telemetry", device_type="power_meter_dc", boot=3,
                                seq=seq, ts=1_700_000_000_000, payload=payload)


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
    original = SpoolRecord.rejected(received_ms=5, topic="iot/\u00e9/x", reason="not_json",
                                    detail="detail \u2713", payload=b"\xff\x00 raw")
    frame = original.encode()
    assert SpoolRecord.decode(frame[8:]) == original


def test_record_head_reads_kind_device_type_and_reason_in_place() -> None:
    records = [
        SpoolRecord.rejected(received_ms=5, topic="iot/\u00e9/x", reason="not_json",
                             detail="detail \u2713", payload=b"\xff\x00 raw",
                             device_id="d\u00e9v"),
        SpoolRecord.rejected(received_ms=6, topic="t", reason="bad_topic", detail="",
                             payload=b""),
        SpoolRecord.accepted(received_ms=7, device_id="dc-0001", msg_type="telemetry",
                             device_type="power_meter_dc", boot=1, seq=2, ts=3,
                             payload=b'{"v":2}'),
    ]
    block = b"junk" + b"".join(r.encode() for r in records)
    at, heads = 4, []
    for r in records:
        heads.append(RecordHead.unpack(block, at + 8))
        at += len(r.encode())
    assert heads == [RecordHead(r.kind, r.device_id, r.msg_type, r.reason) for r in records]


# Frames written by the positional constructor before the named ones existed (commit
# 43f818e), one per kind and shape. A spool left on disk by that version must replay the
# same, and a record built by name must encode to the very same bytes.
GOLDEN_FRAMES = [
    (SpoolRecord.accepted(received_ms=1795740001300, device_id="dc-0001", msg_type="telemetry",
                          device_type="power_meter_dc", boot=7, seq=1042, ts=1795740001250,
                          payload=b'{"v":2,"seq":1042}'),
     "59000000111291960014e4711aa201000007000000000000001204000000000000e2e3711aa20100000709"
     "0e000000000064632d3030303174656c656d65747279706f7765725f6d657465725f64637b2276223a322c"
     "22736571223a313034327d"),
    (SpoolRecord.accepted(received_ms=1795740002000, device_id="dc-0001", msg_type="status",
                          device_type="power_meter_dc", boot=None, seq=None, ts=1795740001900,
                          payload=b'{"state":"offline"}'),
     "570000000f0d249300d0e6711aa2010000ffffffffffffffffffffffffffffffff6ce6711aa20100000706"
     "0e000000000064632d30303031737461747573706f7765725f6d657465725f64637b227374617465223a22"
     "6f66666c696e65227d"),
    (SpoolRecord.duplicate(received_ms=1795740003000, device_id="dc-0001", msg_type="telemetry",
                           boot=7, seq=1041, ts=1795740000250),
     "390000003c3395ba02b8ea711aa201000007000000000000001104000000000000fadf711aa20100000709"
     "00000000000064632d3030303174656c656d65747279"),
    (SpoolRecord.rejected(received_ms=1795740004000, topic="iot/dc-0002/telemetry",
                          reason="bad_field", detail="data[\u00e9] \u2713",
                          payload=b"\xff\x00 raw", device_id="dc-0002"),
     "60000000581c97f901a0ee711aa2010000ffffffffffffffffffffffffffffffffffffffffffffffff07"
     "00001500090c0064632d30303032696f742f64632d303030322f74656c656d657472796261645f6669656c"
     "64646174615bc3a95d20e29c93ff0020726177"),
    (SpoolRecord.rejected(received_ms=1795740005000, topic="iot/+bad/x", reason="bad_topic",
                          detail="", payload=b"x"),
     "3d0000000e34e53a0188f2711aa2010000ffffffffffffffffffffffffffffffffffffffffffffffff00"
     "00000a00090000696f742f2b6261642f786261645f746f70696378"),
]


@pytest.mark.parametrize(("record_", "frame_hex"), GOLDEN_FRAMES,
                         ids=["telemetry", "status", "duplicate", "rejected", "no-device"])
def test_named_records_encode_to_the_frames_the_positional_ones_wrote(
        record_: SpoolRecord, frame_hex: str) -> None:
    assert record_.encode().hex() == frame_hex


def test_a_segment_written_by_the_previous_version_replays_the_same(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / f"{1_795_740_000_000:016d}.spool").write_bytes(
        b"".join(bytes.fromhex(frame) for _record, frame in GOLDEN_FRAMES))
    spool = Spool(directory, max_bytes=1 << 20)
    assert read_all(spool) == [r for r, _frame in GOLDEN_FRAMES]


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
