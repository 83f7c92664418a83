"""Archive adapters when the store goes away: S3 server down, hung or throttling; disk full."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from iotmeter_tui.backend.errors import StoreRejected, StoreUnavailable
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.archive_s3 import S3Archive
from testsupport import S3Server

# An outage must reach the caller in seconds; the SDK's own defaults take minutes.
FAST_S = 5.0


def archive_on(server: S3Server) -> S3Archive:
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    return S3Archive(bucket, server.endpoint, server.access_key, server.secret_key, server.region)


# --- S3 server stopped, restarted, wiped ---------------------------------------------------


def test_stopped_server_is_unavailable_quickly_and_recovers(private_s3: S3Server) -> None:
    store = archive_on(private_s3)
    store.put("kept/object", b"written before the outage")
    private_s3.stop()

    for operation in (
        lambda: store.put("during/outage", b"x"),
        lambda: store.get("kept/object"),
        lambda: list(store.list()),
        store.check,
    ):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="cannot reach") as caught:
            operation()
        assert time.monotonic() - started < FAST_S
        assert caught.value.retryable
        assert caught.value.store == "s3"

    private_s3.start()
    store.put("after/outage", b"y")
    # The S3Server fixture's stop() closes only the listener: moto keeps its memory.
    assert store.get("kept/object") == b"written before the outage"
    assert list(store.list()) == ["after/outage", "kept/object"]


def test_bucket_lost_with_the_server_is_recreated_on_retry(private_s3: S3Server) -> None:
    store = archive_on(private_s3)
    store.put("before/wipe", b"x")
    # kill() ends moto's process: its in-memory buckets are gone when it starts again.
    private_s3.kill()
    private_s3.start()
    with pytest.raises(StoreUnavailable, match="NoSuchBucket"):
        store.put("after/wipe", b"y")
    store.put("after/wipe", b"y")
    assert list(store.list()) == ["after/wipe"]


def test_hung_server_times_out(tmp_path: Path) -> None:
    # A listener that never accepts: connections complete in the kernel, no answer ever comes.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        store = S3Archive(
            "hung-bucket",
            f"http://127.0.0.1:{port}",
            "testing",
            "testing",
            connect_timeout_s=0.5,
            read_timeout_s=0.5,
        )
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="cannot reach"):
            store.put("any/key", b"x")
        assert time.monotonic() - started < FAST_S


# --- S3 answers: throttling and refusal, from a scripted server ----------------------------


class ScriptedS3(BaseHTTPRequestHandler):
    """Answers HEAD bucket with 200 and every PUT with the class's `status` and `code`."""

    status = 503
    code = "SlowDown"
    retry_after = "7"
    puts = 0

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        type(self).puts += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{self.code}</Code>"
            f"<Message>scripted</Message><Resource>{self.path}</Resource></Error>"
        ).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Retry-After", self.retry_after)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test asserts on what matters."""


@pytest.fixture
def scripted_s3() -> Iterator[tuple[str, type[ScriptedS3]]]:
    handler = type("Handler", (ScriptedS3,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()
    thread.join()


def test_slow_down_is_retried_then_unavailable_with_retry_after(
    scripted_s3: tuple[str, type[ScriptedS3]],
) -> None:
    endpoint, handler = scripted_s3
    store = S3Archive("throttled", endpoint, "testing", "testing", retries=2)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="SlowDown") as caught:
        store.put("a/b", b"x")
    assert time.monotonic() - started < FAST_S  # Retry-After surfaced, not slept on
    assert caught.value.retry_after == 7.0
    assert handler.puts == 3  # the first try and two bounded retries


def test_access_denied_is_rejected_without_retrying(
    scripted_s3: tuple[str, type[ScriptedS3]],
) -> None:
    endpoint, handler = scripted_s3
    handler.status, handler.code = 403, "AccessDenied"
    store = S3Archive("forbidden", endpoint, "testing", "testing")
    with pytest.raises(StoreRejected, match="AccessDenied") as caught:
        store.put("a/b", b"x")
    assert not caught.value.retryable
    assert handler.puts == 1


def test_errors_never_show_the_secret(scripted_s3: tuple[str, type[ScriptedS3]]) -> None:
    endpoint, _ = scripted_s3
    store = S3Archive("secretive", endpoint, "AKIAEXAMPLE", "very-secret-key-123")
    with pytest.raises(StoreUnavailable) as caught:
        store.put("a/b", b"x")
    assert "very-secret-key-123" not in str(caught.value)


# --- a full disk ----------------------------------------------------------------------------


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs of our own, so filling it harms nothing else."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"mounting a 64 KiB tmpfs needs root (CAP_SYS_ADMIN): {result.stderr.strip()}",
            pytrace=False,
        )
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def fill(store: DirectoryArchive, chunk: int) -> tuple[dict[str, bytes], str, StoreUnavailable]:
    """Put chunk-sized objects until the store refuses one; what was kept, and the refusal."""
    written: dict[str, bytes] = {}
    for i in range(1000):
        key, data = f"fill/{i:04d}", os.urandom(chunk)
        try:
            store.put(key, data)
        except StoreUnavailable as exc:
            return written, key, exc
        written[key] = data
    raise AssertionError("the 64 KiB filesystem never filled up")


def files_under(root: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names
    )


def test_full_disk_is_unavailable_and_leaves_nothing_half_written(tiny_filesystem: Path) -> None:
    store = DirectoryArchive(tiny_filesystem / "archive")
    written, refused_key, exc = fill(store, 10_000)

    assert exc.retryable
    assert "No space left on device" in str(exc)
    assert "once space is freed" in str(exc)
    with pytest.raises(KeyError):
        store.get(refused_key)
    assert list(store.list()) == sorted(written)
    # No temporary file survives the failed write.
    assert files_under(store.root) == sorted(written)
    for key, data in written.items():
        assert store.get(key) == data

    # An overwrite that cannot fit leaves the old object whole.
    first = next(iter(written))
    with pytest.raises(StoreUnavailable):
        store.put(first, os.urandom(60_000))
    assert store.get(first) == written[first]
    assert files_under(store.root) == sorted(written)

    # Space freed: the refused write now succeeds, as a retry would.
    for key in list(written)[:3]:
        store.delete(key)
    store.put(refused_key, b"fits now")
    assert store.get(refused_key) == b"fits now"
