"""The archive sink against a real directory archive: collectors sharing a subscription never
overwrite each other's objects, even for segments opened in the same millisecond."""

from __future__ import annotations

from pathlib import Path

from iotmeter_tui.backend.collector.sinks import ArchiveSink, CursorFile
from iotmeter_tui.backend.collector.spool import Position
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.archive_writer import ArchiveReader, ArchiveRecord, ArchiveWriter
from testsupport.fleet import telemetry


def test_two_collectors_with_the_same_segment_id_keep_both_objects(tmp_path: Path) -> None:
    """Found by bench/ingest.py --collectors 2: the first ten messages of one meter, taken by
    the second collector, were missing from the archive (the keys had only the segment id)."""
    archive = DirectoryArchive(tmp_path / "archive")
    segment = Position(1_795_761_126_706, 4_096)  # both spools opened it in the same ms
    for n, seqs in enumerate((range(0, 10, 2), range(1, 10, 2))):
        writer = ArchiveWriter(archive)
        sink = ArchiveSink(writer, CursorFile(tmp_path / f"c{n}.cursor"),
                           source=f"bench-collector-{n}")
        records = [ArchiveRecord("dc-0000", "telemetry", 1_795_761_126_706 + s,
                                 telemetry("dc-0000", 1, s)[1]) for s in seqs]
        # What the sink's write does with a segment: its objects under the sink's batch id.
        writer.write_batch(records, [], batch_id=sink.batch_id(segment.segment))
        writer.close()
    lines = list(ArchiveReader(archive).messages("dc-0000", "telemetry"))
    assert len(lines) == 10
