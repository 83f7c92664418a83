"""The archive readers against both archive adapters (a directory and an S3 endpoint over
HTTP): what the collector's ArchiveWriter wrote comes back exactly, filtered and in a stable
order, one object at a time; broken objects and hostile lines are reported, not fatal."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotmeter_tui.backend.archive_reader import iter_raw, iter_rejected
from iotmeter_tui.backend.stores.archive import ArchiveStore
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.archive_s3 import S3Archive
from iotmeter_tui.backend.stores.archive_writer import ArchiveRecord, ArchiveWriter, RejectedRecord

DAY_MS = 86_400_000
T0 = 1_795_740_000_000  # 2026-11-27 UTC


@pytest.fixture(params=["dir", "s3"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArchiveStore]:
    store: ArchiveStore
    if request.param == "s3":
        server = request.getfixturevalue("s3")
        store = S3Archive(f"test-{uuid.uuid4().hex[:16]}", server.endpoint, server.access_key,
                          server.secret_key, server.region)
    else:
        store = DirectoryArchive(tmp_path / "archive")
    yield store
    store.close()


def raw(device_id: str, seq: int, ts: int, msg_type: str = "telemetry",
        extra: str = "") -> bytes:
    return (f'{{"v":2,"device_id":"{device_id}","msg_type":"{msg_type}","boot":1,'
            f'"seq":{seq},"ts":{ts},"data":{{"voltage_v":750.5{extra}}}}}').encode()


def write_history(archive: ArchiveStore, batches: int = 30, per_batch: int = 4,
                  gzip_objects: bool = True) -> list[bytes]:
    """`batches` batches a minute apart, each with telemetry of dc-1 and dc-2 and a hello of
    dc-1: many objects over two days. Returns dc-1's telemetry lines in write order."""
    writer = ArchiveWriter(archive, gzip=gzip_objects)
    expected = []
    try:
        for b in range(batches):
            received = T0 + b * (DAY_MS // 16)
            records = []
            for i in range(per_batch):
                seq = b * per_batch + i
                line = raw("dc-1", seq, received + i)
                expected.append(line)
                records.append(ArchiveRecord("dc-1", "telemetry", received + i, line))
                records.append(ArchiveRecord("dc-2", "telemetry", received + i,
                                             raw("dc-2", seq, received + i)))
            records.append(ArchiveRecord("dc-1", "hello", received, raw("dc-1", 9999, received,
                                                                        "hello")))
            writer.write_batch(records, [], f"b{b:04d}")
    finally:
        writer.close()
    return expected


def test_every_line_comes_back_exactly_in_order(archive: ArchiveStore) -> None:
    expected = write_history(archive)
    assert list(iter_raw(archive, "dc-1", category="telemetry")) == expected
    # Every category of the device: telemetry and hello, by object time; stable.
    both = list(iter_raw(archive, "dc-1"))
    assert len(both) == len(expected) + 30
    assert both == list(iter_raw(archive, "dc-1"))
    assert [json.loads(line)["msg_type"] for line in both[:5]] == [
        "hello", "telemetry", "telemetry", "telemetry", "telemetry"]


def test_a_range_filters_on_the_device_ts(archive: ArchiveStore) -> None:
    expected = write_history(archive, gzip_objects=False)
    start, end = T0 + DAY_MS // 2, T0 + DAY_MS
    got = list(iter_raw(archive, "dc-1", category="telemetry", start_ms=start, end_ms=end))
    want = [line for line in expected if start <= json.loads(line)["ts"] < end]
    assert got == want and len(want) == 32
    assert list(iter_raw(archive, "dc-1", start_ms=end, end_ms=start)) == []
    assert list(iter_raw(archive, "nobody", start_ms=start, end_ms=end)) == []


def test_a_late_message_is_found_within_the_slack(archive: ArchiveStore) -> None:
    """A meter that buffered offline: measured at T0, received six hours later."""
    writer = ArchiveWriter(archive)
    late = raw("dc-9", 0, T0)
    writer.write_batch([ArchiveRecord("dc-9", "telemetry", T0 + 6 * 3_600_000, late)], [], "b1")
    writer.close()
    window = {"start_ms": T0, "end_ms": T0 + 1000}
    assert list(iter_raw(archive, "dc-9", **window)) == [late]
    assert list(iter_raw(archive, "dc-9", slack_ms=3_600_000, **window)) == []


def test_broken_objects_and_hostile_lines_are_reported(archive: ArchiveStore) -> None:
    good = raw("dc-1", 1, T0)
    hostile = b'{"v":2,"device_id":"dc-1","ts":"soon","data":{"x":"\\u001b[2J"}}'
    archive.put("dc-1/telemetry/2026/11/27/000000-a.ndjson", good + b"\n" + hostile + b"\n\n")
    archive.put("dc-1/telemetry/2026/11/27/000001-b.ndjson.gz", b"definitely not gzip")
    archive.put("dc-1/telemetry/2026/11/27/000002-c.ndjson.gz",
                gzip.compress(raw("dc-1", 2, T0 + 1) + b"\n")[:-12])  # truncated
    archive.put("dc-1/telemetry/2026/11/27/000003-d.ndjson", raw("dc-1", 3, T0 + 2))
    archive.put("dc-1/telemetry/notes.txt", b"not written by the collector")
    skipped: list[tuple[str, str]] = []
    everything = list(iter_raw(archive, "dc-1", on_skip=lambda k, why: skipped.append((k, why))))
    assert everything[0] == good and everything[1] == hostile
    assert everything[-1] == raw("dc-1", 3, T0 + 2)
    assert [k.rsplit("/", 1)[1] for k, _ in skipped][:1] == ["000001-b.ndjson.gz"]
    assert any(k.endswith("000002-c.ndjson.gz") for k, _ in skipped)
    # With a range, the line without a readable ts is left out and reported.
    skipped.clear()
    ranged = list(iter_raw(archive, "dc-1", start_ms=T0, end_ms=T0 + 10,
                           on_skip=lambda k, why: skipped.append((k, why))))
    assert hostile not in ranged and good in ranged
    assert any("without a readable ts" in why for _, why in skipped)


def test_a_bad_device_id_or_category_is_refused(archive: ArchiveStore) -> None:
    with pytest.raises(ValueError, match="device_id"):
        list(iter_raw(archive, "../etc"))
    with pytest.raises(ValueError, match="category"):
        list(iter_raw(archive, "dc-1", category="a/b"))


def rejected(reason: str, device_id: str | None, at: int, payload: bytes) -> RejectedRecord:
    return RejectedRecord(reason, f"{reason} detail", f"iot/{device_id or '+'}/telemetry",
                          device_id, at, payload)


def test_rejected_messages_filter_by_reason_device_and_time(archive: ArchiveStore) -> None:
    writer = ArchiveWriter(archive)
    for b in range(12):
        at = T0 + b * 60_000
        writer.write_batch([], [
            rejected("not_json", "dc-1", at, b"{oops"),
            rejected("bad_field", "dc-2", at + 1, raw("dc-2", b, at, extra=',"x":true')),
            rejected("not_utf8", None, at + 2, b"\xff\xfe\x1b[31m"),
        ], f"r{b:03d}")
    writer.close()
    every = list(iter_rejected(archive))
    assert len(every) == 36
    # By object time (the second of its first message), then key: stable from run to run.
    seconds = [r["received_ms"] // 1000 for r in every]
    assert seconds == sorted(seconds) and every == list(iter_rejected(archive))
    assert {r["reason"] for r in iter_rejected(archive, reason="not_json")} == {"not_json"}
    dc2 = list(iter_rejected(archive, device_id="dc-2"))
    assert len(dc2) == 12 and all(r["device_id"] == "dc-2" for r in dc2)
    binary = next(iter_rejected(archive, reason="not_utf8"))
    assert "payload" not in binary and binary["payload_b64"] == "//4bWzMxbQ=="
    window = list(iter_rejected(archive, start_ms=T0 + 60_000, end_ms=T0 + 180_000))
    assert len(window) == 6
    assert {r["received_ms"] for r in window} == {T0 + 60_000 + i for i in range(3)} | {
        T0 + 120_000 + i for i in range(3)}


def test_a_hostile_rejected_line_is_reported(archive: ArchiveStore) -> None:
    archive.put("_rejected/not_json/2026/11/27/000000-x.ndjson",
                b'[1,2]\n{"received_ms":"now"}\nnot json at all\n'
                b'{"received_ms":1795740000000,"reason":"not_json","payload":"{"}\n')
    skipped: list[str] = []
    got = list(iter_rejected(archive, on_skip=lambda k, why: skipped.append(why)))
    assert got == [{"received_ms": 1795740000000, "reason": "not_json", "payload": "{"}]
    assert len(skipped) == 3
    with pytest.raises(ValueError, match="reason"):
        list(iter_rejected(archive, reason="../x"))


class CountingArchive:
    """A real archive that counts the objects read, to show the reader is lazy."""

    def __init__(self, inner: ArchiveStore) -> None:
        self.inner = inner
        self.gets = 0

    def get(self, key: str) -> bytes:
        self.gets += 1
        return self.inner.get(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        self.inner.put(key, data, durable=durable)

    def sync(self) -> None:
        self.inner.sync()

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def check(self) -> None:
        self.inner.check()

    def close(self) -> None:
        self.inner.close()


def test_objects_are_read_one_at_a_time_as_lines_are_taken(archive: ArchiveStore) -> None:
    write_history(archive, batches=20, per_batch=3)
    counting = CountingArchive(archive)
    lines = iter_raw(counting, "dc-1", category="telemetry")  # type: ignore[arg-type]
    assert counting.gets == 0
    first = [next(lines) for _ in range(3)]  # the first object holds three lines
    assert counting.gets == 1 and len(first) == 3
    next(lines)
    assert counting.gets == 2
    assert len(list(lines)) == 20 * 3 - 4 and counting.gets == 20


def test_the_lines_before_damage_in_a_gzip_object_are_kept(archive: ArchiveStore) -> None:
    lines = [raw("dc-1", seq, T0 + seq) for seq in range(400)]
    body = gzip.compress(b"".join(line + b"\n" for line in lines), mtime=0)
    archive.put("dc-1/telemetry/2026/11/27/000000-a.ndjson.gz", body[: len(body) * 2 // 3])
    archive.put("dc-1/telemetry/2026/11/27/000001-b.ndjson.gz", body[:-8])  # no trailer
    skipped: list[tuple[str, str]] = []
    got = list(iter_raw(archive, "dc-1", on_skip=lambda k, why: skipped.append((k, why))))
    cut = len(got) - len(lines)  # the second object's lines all survive, only its CRC is gone
    assert got[cut:] == lines and 0 < cut < len(lines) and got[:cut] == lines[:cut]
    assert [k.rsplit("/", 1)[1] for k, _ in skipped] == ["000000-a.ndjson.gz",
                                                         "000001-b.ndjson.gz"]
