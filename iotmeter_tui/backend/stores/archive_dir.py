"""Archive adapter over a local directory: one file per key, written atomically and durably.

A key `a/b/c.ndjson` is the file `{root}/a/b/c.ndjson`. A write goes to a temporary dot-file in
the target directory, is fsynced, renamed over the target and the directory fsynced, so a
reader (or a crash) sees the old object or the new one, never half of one. Dot-names are never
keys (see `validate_key`), so temporaries never show up in `list`.

A put with `durable=False` leaves the directory fsync to `sync()`, which on Linux is one
syncfs for the whole batch (when it touched SYNCFS_FROM_DIRECTORIES directories or more): the
collector writes one object per meter and minute, each in a directory of its own, and under
load the directory fsyncs were 70 % of the archive writers' time (each commits the
filesystem's journal). The file itself is still fsynced before the rename, so a crash never
leaves a key with half an object, only the old state of the directory; the collector moves
its cursor after `sync()`, and writes the batch again after a crash.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from iotmeter_tui.backend.errors import StoreError, StoreRejected, StoreUnavailable
from iotmeter_tui.backend.stores.archive import (
    STREAM_CHUNK_BYTES,
    ObjectStream,
    validate_key,
    validate_range,
)

STORE = "file"

# Out of space and out of quota clear up when an operator frees space: worth retrying.
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Failures that a later attempt may not meet (busy device, network filesystem hiccups).
_TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ESTALE})
# sync() takes one syncfs from this many directories on, and fsyncs each one below it: a syncfs
# also writes back whatever else is dirty on the filesystem, and for a batch of 10 objects it
# cost more than their 10 directory fsyncs (bench/stores_archive.py: 0.15-0.19 of a bare
# durable write against 0.24-0.34), while for 5,000 it is the one that keeps up.
SYNCFS_FROM_DIRECTORIES = 64
# put() retries this often when a concurrent delete() prunes the directory it is writing into.
_PRUNE_RACE_ATTEMPTS = 3


class DirectoryArchive:
    """`ArchiveStore` on a directory tree; the root is created on first use."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(root).absolute()
        # Directories whose new entries wait for sync() (puts run on several threads).
        self._unsynced: set[Path] = set()
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        return self._root

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        path = self._path(key)
        for _ in range(_PRUNE_RACE_ATTEMPTS):
            try:
                self._make_dirs(path.parent, durable)
                self._write_atomically(path, data, durable)
                return
            except FileNotFoundError:
                continue  # delete() removed the directory, now empty, between the two steps
            except OSError as exc:
                raise self._translate(exc, "put", key) from exc
        raise StoreUnavailable(STORE, f"put {key!r}: its directory kept disappearing")

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            # A directory at the path only holds longer keys; it is not this object.
            raise KeyError(key) from None
        except OSError as exc:
            raise self._translate(exc, "get", key) from exc

    def stream(self, key: str, offset: int = 0, length: int | None = None) -> ObjectStream:
        path = self._path(key)
        validate_range(STORE, offset, length)
        try:
            # Opened here, not in the generator, so a missing object is KeyError at once.
            file = open(path, "rb")  # noqa: SIM115 - closed by the stream
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None
        except OSError as exc:
            raise self._translate(exc, "get", key) from exc
        return ObjectStream(self._chunks(file, key, offset, length), file.close)

    def _chunks(self, file: BinaryIO, key: str, offset: int,
                length: int | None) -> Iterator[bytes]:
        left = length
        try:
            file.seek(offset)
            while left is None or left > 0:
                chunk = file.read(STREAM_CHUNK_BYTES if left is None
                                  else min(STREAM_CHUNK_BYTES, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk
        except OSError as exc:
            raise self._translate(exc, "get", key) from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        head, slash, _ = prefix.rpartition("/")
        if slash:
            try:
                validate_key(STORE, head)
            except StoreRejected:
                return  # no valid key lies under an invalid directory such as '../'
        yield from self._walk(self._root.joinpath(*head.split("/")), head + slash, prefix)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return  # deleting what is not there succeeds, as on S3
        except OSError as exc:
            raise self._translate(exc, "delete", key) from exc
        self._prune_empty_dirs(path.parent)

    def check(self) -> None:
        """Create the root if needed, then prove a file can be created in it and space is left."""
        try:
            self._make_dirs(self._root)
            fd, probe = tempfile.mkstemp(prefix=".check-", dir=self._root)
            os.close(fd)
            os.unlink(probe)
            free = os.statvfs(self._root)
        except OSError as exc:
            raise self._translate(exc, "check", "") from exc
        if free.f_bavail == 0:
            raise StoreUnavailable(STORE, f"no space left under {self._root}")

    def sync(self) -> None:
        with self._lock:
            directories, self._unsynced = self._unsynced, set()
        if not directories:
            return
        try:
            if _syncfs is not None and len(directories) >= SYNCFS_FROM_DIRECTORIES:
                _fsync_dir(self._root, _syncfs)  # the root's filesystem, every directory
            else:
                for directory in sorted(directories):
                    with contextlib.suppress(FileNotFoundError):  # pruned: nothing to keep
                        _fsync_dir(directory)
        except OSError as exc:
            with self._lock:
                self._unsynced |= directories  # the next sync tries them again
            raise self._translate(exc, "sync", "") from exc

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    # --- internals ---------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*validate_key(STORE, key).split("/"))

    def _make_dirs(self, directory: Path, durable: bool = True) -> None:
        """mkdir -p, fsyncing each new directory's parent (now, or at sync()) so the new
        entry survives a crash."""
        missing: list[Path] = []
        while not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for new in reversed(missing):
            with contextlib.suppress(FileExistsError):  # a concurrent put() made it first
                new.mkdir()
            self._sync_entry(new.parent, durable)

    def _sync_entry(self, directory: Path, durable: bool) -> None:
        """A new entry in `directory`: fsync it now, or note it for sync()."""
        if durable:
            _fsync_dir(directory)
            return
        with self._lock:
            self._unsynced.add(directory)

    def _write_atomically(self, path: Path, data: bytes, durable: bool = True) -> None:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            try:
                _write_all(fd, data)
                os.fchmod(fd, 0o644)  # mkstemp makes 0600; archive files are for other tools too
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        self._sync_entry(path.parent, durable)

    def _walk(self, directory: Path, base: str, prefix: str) -> Iterator[str]:
        """Keys under `directory` (whose keys start with `base`) that start with `prefix`.

        Sorting each directory by its entries' key text, with '/' appended to subdirectories,
        yields keys in the same lexical order as S3: 'a-c' sorts before 'a/b'."""
        try:
            with os.scandir(directory) as scan:
                entries = [
                    (base + e.name + ("/" if e.is_dir(follow_symlinks=False) else ""), e.path)
                    for e in scan
                    if not e.name.startswith(".")
                ]
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise self._translate(exc, "list", prefix) from exc
        for key, path in sorted(entries):
            if not key.endswith("/"):
                if key.startswith(prefix):
                    yield key
            elif key.startswith(prefix) or prefix.startswith(key):
                yield from self._walk(Path(path), key, prefix)

    def _prune_empty_dirs(self, directory: Path) -> None:
        """Remove directories emptied by a delete, so old partitions do not pile up.

        Not fsynced: an object or directory that comes back after a crash is harmless."""
        while directory != self._root and self._root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or already gone): nothing more to prune
            directory = directory.parent

    def _translate(self, exc: OSError, action: str, key: str) -> StoreError:
        where = f"{action} {key!r} under {self._root}" if key else f"{action} {self._root}"
        reason = exc.strerror or str(exc)
        if exc.errno in _SPACE_ERRNOS:
            return StoreUnavailable(
                STORE, f"{where}: {reason}; writes succeed again once space is freed"
            )
        if exc.errno in _TRANSIENT_ERRNOS:
            return StoreUnavailable(STORE, f"{where}: {reason}")
        return StoreRejected(STORE, f"{where}: {reason}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _load_syncfs() -> Callable[[int], None] | None:
    """syncfs(2) (Linux): everything written to the filesystem of a descriptor, durable in
    one call. None where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes, call.restype = [ctypes.c_int], ctypes.c_int

    def syncfs(fd: int) -> None:
        if call(fd) != 0:  # ctypes lets other threads run meanwhile
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return syncfs


_syncfs = _load_syncfs()


def _fsync_dir(directory: Path, sync: Callable[[int], None] = os.fsync) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sync(fd)
    finally:
        os.close(fd)
