"""Full disks for tests: a small tmpfs of a test's own, and a filler that takes every free byte
on it and keeps taking whatever is freed until it is removed — a disk that another process has
filled and is still writing to. Needs root (mount)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from testsupport.services import ServiceError

_CHUNK = b"\xa5" * 4096  # written, not seeked over: tmpfs gives pages only to written bytes


@contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (mount's syntax: "96k", "8m") at `mount_point`, creating the
    directory; unmounted on exit, whatever happened inside."""
    mount_point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServiceError(f"mounting a {size} tmpfs at {mount_point} needs root "
                           f"(CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        # Lazy: a file the code under test still holds open must not keep the mount alive.
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


class DiskFiller:
    """Fills the filesystem of `path` until ENOSPC, then keeps it full: every `interval_s` it
    writes again, so space that anyone frees is taken back within milliseconds. `release()`
    (or leaving the `with` block) stops it and deletes the file."""

    def __init__(self, path: Path, *, interval_s: float = 0.005) -> None:
        self.path = path
        self.interval_s = interval_s
        self.bytes_written = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._stop = threading.Event()
        self.fill()  # full on return, not some time later
        self._thread = threading.Thread(target=self._keep_full, daemon=True,
                                        name="disk-filler")
        self._thread.start()

    def fill(self) -> None:
        """Write until the disk refuses a byte more."""
        while True:
            try:
                written = os.write(self._fd, _CHUNK)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    return
                raise
            if written == 0:
                return
            self.bytes_written += written

    def _keep_full(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.fill()

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
