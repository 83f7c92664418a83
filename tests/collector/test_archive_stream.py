"""The archive sink streams a sealed spool segment in chunks: its memory does not grow with the
segment, and a crash between a chunk's puts and its cursor leaves every message in the archive
exactly once after the replay. Real spool files, a real directory archive and moto's S3."""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.collector.sinks import ArchiveSink, CursorFile
from iotmeter_tui.backend.collector.spool import ACCEPTED, DUPLICATE, Position, Spool, SpoolRecord
from iotmeter_tui.backend.stores.archive import ArchiveStore
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.archive_s3 import S3Archive
from iotmeter_tui.backend.stores.archive_writer import ArchiveReader, ArchiveWriter
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


def archive_peak(tmp_path: Path, segment_bytes: int, chunk_bytes: int) -> tuple[int, int]:
    """(tracemalloc's peak while the sink archives the segment, batches written)."""
    spool, _ = sealed_spool(tmp_path / "spool", segment_bytes)
    writer = ArchiveWriter(DirectoryArchive(tmp_path / "archive"))
    sink = ArchiveSink(writer, CursorFile(tmp_path / "archive.cursor"), source="test",
                       chunk_bytes=chunk_bytes)
    tracemalloc.start()
    try:
        batches = archive_all(sink, spool)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        writer.close()
        spool.close()
    return peak, batches


def test_memory_does_not_grow_with_the_segment(tmp_path: Path) -> None:
    chunk = 256 << 10
    small, small_batches = archive_peak(tmp_path / "small", 1 << 20, chunk)
    large, large_batches = archive_peak(tmp_path / "large", 8 << 20, chunk)
    assert large_batches >= 6 * small_batches  # it did stream the large one in chunks
    assert large < 1.5 * small, (small, large)
    # The same segment taken whole (as before chunks) holds several times as much: the
    # measure can tell the two apart.
    whole, whole_batches = archive_peak(tmp_path / "whole", 8 << 20, 1 << 30)
    assert whole_batches == 1
    assert whole > 3 * large, (large, whole)


class CrashingStore:
    """A real store whose process "dies" after `puts` puts: every later put fails, as if the
    collector had been killed with those objects written and its cursor not yet moved."""

    def __init__(self, store: ArchiveStore, puts: int) -> None:
        self.store = store
        self.left = puts
        self.lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        with self.lock:
            self.left -= 1
            dead = self.left < 0
        if dead:
            raise RuntimeError("killed")
        self.store.put(key, data)


def test_a_crash_mid_segment_leaves_each_message_once(tmp_path: Path, s3: S3Server) -> None:
    spool, per_device = sealed_spool(tmp_path / "spool", 2 << 20)
    chunk = 256 << 10

    def archive(bucket: str) -> S3Archive:
        return S3Archive(bucket, s3.endpoint, s3.access_key, s3.secret_key, s3.region)

    def sink(store: ArchiveStore | CrashingStore, cursor: str) -> ArchiveSink:
        return ArchiveSink(ArchiveWriter(store), CursorFile(tmp_path / cursor),  # type: ignore[arg-type]
                           source="kill-test", chunk_bytes=chunk)

    # Killed in the third chunk: two chunks' objects and their cursor are stored, the third
    # chunk's objects only in part.
    crashed = archive("stream-crash")
    first = sink(CrashingStore(crashed, 2 * len(DEVICES) + 4), "crash.cursor")
    try:
        archive_all(first, spool)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the store never failed")
    first.close()
    at_crash = CursorFile(tmp_path / "crash.cursor").load()
    assert at_crash is not None and 0 < at_crash.offset < spool.committed_size(at_crash.segment)
    partial = set(crashed.list())
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
    assert len(keys) > 3 * len(DEVICES)  # several chunks, each an object per device
    reader = ArchiveReader(crashed)
    for device_id in DEVICES:
        seqs = [protocol.loads(line)["seq"] for line in reader.messages(device_id, "telemetry")]
        assert seqs == list(range(per_device)), device_id  # each once, in spool order
    spool.close()


def _cuts(spool: Spool, segment: int) -> list[int]:
    position, cuts = Position(segment, 0), []
    while True:
        records, end = spool.read_file(position, max_records=1 << 30, max_bytes=100_000)
        if not records:
            return cuts
        cuts.append(end.offset)
        position = end


def test_chunks_end_on_the_same_frames_whatever_is_in_memory(tmp_path: Path) -> None:
    """The spool keeps recent commits in memory for readers at its head; the archive's chunks
    must not follow those commits' boundaries, or a replay after a restart (nothing in
    memory) would cut the segment elsewhere."""
    spool, _ = sealed_spool(tmp_path / "spool", 1 << 20)
    segment = spool.segments()[0]
    warm = _cuts(spool, segment)
    # read() serves these commits from memory, whole, whatever max_bytes says.
    _, from_memory = spool.read(Position(segment, 0), max_records=1 << 30, max_bytes=100_000)
    assert from_memory.offset != warm[0]
    spool.close()
    reopened = Spool(tmp_path / "spool", max_bytes=1 << 30)
    cold = _cuts(reopened, segment)
    reopened.close()
    assert warm == cold
    assert len(cold) >= 10 and cold[-1] == reopened.committed_size(segment)
