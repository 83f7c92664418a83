"""The archive sink streams a sealed spool segment into objects: its memory does not follow the
segment's size, its objects are the ones it wrote when it held the segment whole, and a crash
between the puts and the cursor leaves every message in the archive exactly once after the
replay. Real spool files, a real directory archive and moto's S3."""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.collector.sinks import ArchiveSink, CursorFile
from iotmeter_tui.backend.collector.spool import (
    ACCEPTED,
    DUPLICATE,
    REJECTED,
    RecordHead,
    Spool,
    SpoolRecord,
)
from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.backend.stores.archive import ArchiveStore
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.archive_s3 import S3Archive
from iotmeter_tui.backend.stores.archive_writer import (
    ArchiveReader,
    ArchiveRecord,
    ArchiveWriter,
    RejectedRecord,
)
from testsupport import S3Server
from testsupport.fleet import telemetry

DEVICES = [f"dc-{n:04d}" for n in range(10)]
T0_MS = 1_795_740_000_000


def _record(device_id: str, seq: int) -> SpoolRecord:
    payload = telemetry(device_id, 1, seq)[1]
    return SpoolRecord(kind=ACCEPTED, received_ms=T0_MS + seq * 10, device_id=device_id,
                       msg_type=protocol.TELEMETRY, device_type="power_meter_dc", boot=1,
                       seq=seq, ts=T0_MS + seq * 1000, topic="", reason="", detail="",
                       payload=payload)


def sealed_spool(directory: Path, nbytes: int) -> tuple[Spool, int]:
    """A spool whose first segment is sealed and holds about `nbytes` of telemetry from
    DEVICES in turn (and a duplicate marker now and then, which the archive skips).
    Returns the spool and the messages per device."""
    spool = Spool(directory, max_bytes=1 << 30, segment_max_bytes=1 << 30)
    seq = 0
    while spool.committed_size(spool.active_segment) < nbytes:
        batch = [_record(d, seq + i) for i in range(50) for d in DEVICES]
        batch.append(SpoolRecord(kind=DUPLICATE, received_ms=T0_MS, device_id=DEVICES[0],
                                 msg_type=protocol.TELEMETRY, device_type="", boot=1, seq=0,
                                 ts=0, topic="", reason="", detail="", payload=b""))
        spool.append(batch)
        spool.commit()
        seq += 50
    spool.roll()
    return spool, seq


def archive_all(sink: ArchiveSink, spool: Spool) -> int:
    """What SinkRunner does, without the thread: batches until there is none. Returns the
    number of batches written."""
    cursor = spool.normalise(sink.load_cursor())
    batches = 0
    while True:
        records, end = sink.next_batch(spool, cursor)
        if records:
            sink.write(records, end)
            sink.save_cursor(end)
            batches += 1
        elif end == cursor:
            return batches
        cursor = end


def archive_peak(tmp_path: Path, segment_bytes: int, *, whole: bool = False) -> int:
    """tracemalloc's peak while the sink archives the segment; `whole`: instead, as the sink
    did before it streamed, every record of the segment in one write_batch."""
    spool, _ = sealed_spool(tmp_path / "spool", segment_bytes)
    writer = ArchiveWriter(DirectoryArchive(tmp_path / "archive"))
    sink = ArchiveSink(writer, CursorFile(tmp_path / "archive.cursor"), source="test",
                       part_bytes=64 << 10, pending_bytes=256 << 10)
    tracemalloc.start()
    try:
        if whole:
            segment = spool.segments()[0]
            spans = [(offset, length) for offset, length, head in spool.scan(segment)
                     if head.kind == ACCEPTED]
            with spool.open_segment(segment) as reader:
                writer.write_batch(
                    [ArchiveRecord(r.device_id, r.msg_type, r.received_ms, r.payload)
                     for r in reader.frames(spans)],
                    [], sink.batch_id(segment))
        else:
            assert archive_all(sink, spool) == 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        writer.close()
        spool.close()
    return peak


def test_memory_does_not_follow_the_segment(tmp_path: Path) -> None:
    small = archive_peak(tmp_path / "small", 1 << 20)
    large = archive_peak(tmp_path / "large", 8 << 20)
    # What grows is the index: 12 bytes per record, against ~280 per record taken whole.
    assert large < 2 * small, (small, large)
    whole = archive_peak(tmp_path / "whole", 8 << 20, whole=True)
    assert whole > 8 * large, (large, whole)


class CrashingStore:
    """A real store whose process "dies" after `puts` puts: every later put fails, as if the
    collector had been killed with those objects written and its cursor not yet moved."""

    def __init__(self, store: ArchiveStore, puts: int) -> None:
        self.store = store
        self.left = puts
        self.lock = threading.Lock()

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        with self.lock:
            self.left -= 1
            dead = self.left < 0
        if dead:
            raise RuntimeError("killed")
        self.store.put(key, data, durable=durable)

    def sync(self) -> None:
        self.store.sync()


def test_a_crash_mid_segment_leaves_each_message_once(tmp_path: Path, s3: S3Server) -> None:
    spool, per_device = sealed_spool(tmp_path / "spool", 2 << 20)

    def archive(bucket: str) -> S3Archive:
        return S3Archive(bucket, s3.endpoint, s3.access_key, s3.secret_key, s3.region)

    def sink(store: ArchiveStore | CrashingStore, cursor: str) -> ArchiveSink:
        return ArchiveSink(ArchiveWriter(store), CursorFile(tmp_path / cursor),  # type: ignore[arg-type]
                           source="kill-test", part_bytes=64 << 10)

    # Killed after some of the segment's objects: each device's telemetry is ~200 KiB of
    # frames here, so four parts of 64 KiB, 40 objects in all.
    crashed = archive("stream-crash")
    first = sink(CrashingStore(crashed, 15), "crash.cursor")
    try:
        archive_all(first, spool)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the store never failed")
    first.close()
    assert CursorFile(tmp_path / "crash.cursor").load() is None  # the segment is not done
    partial = set(crashed.list())
    assert len(partial) == 15
    # The next start replays from the cursor, overwriting the half-written chunk.
    again = sink(crashed, "crash.cursor")
    archive_all(again, spool)
    again.close()

    clean_store = archive("stream-clean")
    clean = sink(clean_store, "clean.cursor")
    archive_all(clean, spool)
    clean.close()

    keys = list(crashed.list())
    assert keys == list(clean_store.list())
    assert partial < set(keys)
    assert all(crashed.get(k) == clean_store.get(k) for k in keys)
    assert len(keys) == 4 * len(DEVICES)  # each device's telemetry in four parts
    reader = ArchiveReader(crashed)
    for device_id in DEVICES:
        seqs = [protocol.loads(line)["seq"] for line in reader.messages(device_id, "telemetry")]
        assert seqs == list(range(per_device)), device_id  # each once, in spool order
    spool.close()


def test_objects_are_those_of_the_segment_taken_whole(tmp_path: Path) -> None:
    """Names and bytes as before the sink streamed: a segment archived by the previous
    version and replayed by this one after a crash overwrites, never adds."""
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30)
    records = []
    for seq in range(300):
        for device_id in DEVICES[:4]:
            records.append(_record(device_id, seq))
        if seq % 50 == 0:
            records.append(SpoolRecord(
                kind=ACCEPTED, received_ms=T0_MS + seq * 10, device_id=DEVICES[0],
                msg_type=protocol.HELLO, device_type="power_meter_dc", boot=1, seq=seq, ts=0,
                topic="", reason="", detail="", payload=b'{"hello":\n1}'))
            records.append(SpoolRecord(
                kind=REJECTED, received_ms=T0_MS + seq * 10, device_id="", msg_type="",
                device_type="", boot=-1, seq=-1, ts=0, topic="iotmeter/x", reason="not_json",
                detail="bad", payload=b"\xff\xfe"))
    spool.append(records)
    spool.commit()
    spool.roll()
    segment = spool.segments()[0]
    streamed = DirectoryArchive(tmp_path / "streamed")
    writer = ArchiveWriter(streamed)
    sink = ArchiveSink(writer, CursorFile(tmp_path / "c"), source="iotmeter-collector")
    archive_all(sink, spool)
    writer.close()
    held = DirectoryArchive(tmp_path / "held")
    whole = ArchiveWriter(held)
    whole.write_batch(
        [ArchiveRecord(r.device_id, r.msg_type, r.received_ms, r.payload)
         for r in records if r.kind == ACCEPTED],
        [RejectedRecord(r.reason, r.detail, r.topic, None, r.received_ms, r.payload)
         for r in records if r.kind == REJECTED],
        batch_id=f"{segment}-iotmeter-collector")
    whole.close()
    keys = list(streamed.list())
    assert len(keys) == 4 + 1 + 1  # telemetry of four devices, one's hellos, one reason
    assert keys == list(held.list())
    assert all(streamed.get(k) == held.get(k) for k in keys)
    spool.close()


def test_scan_reads_frames_larger_than_its_block(tmp_path: Path) -> None:
    spool, _ = sealed_spool(tmp_path / "spool", 64 << 10)
    segment = spool.segments()[0]
    small_blocks = list(spool.scan(segment, block_bytes=100))  # smaller than any frame
    assert small_blocks == list(spool.scan(segment))
    assert len(small_blocks) > 200
    spans = [(offset, length) for offset, length, _ in small_blocks]
    with spool.open_segment(segment) as reader:
        records = list(reader.frames(reversed(spans)))
    assert [RecordHead(r.kind, r.device_id, r.msg_type, r.reason) for r in records] == [
        head for _, _, head in reversed(small_blocks)]
    assert {r.kind for r in records} == {ACCEPTED, DUPLICATE}
    spool.close()


def test_a_stop_past_its_budget_leaves_the_segment_to_the_next_start(tmp_path: Path) -> None:
    """A segment of a large fleet can take longer than the stop's budget: the sink gives up
    between objects once the drain's time is over, without moving its cursor, and the next
    start writes the segment whole (overwriting what the stop had written)."""
    spool, per_device = sealed_spool(tmp_path / "spool", 1 << 20)
    archive = DirectoryArchive(tmp_path / "archive")
    stopping = ArchiveSink(ArchiveWriter(archive), CursorFile(tmp_path / "c"), source="s",
                           part_bytes=32 << 10)
    stopping.draining = True
    stopping.stop_by = time.monotonic() - 1  # the budget is spent
    objects, end = stopping.next_batch(spool, spool.normalise(None))
    try:
        stopping.write(objects, end)
    except StoreError:
        pass
    else:
        raise AssertionError("the sink wrote on past its stop")
    stopping.close()
    assert len(list(archive.list())) < len(objects)
    assert stopping.load_cursor() is None
    after = ArchiveSink(ArchiveWriter(archive), CursorFile(tmp_path / "c"), source="s",
                        part_bytes=32 << 10)
    archive_all(after, spool)
    after.close()
    assert len(list(archive.list())) == len(objects)
    seqs = [protocol.loads(line)["seq"]
            for line in ArchiveReader(archive).messages(DEVICES[3], "telemetry")]
    assert seqs == list(range(per_device))
    spool.close()
