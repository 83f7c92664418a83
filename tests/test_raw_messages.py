"""Reading the collector's spool read-only for the raw-message views: complete records only
(a torn tail is not committed), newest segments first within a byte budget, segments last
written before the window skipped; a message archived and still spooled is shown once."""

from __future__ import annotations

import os
from pathlib import Path

from iotmeter_tui.backend.collector.spool import ACCEPTED, Spool, SpoolRecord
from iotmeter_tui.backend.raw_messages import iter_spool, latest_raw
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.archive_writer import ArchiveRecord, ArchiveWriter

T0 = 1_795_740_000_000


def line(seq: int) -> bytes:
    return (b'{"v":2,"device_id":"dc-0001","msg_type":"telemetry","boot":1,"seq":%d,'
            b'"ts":%d,"data":{"voltage_v":750}}' % (seq, T0 + seq))


def record(seq: int) -> SpoolRecord:
    return SpoolRecord(ACCEPTED, T0 + seq, "dc-0001", "telemetry", "power_meter_dc", 1, seq,
                       T0 + seq, "", "", "", line(seq))


def spool_with_two_segments(root: Path) -> tuple[Path, Path]:
    spool = Spool(root / "iotmeter-collector", max_bytes=1 << 20)
    spool.start()
    spool.append([record(0), record(1)])
    spool.commit()
    spool.roll()
    spool.append([record(2)])
    spool.commit()
    spool.close()
    first, second = sorted((root / "iotmeter-collector").glob("*.spool"))
    return first, second


def test_torn_tails_budget_and_old_segments(tmp_path: Path) -> None:
    first, second = spool_with_two_segments(tmp_path)
    with second.open("ab") as f:
        f.write(b"\x50\x00\x00\x00garbage")  # a frame being written: not committed
    assert [r.seq for r in iter_spool(tmp_path)] == [2, 0, 1]
    assert [r.seq for r in iter_spool(tmp_path, budget_bytes=1)] == [2]
    old = (T0 - 3_600_000) / 1000
    os.utime(first, (old, old))
    assert [r.seq for r in iter_spool(tmp_path, since_ms=T0 - 60_000)] == [2]
    assert list(iter_spool(tmp_path / "missing")) == []


def test_archived_and_spooled_messages_are_shown_once(tmp_path: Path) -> None:
    spool_with_two_segments(tmp_path / "spool")
    archive = DirectoryArchive(tmp_path / "archive")
    writer = ArchiveWriter(archive)
    writer.write_batch([ArchiveRecord("dc-0001", "telemetry", T0 + n, line(n))
                        for n in (0, 1)], [], batch_id="b1")
    writer.close()
    found = latest_raw(archive, tmp_path / "spool", "dc-0001", since_ms=T0 - 60_000)
    assert [(m.payload, m.source) for m in found] == [
        (line(2), "spool"), (line(1), "archive"), (line(0), "archive")]
