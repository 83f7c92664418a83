"""Raw-archive port: objects of NDJSON holding messages exactly as received.

Adapters: `archive_s3.S3Archive` (any S3 server, via the minio SDK) and
`archive_dir.DirectoryArchive` (a local directory, atomic writes). Both pass the same contract
suite (tests/stores/test_archive_contract.py). `ArchiveWriter` (archive_writer.py) batches
messages into objects; `ArchiveReader` streams them back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final, Protocol

from iotmeter_tui.backend.errors import StoreRejected

DEFAULT_BUCKET = "iot-data"
REJECTED_PREFIX = "_rejected"
FIRMWARE_PREFIX = "_firmware"
MAX_KEY_BYTES = 1024
# What `stream` hands out at a time: large enough for few system calls, small enough that many
# parallel firmware downloads of multi-GiB images hold little memory each.
STREAM_CHUNK_BYTES: Final = 64 * 1024


class ObjectStream:
    """An object's bytes (or a range of them) chunk by chunk, from a source already opened.

    Iterate it, then `close()` it (or use it as a context manager): a reader that stops early
    must release the file or the HTTP connection underneath."""

    def __init__(self, chunks: Iterator[bytes], release: Callable[[], None]) -> None:
        self._chunks = chunks
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._release is None:
            raise StopIteration
        return next(self._chunks)

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> ObjectStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArchiveStore(Protocol):
    """Object storage by key. A key that `validate_key` refuses raises StoreRejected; failures
    raise StoreUnavailable (worth retrying) or StoreRejected (not)."""

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Write an object whole; a reader never sees half of it. Same key again overwrites.
        Durable on return, or with `durable=False` once `sync()` has returned: a batch of
        puts then pays for durability once, not per object."""

    def sync(self) -> None:
        """Make every put so far durable (a crash keeps them). Raises as put does."""

    def get(self, key: str) -> bytes:
        """An object's bytes. Raises KeyError when it does not exist."""

    def stream(self, key: str, offset: int = 0, length: int | None = None) -> ObjectStream:
        """The object's bytes from `offset` on (at most `length` of them), in chunks of at
        most STREAM_CHUNK_BYTES, without holding the object in memory. A range past the end
        is cut at the end (an offset at or past it yields nothing). Raises KeyError at once
        when the object does not exist."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under `prefix`, in lexical order."""

    def delete(self, key: str) -> None:
        """Remove an object; deleting a key that does not exist succeeds."""

    def check(self) -> None:
        """Raise StoreError when the store cannot be reached or used."""

    def close(self) -> None: ...


def validate_range(store: str, offset: int, length: int | None) -> None:
    """Refuse a negative offset or length (StoreRejected): no adapter serves one."""
    if offset < 0 or (length is not None and length < 0):
        raise StoreRejected(store, f"invalid byte range: offset {offset}, length {length}")


def validate_key(store: str, key: str) -> str:
    """Return `key` if every adapter can hold it, else raise StoreRejected.

    One rule for all adapters, so a key that works on S3 also works on a directory: non-empty
    `/`-separated segments, none starting with `.` (that rules out `.` and `..` and leaves
    dot-names to the directory adapter's temporary files), no backslash or NUL, at most 1024
    bytes of UTF-8 (the S3 limit)."""
    problem = _key_problem(key)
    if problem is not None:
        raise StoreRejected(store, f"invalid object key {key!r}: {problem}")
    return key


def _key_problem(key: str) -> str | None:
    if not key:
        return "empty"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"longer than {MAX_KEY_BYTES} bytes"
    if "\\" in key or "\x00" in key:
        return "contains a backslash or NUL"
    for segment in key.split("/"):
        if not segment:
            return "empty path segment (leading, trailing or double '/')"
        if segment.startswith("."):
            return "a path segment starts with '.'"
    return None
