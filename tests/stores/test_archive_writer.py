"""ArchiveWriter and ArchiveReader over both archive adapters: grouping, layout, idempotence."""

from __future__ import annotations

import base64
import calendar
import gzip
import json
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iotmeter_tui.backend.errors import StoreUnavailable
from iotmeter_tui.backend.protocol import Message, Rejection, decode, encode_device_message
from iotmeter_tui.backend.stores.archive import ArchiveStore
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.archive_s3 import S3Archive
from iotmeter_tui.backend.stores.archive_writer import (
    ArchiveReader,
    ArchiveRecord,
    ArchiveWriter,
    RejectedRecord,
)


def utc_ms(year: int, month: int, day: int, hour: int, minute: int, second: int) -> int:
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) * 1000


T0 = utc_ms(2026, 3, 14, 15, 9, 26) + 535


@pytest.fixture(params=["s3", "dir"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArchiveStore]:
    archive: ArchiveStore
    if request.param == "s3":
        server = request.getfixturevalue("s3")
        bucket = f"test-{uuid.uuid4().hex[:16]}"
        archive = S3Archive(
            bucket, server.endpoint, server.access_key, server.secret_key, server.region
        )
    else:
        archive = DirectoryArchive(tmp_path / "archive")
    yield archive
    archive.close()


MakeWriter = Callable[..., ArchiveWriter]


@pytest.fixture
def make_writer(store: ArchiveStore) -> Iterator[MakeWriter]:
    """Writers on the test's store, closed (their threads ended) after the test."""
    made: list[ArchiveWriter] = []

    def make(on: ArchiveStore | None = None, **options: Any) -> ArchiveWriter:
        made.append(ArchiveWriter(on or store, **options))
        return made[-1]

    yield make
    for writer in made:
        writer.close()


def telemetry(device_id: str, seq: int, received_ms: int) -> ArchiveRecord:
    raw = encode_device_message(
        device_id, "telemetry", {"voltage_v": 750.0 + seq}, ts=received_ms - 5, boot=1, seq=seq
    )
    message = decode(f"iot/{device_id}/telemetry", raw)
    assert isinstance(message, Message)
    return ArchiveRecord.from_message(message, received_ms)


def hello(device_id: str, received_ms: int) -> ArchiveRecord:
    data = {"device_type": "power_meter_dc", "fw_version": "1.0", "heartbeat_s": 30, "uptime_s": 1}
    raw = encode_device_message(device_id, "hello", data, ts=received_ms, boot=1, seq=0)
    return ArchiveRecord(device_id, "hello", received_ms, raw)


def rejection(topic: str, payload: bytes, received_ms: int) -> RejectedRecord:
    result = decode(topic, payload)
    assert isinstance(result, Rejection)
    return RejectedRecord.from_rejection(result, received_ms)


def lines(store: ArchiveStore, key: str) -> list[bytes]:
    data = store.get(key)
    if key.endswith(".gz"):
        data = gzip.decompress(data)
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


# --- writing --------------------------------------------------------------------------------


def test_one_object_per_device_and_category_per_batch(
    store: ArchiveStore, make_writer: MakeWriter
) -> None:
    accepted = [telemetry("dc-0001", seq, T0 + seq) for seq in range(50)]
    accepted += [telemetry("dc-0002", seq, T0 + 100 + seq) for seq in range(30)]
    accepted.append(hello("dc-0001", T0 + 7))
    keys = make_writer().write_batch(accepted, [], "seg-000042")
    assert keys == [
        "dc-0001/telemetry/2026/03/14/150926-seg-000042.ndjson.gz",
        "dc-0002/telemetry/2026/03/14/150926-seg-000042.ndjson.gz",
        "dc-0001/hello/2026/03/14/150926-seg-000042.ndjson.gz",
    ]
    assert list(store.list()) == sorted(keys)
    assert len(lines(store, keys[0])) == 50
    assert len(lines(store, keys[1])) == 30
    assert len(lines(store, keys[2])) == 1


def test_lines_are_the_payloads_exactly_as_received_in_order(
    store: ArchiveStore, make_writer: MakeWriter
) -> None:
    accepted = [telemetry("dc-0001", seq, T0 + seq) for seq in range(10)]
    (key,) = make_writer().write_batch(accepted, [], "b1")
    assert lines(store, key) == [record.raw for record in accepted]


def test_key_time_is_the_groups_earliest_receipt(make_writer: MakeWriter) -> None:
    later = telemetry("dc-0001", 1, T0 + 5_000)
    earlier = telemetry("dc-0001", 2, T0)
    (key,) = make_writer().write_batch([later, earlier], [], "b1")
    assert key == "dc-0001/telemetry/2026/03/14/150926-b1.ndjson.gz"


def test_without_gzip_objects_are_plain_ndjson(
    store: ArchiveStore, make_writer: MakeWriter
) -> None:
    accepted = [telemetry("dc-0001", seq, T0) for seq in range(3)]
    (key,) = make_writer(gzip=False).write_batch(accepted, [], "b1")
    assert key.endswith("-b1.ndjson")
    assert store.get(key) == b"".join(record.raw + b"\n" for record in accepted)


def test_gzip_round_trips_through_the_reader(store: ArchiveStore, make_writer: MakeWriter) -> None:
    accepted = [telemetry("dc-0001", seq, T0 + seq) for seq in range(100)]
    (key,) = make_writer().write_batch(accepted, [], "b1")
    assert store.get(key)[:2] == b"\x1f\x8b"
    reader = ArchiveReader(store)
    assert list(reader.messages("dc-0001", "telemetry")) == [r.raw for r in accepted]


def test_writing_a_batch_again_gives_byte_identical_objects(
    store: ArchiveStore, make_writer: MakeWriter
) -> None:
    accepted = [telemetry(f"dc-{d:04d}", seq, T0 + seq) for d in range(3) for seq in range(20)]
    rejected = [rejection("iot/dc-0001/telemetry", b"not json", T0)]
    writer = make_writer()
    first_keys = writer.write_batch(accepted, rejected, "seg-7")
    first = {key: store.get(key) for key in first_keys}
    # A crash and replay: a new writer, the same records, the same batch id.
    second_keys = make_writer().write_batch(accepted, rejected, "seg-7")
    assert second_keys == first_keys
    assert {key: store.get(key) for key in second_keys} == first
    assert list(store.list()) == sorted(first_keys)
    reader = ArchiveReader(store)
    assert len(list(reader.messages("dc-0001", "telemetry"))) == 20


def test_separate_batches_make_separate_objects(
    store: ArchiveStore, make_writer: MakeWriter
) -> None:
    writer = make_writer()
    writer.write_batch([telemetry("dc-0001", 0, T0)], [], "seg-1")
    writer.write_batch([telemetry("dc-0001", 1, T0)], [], "seg-2")
    assert len(list(store.list("dc-0001/"))) == 2
    assert len(list(ArchiveReader(store).messages("dc-0001", "telemetry"))) == 2


def test_newlines_in_a_payload_become_spaces(store: ArchiveStore, make_writer: MakeWriter) -> None:
    raw = b'{"v": 2,\r\n "device_id": "dc-0001",\n "msg_type": "status", "ts": 1,\n' + (
        b' "data": {"state": "online"}}'
    )
    message = decode("iot/dc-0001/status", raw)
    assert isinstance(message, Message)
    (key,) = make_writer().write_batch([ArchiveRecord.from_message(message, T0)], [], "b1")
    (line,) = lines(store, key)
    assert line == raw.replace(b"\r", b" ").replace(b"\n", b" ")
    assert json.loads(line) == json.loads(raw)


def test_rejected_lines_carry_reason_and_payload(
    store: ArchiveStore, make_writer: MakeWriter
) -> None:
    not_json = rejection("iot/dc-0001/telemetry", "{oops\nnäxt €".encode(), T0)
    not_utf8 = rejection("iot/dc-0002/telemetry", b"\xff\xfe\x00binary", T0 + 1)
    bad_topic = rejection("elsewhere/x", b"{}", T0 + 2)
    keys = make_writer().write_batch([], [not_json, not_utf8, bad_topic], "b9")
    assert keys == [
        "_rejected/not_json/2026/03/14/150926-b9.ndjson.gz",
        "_rejected/not_utf8/2026/03/14/150926-b9.ndjson.gz",
        "_rejected/bad_topic/2026/03/14/150926-b9.ndjson.gz",
    ]
    (line,) = lines(store, keys[0])
    assert json.loads(line) == {
        "received_ms": T0,
        "reason": "not_json",
        "detail": not_json.detail,
        "topic": "iot/dc-0001/telemetry",
        "device_id": "dc-0001",
        "payload": "{oops\nnäxt €",
    }
    (line,) = lines(store, keys[1])
    record = json.loads(line)
    assert "payload" not in record
    assert base64.b64decode(record["payload_b64"]) == b"\xff\xfe\x00binary"
    (line,) = lines(store, keys[2])
    assert json.loads(line)["device_id"] is None


def test_one_rejected_object_per_reason(store: ArchiveStore, make_writer: MakeWriter) -> None:
    rejected = [rejection("iot/dc-0001/telemetry", b"[1]", T0 + i) for i in range(5)]
    (key,) = make_writer().write_batch([], rejected, "b1")
    assert len(lines(store, key)) == 5


class FailsOnce:
    """The test's store, except that the first put of a key containing `marker` fails."""

    def __init__(self, store: ArchiveStore, marker: str) -> None:
        self.store = store
        self.marker = marker
        self.failed = False

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        if self.marker in key and not self.failed:
            self.failed = True
            raise StoreUnavailable("test", "scripted outage")
        self.store.put(key, data, durable=durable)

    def sync(self) -> None:
        self.store.sync()


def test_a_failed_put_fails_the_batch_and_a_retry_completes_it(
    store: ArchiveStore, make_writer: MakeWriter
) -> None:
    accepted = [telemetry(f"dc-{d:04d}", 0, T0) for d in range(6)]
    writer = make_writer(on=FailsOnce(store, "dc-0003"))
    with pytest.raises(StoreUnavailable, match="scripted outage"):
        writer.write_batch(accepted, [], "b1")
    # The other puts had all finished when the error surfaced.
    assert len(list(store.list())) == 5
    keys = writer.write_batch(accepted, [], "b1")
    assert len(keys) == 6
    assert list(store.list()) == sorted(keys)



class Recording:
    """The test's store, noting each put (with its durability) and each sync."""

    def __init__(self, store: ArchiveStore) -> None:
        self.store = store
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        self.store.put(key, data, durable=durable)
        with self.lock:
            self.calls.append(f"put durable={durable}")

    def sync(self) -> None:
        self.store.sync()
        self.calls.append("sync")


def test_a_batch_is_made_durable_by_one_sync_after_its_puts(
    store: ArchiveStore, make_writer: MakeWriter
) -> None:
    """Durability is paid once a batch, not once an object (a directory fsync per object was
    70 % of the archive writers' time), and before the writer returns: the caller moves its
    cursor then."""
    recording = Recording(store)
    writer = make_writer(on=recording)
    writer.write_batch([telemetry(f"dc-{d:04d}", 0, T0) for d in range(6)], [], "b1")
    assert recording.calls == ["put durable=False"] * 6 + ["sync"]
    recording.calls.clear()
    groups = [(f"b{n}", [telemetry("dc-0001", n, T0)]) for n in range(3)]
    writer.write_groups(iter(groups))  # type: ignore[arg-type]
    assert recording.calls == ["put durable=False"] * 3 + ["sync"]


def test_a_failed_sync_fails_the_batch_and_a_retry_completes_it(
    store: ArchiveStore, make_writer: MakeWriter
) -> None:
    """The batch is not written until its sync is: a sync that fails raises, so the archive
    sink keeps its cursor and writes the segment again (the same keys and bytes)."""

    class SyncFailsOnce(Recording):
        def sync(self) -> None:
            if "sync failed" not in self.calls:
                self.calls.append("sync failed")
                raise StoreUnavailable("test", "scripted sync outage")
            super().sync()

    failing = SyncFailsOnce(store)
    writer = make_writer(on=failing)
    groups = [(f"b{n}", [telemetry("dc-0001", n, T0)]) for n in range(3)]
    with pytest.raises(StoreUnavailable, match="scripted sync outage"):
        writer.write_groups(iter(groups))  # type: ignore[arg-type]
    keys = writer.write_groups(iter(groups))  # type: ignore[arg-type]
    assert failing.calls[-1] == "sync"
    assert list(store.list()) == sorted(keys) and len(keys) == 3

def test_empty_batch_writes_nothing(store: ArchiveStore, make_writer: MakeWriter) -> None:
    assert make_writer().write_batch([], [], "b1") == []
    assert list(store.list()) == []


@pytest.mark.parametrize("batch_id", ["", "a/b", "..", ".x", "a b", "x" * 200])
def test_batch_id_must_be_key_safe(make_writer: MakeWriter, batch_id: str) -> None:
    with pytest.raises(ValueError, match="batch_id"):
        make_writer().write_batch([telemetry("dc-0001", 0, T0)], [], batch_id)


def test_group_names_must_be_key_safe(make_writer: MakeWriter) -> None:
    record = ArchiveRecord("../etc", "telemetry", T0, b"{}")
    with pytest.raises(ValueError, match="device_id"):
        make_writer().write_batch([record], [], "b1")


# --- reading --------------------------------------------------------------------------------

MIDNIGHT = utc_ms(2026, 12, 31, 0, 0, 0) + 86_400_000  # 2027-01-01T00:00:00Z


def write_around_midnight(writer: ArchiveWriter) -> dict[str, int]:
    """Four batches of dc-0001 telemetry, around the turn of 2026 to 2027."""
    times = {
        "b-early": MIDNIGHT - 3_600_000,  # 2026-12-31 23:00:00
        "b-late": MIDNIGHT - 1_500,  # 2026-12-31 23:59:58.5
        "b-new": MIDNIGHT + 500,  # 2027-01-01 00:00:00.5
        "b-next": MIDNIGHT + 86_400_000 + 60_000,  # 2027-01-02 00:01:00
    }
    for batch_id, received in times.items():
        writer.write_batch([telemetry("dc-0001", 0, received)], [], batch_id)
    writer.write_batch([telemetry("dc-0002", 0, MIDNIGHT)], [], "b-other")
    return times


def test_reader_keys_span_day_and_year_boundaries(
    store: ArchiveStore, make_writer: MakeWriter
) -> None:
    write_around_midnight(make_writer())
    reader = ArchiveReader(store)
    assert reader.keys("dc-0001", "telemetry", MIDNIGHT - 2_000, MIDNIGHT + 1_000) == [
        "dc-0001/telemetry/2026/12/31/235958-b-late.ndjson.gz",
        "dc-0001/telemetry/2027/01/01/000000-b-new.ndjson.gz",
    ]
    assert reader.keys("dc-0001", "telemetry", MIDNIGHT, MIDNIGHT + 2 * 86_400_000) == [
        "dc-0001/telemetry/2027/01/01/000000-b-new.ndjson.gz",
        "dc-0001/telemetry/2027/01/02/000100-b-next.ndjson.gz",
    ]
    assert len(reader.keys("dc-0001", "telemetry")) == 4
    assert reader.keys("dc-0001", "telemetry", MIDNIGHT, MIDNIGHT) == []


def test_reader_range_is_half_open_at_second_granularity(
    store: ArchiveStore, make_writer: MakeWriter
) -> None:
    times = write_around_midnight(make_writer())
    reader = ArchiveReader(store)
    late = times["b-late"]
    # The end is exclusive: an object of second 23:59:58 is not in [.., 23:59:58.000).
    assert reader.keys("dc-0001", "telemetry", late - 10_000, late - 500) == []
    # The start is inclusive to the second: 23:59:58.9 still selects the 23:59:58 object.
    assert len(reader.keys("dc-0001", "telemetry", late + 400, late + 1_000)) == 1


def test_reader_lists_only_the_partitions_in_range(
    store: ArchiveStore, make_writer: MakeWriter
) -> None:
    write_around_midnight(make_writer())
    seen: list[str] = []

    class Spy:
        def list(self, prefix: str = "") -> Iterator[str]:
            seen.append(prefix)
            return store.list(prefix)

        def get(self, key: str) -> bytes:
            return store.get(key)

    reader = ArchiveReader(Spy())  # type: ignore[arg-type]
    reader.keys("dc-0001", "telemetry", MIDNIGHT - 1_000, MIDNIGHT + 1_000)
    assert seen == ["dc-0001/telemetry/2026/12/31/", "dc-0001/telemetry/2027/01/01/"]
    seen.clear()
    # A range of years is listed month by month, not day by day.
    reader.keys("dc-0001", "telemetry", MIDNIGHT - 365 * 86_400_000, MIDNIGHT + 1_000)
    assert len(seen) == 13
    assert seen[-1] == "dc-0001/telemetry/2027/01/"


def test_reader_messages_filter_by_time(store: ArchiveStore, make_writer: MakeWriter) -> None:
    write_around_midnight(make_writer())
    reader = ArchiveReader(store)
    received = [
        json.loads(line)["ts"] + 5
        for line in reader.messages("dc-0001", "telemetry", MIDNIGHT - 2_000, MIDNIGHT + 1_000)
    ]
    assert received == [MIDNIGHT - 1_500, MIDNIGHT + 500]
    assert list(reader.messages("dc-0002", "telemetry")) != []
    assert list(reader.messages("dc-0003", "telemetry")) == []


def test_reader_rejected_filters_by_reason_and_time(
    store: ArchiveStore, make_writer: MakeWriter
) -> None:
    writer = make_writer()
    writer.write_batch([], [rejection("iot/dc-0001/telemetry", b"x", MIDNIGHT - 1_000)], "r1")
    writer.write_batch([], [rejection("iot/dc-0001/telemetry", b"[]", MIDNIGHT)], "r2")
    writer.write_batch([], [rejection("bad", b"{}", MIDNIGHT + 1_000)], "r3")
    reader = ArchiveReader(store)
    everything = list(reader.rejected())
    assert [r["reason"] for r in everything] == ["not_json", "not_object", "bad_topic"]
    assert [r["reason"] for r in reader.rejected("not_object")] == ["not_object"]
    in_range = reader.rejected(start_ms=MIDNIGHT, end_ms=MIDNIGHT + 60_000)
    assert [r["reason"] for r in in_range] == ["not_object", "bad_topic"]


def test_write_groups_holds_at_most_max_pending_bytes(tmp_path: Path) -> None:
    """The streamed form takes the next group only while the objects waiting for their puts
    fit in max_pending_bytes: with puts held back, the fourth 10 kB object waits."""
    gate = threading.Event()
    directory = DirectoryArchive(tmp_path / "archive")

    class Held:
        def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
            gate.wait(30)
            directory.put(key, data, durable=durable)

        def sync(self) -> None:
            directory.sync()

    taken: list[int] = []

    def groups() -> Iterator[tuple[str, list[ArchiveRecord]]]:
        for n in range(20):
            taken.append(n)
            raw = random.Random(n).randbytes(10_000)  # gzip cannot shrink it
            yield "seg-1", [ArchiveRecord(f"dc-{n:04d}", "telemetry", 1_795_740_000_000, raw)]

    writer = ArchiveWriter(Held())  # type: ignore[arg-type]
    keys: list[str] = []
    worker = threading.Thread(target=lambda: keys.extend(
        writer.write_groups(groups(), max_pending_bytes=35_000)))
    worker.start()
    worker.join(1.0)
    assert worker.is_alive() and taken == [0, 1, 2, 3]
    gate.set()
    worker.join(30)
    writer.close()
    assert len(keys) == 20 and sorted(keys) == list(directory.list())
