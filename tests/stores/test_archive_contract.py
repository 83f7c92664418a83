"""The ArchiveStore contract: one suite, run against every adapter over real I/O."""

from __future__ import annotations

import errno
import io
import os
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from iotmeter_tui.backend.errors import StoreRejected, StoreUnavailable
from iotmeter_tui.backend.stores import archive_dir
from iotmeter_tui.backend.stores.archive import STREAM_CHUNK_BYTES, ArchiveStore
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.archive_s3 import S3Archive
from iotmeter_tui.backend.stores.factory import open_archive
from testsupport import S3Server

ADAPTERS = ["s3", "dir"]


def unique_bucket() -> str:
    return f"test-{uuid.uuid4().hex[:16]}"


def s3_archive(server: S3Server, bucket: str) -> S3Archive:
    return S3Archive(bucket, server.endpoint, server.access_key, server.secret_key, server.region)


def raw_client(server: S3Server) -> Minio:
    return Minio(
        server.endpoint.removeprefix("http://"),
        access_key=server.access_key,
        secret_key=server.secret_key,
        secure=False,
        region=server.region,
    )


@pytest.fixture(params=ADAPTERS)
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArchiveStore]:
    store: ArchiveStore
    if request.param == "s3":
        store = s3_archive(request.getfixturevalue("s3"), unique_bucket())
    else:
        store = DirectoryArchive(tmp_path / "archive")
    yield store
    store.close()


def test_put_then_get_returns_the_bytes(archive: ArchiveStore) -> None:
    archive.put("dev-1/telemetry/2026/01/02/030405-b1.ndjson", b'{"a":1}\n')
    assert archive.get("dev-1/telemetry/2026/01/02/030405-b1.ndjson") == b'{"a":1}\n'


def test_binary_content_round_trips(archive: ArchiveStore) -> None:
    data = bytes(range(256)) * 4 + b"\r\n\x00"
    archive.put("bin/all-bytes", data)
    assert archive.get("bin/all-bytes") == data


def test_empty_object_round_trips(archive: ArchiveStore) -> None:
    archive.put("empty/object", b"")
    assert archive.get("empty/object") == b""


def test_large_object_round_trips(archive: ArchiveStore) -> None:
    data = os.urandom(8 * 1024 * 1024)
    archive.put("big/object.bin", data)
    assert archive.get("big/object.bin") == data


def test_stream_yields_the_object_in_bounded_chunks(archive: ArchiveStore) -> None:
    data = os.urandom(3 * STREAM_CHUNK_BYTES + 123)
    archive.put("_firmware/1.0.0/image.bin", data)
    with archive.stream("_firmware/1.0.0/image.bin") as stream:
        chunks = list(stream)
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) <= STREAM_CHUNK_BYTES


@pytest.mark.parametrize(("offset", "length"), [(0, None), (1, None), (70_000, None),
                                                 (0, 1), (5, 100), (65_535, 2), (199_999, 10),
                                                 (100, 0)])
def test_stream_serves_a_byte_range(archive: ArchiveStore, offset: int,
                                    length: int | None) -> None:
    data = os.urandom(200_000)
    archive.put("fw/ranged", data)
    with archive.stream("fw/ranged", offset, length) as stream:
        got = b"".join(stream)
    end = len(data) if length is None else offset + length
    assert got == data[offset:end]


def test_stream_from_the_end_or_past_it_yields_nothing(archive: ArchiveStore) -> None:
    archive.put("fw/short", b"0123456789")
    for offset in (10, 11, 1000):
        with archive.stream("fw/short", offset) as stream:
            assert b"".join(stream) == b""
    with archive.stream("fw/short", 8, 100) as stream:
        assert b"".join(stream) == b"89"


def test_stream_of_a_missing_key_is_key_error_at_once(archive: ArchiveStore) -> None:
    archive.put("fw/there", b"x")
    with pytest.raises(KeyError):
        archive.stream("fw/not-there")
    with pytest.raises(KeyError):
        archive.stream("fw/not-there", 5, 0)
    with pytest.raises(KeyError):
        archive.stream("fw")  # a directory of keys is not an object


def test_stream_closed_early_releases_and_ends(archive: ArchiveStore) -> None:
    archive.put("fw/big", os.urandom(4 * STREAM_CHUNK_BYTES))
    stream = archive.stream("fw/big")
    assert len(next(stream)) > 0
    stream.close()
    assert list(stream) == []
    # The store still serves after a reader hung up halfway (no connection or file leaked).
    for _ in range(12):
        with archive.stream("fw/big", 10, 10) as again:
            assert len(b"".join(again)) == 10


@pytest.mark.parametrize(("offset", "length"), [(-1, None), (0, -1)])
def test_stream_refuses_a_negative_range(archive: ArchiveStore, offset: int,
                                         length: int | None) -> None:
    archive.put("fw/any", b"abc")
    with pytest.raises(StoreRejected):
        archive.stream("fw/any", offset, length)


def test_same_key_again_overwrites(archive: ArchiveStore) -> None:
    archive.put("k/v", b"first")
    archive.put("k/v", b"second, longer than the first")
    assert archive.get("k/v") == b"second, longer than the first"
    assert list(archive.list("k/")) == ["k/v"]


def test_missing_key_is_key_error(archive: ArchiveStore) -> None:
    with pytest.raises(KeyError):
        archive.get("no/such/key")


def test_a_prefix_of_a_key_is_not_a_key(archive: ArchiveStore) -> None:
    archive.put("a/b/c", b"x")
    with pytest.raises(KeyError):
        archive.get("a/b")


def test_list_is_in_lexical_order(archive: ArchiveStore) -> None:
    keys = ["b/2", "a/b", "a-c", "a/a/z", "a0", "b/10", "_rejected/x/1", "A/1"]
    for key in keys:
        archive.put(key, key.encode())
    assert list(archive.list()) == sorted(keys)


def test_list_by_prefix(archive: ArchiveStore) -> None:
    for key in ["dev-1/telemetry/x", "dev-1/hello/y", "dev-10/telemetry/z", "dev-2/telemetry/w"]:
        archive.put(key, b"1")
    assert list(archive.list("dev-1/")) == ["dev-1/hello/y", "dev-1/telemetry/x"]
    # A prefix need not end at a '/': it is plain string matching, as on S3.
    assert list(archive.list("dev-1")) == [
        "dev-1/hello/y",
        "dev-1/telemetry/x",
        "dev-10/telemetry/z",
    ]
    assert list(archive.list("dev-1/tele")) == ["dev-1/telemetry/x"]
    assert list(archive.list("nothing/")) == []


def test_list_of_an_empty_store_is_empty(archive: ArchiveStore) -> None:
    assert list(archive.list()) == []


def test_delete_removes_the_object(archive: ArchiveStore) -> None:
    archive.put("d/one", b"1")
    archive.put("d/two", b"2")
    archive.delete("d/one")
    with pytest.raises(KeyError):
        archive.get("d/one")
    assert list(archive.list()) == ["d/two"]


def test_delete_of_a_missing_key_succeeds(archive: ArchiveStore) -> None:
    archive.delete("never/written")
    archive.put("a/b/c", b"x")
    archive.delete("a/b")  # only a prefix of a key, not a key
    archive.delete("a/b/c/d")
    assert list(archive.list()) == ["a/b/c"]


def test_key_can_be_reused_after_its_deeper_keys_are_deleted(archive: ArchiveStore) -> None:
    archive.put("x/y/z", b"deep")
    archive.delete("x/y/z")
    archive.put("x/y", b"shallow")
    assert archive.get("x/y") == b"shallow"


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "a/", "../up", "a/../b", "a/./b", ".hidden", "a\\b", "a\x00b"]
)
def test_unsafe_keys_are_rejected(archive: ArchiveStore, key: str) -> None:
    with pytest.raises(StoreRejected):
        archive.put(key, b"x")
    with pytest.raises(StoreRejected):
        archive.get(key)


def test_list_with_an_escaping_prefix_finds_nothing(archive: ArchiveStore) -> None:
    archive.put("in/side", b"x")
    assert list(archive.list("../")) == []


def test_check_passes_on_a_usable_store(archive: ArchiveStore) -> None:
    archive.check()


def test_s3_bucket_is_created_on_first_use(s3: S3Server) -> None:
    bucket = unique_bucket()
    client = raw_client(s3)
    assert not client.bucket_exists(bucket)
    store = s3_archive(s3, bucket)
    store.put("first/object", b"hello")
    assert client.bucket_exists(bucket)
    assert client.get_object(bucket, "first/object").read() == b"hello"


def test_s3_existing_bucket_is_used_as_is(s3: S3Server) -> None:
    bucket = unique_bucket()
    client = raw_client(s3)
    client.make_bucket(bucket)
    client.put_object(bucket, "already/there", io.BytesIO(b"old"), 3)
    store = s3_archive(s3, bucket)
    store.check()
    assert store.get("already/there") == b"old"


def test_directory_root_is_created_on_first_use(tmp_path: Path) -> None:
    root = tmp_path / "not" / "yet"
    store = DirectoryArchive(root)
    store.put("a/b", b"x")
    assert (root / "a" / "b").read_bytes() == b"x"


def test_directory_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = DirectoryArchive(tmp_path)
    for i in range(5):
        store.put("p/q", str(i).encode())
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["q"]



def test_puts_left_to_sync_are_there_before_and_after_it(archive: ArchiveStore) -> None:
    keys = [f"dev-{i}/telemetry/2026/01/02/030405-b1.ndjson" for i in range(5)]
    for key in keys:
        archive.put(key, key.encode(), durable=False)
    assert [archive.get(key) for key in keys] == [key.encode() for key in keys]
    archive.sync()
    archive.sync()  # nothing left to sync: nothing to do
    assert list(archive.list()) == sorted(keys)


def test_directory_sync_without_syncfs_fsyncs_each_directory_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the C library has no syncfs (or the batch touched few directories) each
    directory that got a new entry is fsynced; one a delete pruned meanwhile has nothing left
    to keep."""
    monkeypatch.setattr(archive_dir, "_syncfs", None)
    store = DirectoryArchive(tmp_path / "archive")
    store.put("a/1/x", b"1", durable=False)
    store.put("b/2/y", b"2", durable=False)
    store.delete("b/2/y")  # prunes b/2 and b
    store.sync()
    assert [store.get("a/1/x")] == [b"1"] and list(store.list()) == ["a/1/x"]


def test_a_failed_directory_sync_is_tried_again_by_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync that fails (the disk said EIO) raises StoreUnavailable, so the writer's batch
    fails and its cursor stays; what it was to make durable waits for the next sync."""
    store = DirectoryArchive(tmp_path / "archive")
    monkeypatch.setattr(archive_dir, "SYNCFS_FROM_DIRECTORIES", 1)
    store.put("a/1/x", b"1", durable=False)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    real = archive_dir._syncfs
    monkeypatch.setattr(archive_dir, "_syncfs", failing)
    with pytest.raises(StoreUnavailable, match=r"sync .*Input/output error"):
        store.sync()
    synced: list[int] = []

    def recorded(fd: int) -> None:
        synced.append(fd)
        if real is not None:
            real(fd)

    monkeypatch.setattr(archive_dir, "_syncfs", recorded)
    store.sync()
    store.sync()
    assert len(synced) == 1


def test_s3_presigned_url_serves_the_object(s3: S3Server) -> None:
    store = s3_archive(s3, unique_bucket())
    store.put("_firmware/dc/1.2.3.bin", b"\x7fELF firmware")
    url = store.presigned_get_url("_firmware/dc/1.2.3.bin", expires_s=60)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        assert response.read() == b"\x7fELF firmware"


def test_open_archive_picks_the_adapter_by_scheme(s3: S3Server, tmp_path: Path) -> None:
    directory = open_archive(f"file://{tmp_path}/arch")
    assert isinstance(directory, DirectoryArchive)
    assert directory.root == tmp_path / "arch"
    bucket = unique_bucket()
    remote = open_archive(
        f"s3://{bucket}",
        s3_endpoint=s3.endpoint,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
    )
    assert isinstance(remote, S3Archive)
    remote.put("x/y", b"1")
    assert remote.get("x/y") == b"1"
    with pytest.raises(StoreRejected, match="scheme"):
        open_archive("ftp://host/dir")
    with pytest.raises(StoreRejected, match="IOTMETER_S3_ENDPOINT"):
        open_archive("s3://iot-data")
