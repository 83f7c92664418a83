"""The simulated meter's firmware download against the collector's real firmware endpoint: a
connection cut mid-image resumes with a range request instead of starting over, and a busy
endpoint (503) is asked again after its Retry-After."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotmeter_tui.backend.control.firmware import RETRY_AFTER_S, FirmwareServer
from iotmeter_tui.backend.control.ota import OtaService
from iotmeter_tui.backend.simulator.firmware import FirmwareError, fetch_firmware
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.factory import open_metadata
from iotmeter_tui.backend.stores.metadata import MetadataStore

IMAGE = os.urandom(2 * 1024 * 1024)


@pytest.fixture
def metadata(tmp_path: Path) -> Iterator[MetadataStore]:
    store = open_metadata(f"sqlite:///{tmp_path}/meta.db")
    yield store
    store.close()


def endpoint(metadata: MetadataStore, tmp_path: Path, **kwargs: float) -> FirmwareServer:
    server = FirmwareServer("127.0.0.1:0", metadata, DirectoryArchive(tmp_path / "archive"),
                            **kwargs)  # type: ignore[arg-type]
    server.start()
    return server


class CuttingProxy:
    """A TCP proxy to the endpoint that hangs up the first connection after `cut_after`
    bytes of the answer, and records each request's head."""

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.requests: list[bytes] = []
        self.bytes_down = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = not self.requests
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        up_writer.write(head)
        sent = 0
        try:
            while chunk := await up_reader.read(65536):
                if first and sent + len(chunk) > self.cut_after:
                    writer.write(chunk[:self.cut_after - sent])
                    self.bytes_down += self.cut_after - sent
                    await writer.drain()
                    writer.transport.abort()  # the link drops mid-image
                    return
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
                self.bytes_down += len(chunk)
        finally:
            up_writer.close()
            writer.close()


def test_a_cut_download_resumes_with_a_range(metadata: MetadataStore, tmp_path: Path) -> None:
    server = endpoint(metadata, tmp_path)
    try:
        fw = OtaService(metadata, server.archive).upload_bytes(IMAGE, "2.0.0")
        url = server.url_for(fw, 60)

        async def run() -> tuple[bytes, CuttingProxy, list[int]]:
            proxy = CuttingProxy(server.port, cut_after=700_000)
            port = await proxy.start()
            progress: list[int] = []
            image = await fetch_firmware(url.replace(f":{server.port}/", f":{port}/"),
                                         max_size=len(IMAGE), timeout_s=30,
                                         on_progress=progress.append)
            proxy.server.close()
            return image, proxy, progress

        image, proxy, progress = asyncio.run(run())
        assert hashlib.sha256(image).hexdigest() == fw.sha256
        assert len(proxy.requests) == 2
        assert b"Range: bytes=" not in proxy.requests[0]
        assert f'If-Range: "{fw.sha256}"'.encode() in proxy.requests[1]
        match = re.search(rb"Range: bytes=(\d+)-\r\n", proxy.requests[1])
        assert match is not None
        resumed_at = int(match[1])
        # The first connection brought less than 700,000 bytes of body (headers came first).
        assert 600_000 < resumed_at < 700_000
        # Resumed, not restarted: the second answer carried only the rest of the image.
        assert proxy.bytes_down < len(IMAGE) + 700_000 + 1_000
        assert progress == sorted(progress) and progress[-1] == len(IMAGE)
    finally:
        server.stop(drain_s=0.1)


def test_a_busy_endpoint_is_asked_again_after_retry_after(metadata: MetadataStore,
                                                           tmp_path: Path) -> None:
    server = endpoint(metadata, tmp_path, max_downloads=1, idle_timeout_s=30.0)
    try:
        fw = OtaService(metadata, server.archive).upload_bytes(IMAGE * 8, "2.0.0")
        url = server.url_for(fw, 60)
        path = url.split(f":{server.port}", 1)[1]
        hog = socket.socket()
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        hog.connect(("127.0.0.1", server.port))
        hog.sendall(f"GET {path} HTTP/1.1\r\nHost: fw\r\n\r\n".encode())  # holds the slot
        # The hog holds the slot once it is being served: without waiting for that, the
        # meter's request could take the slot first and the hog be the one refused.
        hog.settimeout(10)
        assert hog.recv(12).endswith(b" 200")  # the status line: it is being served
        assert server.refused_busy == 0

        async def run() -> bytes:
            fetch = asyncio.create_task(fetch_firmware(url, max_size=fw.size, timeout_s=30))
            deadline = time.monotonic() + 5
            while server.refused_busy == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            hog.close()  # the slot frees; the meter asks again after Retry-After
            return await fetch

        started = time.monotonic()
        image = asyncio.run(run())
        assert hashlib.sha256(image).hexdigest() == fw.sha256
        assert server.refused_busy >= 1
        assert time.monotonic() - started >= RETRY_AFTER_S - 0.5
    finally:
        server.stop(drain_s=0.1)


def test_a_refused_url_is_a_plain_failure(metadata: MetadataStore, tmp_path: Path) -> None:
    server = endpoint(metadata, tmp_path)
    try:
        OtaService(metadata, server.archive).upload_bytes(IMAGE, "2.0.0")
        url = f"http://127.0.0.1:{server.port}/firmware/2.0.0"  # unsigned
        with pytest.raises(FirmwareError, match=r"^HTTP 403 Forbidden$"):
            asyncio.run(fetch_firmware(url, max_size=len(IMAGE), timeout_s=10))
    finally:
        server.stop(drain_s=0.1)
