"""The collector's firmware endpoint over real HTTP, the choice between it and presigned S3
URLs, and what happens when its port is taken."""

from __future__ import annotations

import hashlib
import http.client
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotmeter_tui.backend.commands import CommandService
from iotmeter_tui.backend.dispatch import Dispatcher
from iotmeter_tui.backend.errors import StoreUnavailable
from iotmeter_tui.backend.firmware import FirmwareServer, PresignedLinks, firmware_links
from iotmeter_tui.backend.ota import OtaService, RolloutDriver
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.archive_s3 import S3Archive
from iotmeter_tui.backend.stores.metadata import MetadataStore, open_metadata
from iotmeter_tui.testing import S3Server
from iotmeter_tui.testing.commands import FakePublisher, register
from iotmeter_tui.testing.fleet import wait_for
from iotmeter_tui.testing.harness import settings_for

IMAGE = bytes(range(256)) * 300


@pytest.fixture
def metadata(tmp_path: Path) -> Iterator[MetadataStore]:
    store = open_metadata(f"sqlite:///{tmp_path}/meta.db")
    yield store
    store.close()


@pytest.fixture
def endpoint(metadata: MetadataStore, tmp_path: Path) -> Iterator[FirmwareServer]:
    server = FirmwareServer("127.0.0.1:0", metadata, DirectoryArchive(tmp_path / "archive"))
    server.start()
    yield server
    server.stop()


def get(server: FirmwareServer, path: str, method: str = "GET") -> tuple[int, dict[str, str],
                                                                         bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_an_image_is_served_whole_with_its_length(endpoint: FirmwareServer,
                                                  metadata: MetadataStore) -> None:
    fw = OtaService(metadata, endpoint.archive).upload_bytes(IMAGE, "2.0.0+b7")
    url = endpoint.url_for(fw, 60)
    assert url == f"http://127.0.0.1:{endpoint.port}/firmware/2.0.0%2Bb7"
    status, headers, body = get(endpoint, url.split(str(endpoint.port), 1)[1])
    assert status == 200 and body == IMAGE
    assert headers["Content-Length"] == str(len(IMAGE))
    assert headers["ETag"] == f'"{hashlib.sha256(IMAGE).hexdigest()}"'
    status, headers, body = get(endpoint, "/firmware/2.0.0+b7", "HEAD")
    assert status == 200 and body == b"" and headers["Content-Length"] == str(len(IMAGE))


@pytest.mark.parametrize("path", ["/firmware/9.9.9", "/firmware/", "/firmware/..%2Fx", "/",
                                  "/other/2.0.0"])
def test_what_is_not_an_uploaded_version_is_404(endpoint: FirmwareServer, path: str) -> None:
    status, _, _ = get(endpoint, path)
    assert status == 404


def test_an_image_missing_from_the_archive_is_404(endpoint: FirmwareServer,
                                                  metadata: MetadataStore) -> None:
    fw = OtaService(metadata, endpoint.archive).upload_bytes(IMAGE, "2.0.0")
    endpoint.archive.delete(fw.key)
    status, _, body = get(endpoint, "/firmware/2.0.0")
    assert status == 404 and b"missing from the archive" in body


def test_a_store_outage_answers_503_with_retry_after(endpoint: FirmwareServer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def down(version: str) -> None:
        raise StoreUnavailable("sqlite", "database is locked")

    monkeypatch.setattr(endpoint.metadata, "get_firmware", down)
    status, headers, _ = get(endpoint, "/firmware/2.0.0")
    assert status == 503 and headers["Retry-After"] == "5"


def test_links_presigned_for_s3_and_served_otherwise(tmp_path: Path, metadata: MetadataStore,
                                                     s3: S3Server) -> None:
    embedded = settings_for(tmp_path / "a", {})
    links, server = firmware_links(embedded, metadata, DirectoryArchive(tmp_path / "archive"))
    assert isinstance(links, FirmwareServer) and server is links

    bucket = S3Archive("fw-links", s3.endpoint, s3.access_key, s3.secret_key)
    production = settings_for(tmp_path / "b", {"IOTMETER_ARCHIVE_URL": "s3://fw-links",
                                               "IOTMETER_S3_ENDPOINT": s3.endpoint})
    links, server = firmware_links(production, metadata, bucket)
    assert isinstance(links, PresignedLinks) and server is None
    fw = OtaService(metadata, bucket).upload_bytes(IMAGE, "2.0.0")
    url = links.url_for(fw, 300)
    assert url.startswith(f"{s3.endpoint}/fw-links/{fw.key}?") and "X-Amz-Signature" in url

    # A base URL names a proxy in front of the endpoint, even with an S3 archive.
    proxied = settings_for(tmp_path / "c", {"IOTMETER_ARCHIVE_URL": "s3://fw-links",
                                            "IOTMETER_S3_ENDPOINT": s3.endpoint,
                                            "IOTMETER_FIRMWARE_BASE_URL": "https://fw.example/"})
    links, server = firmware_links(proxied, metadata, bucket)
    assert server is links
    assert links.url_for(fw, 300) == "https://fw.example/firmware/2.0.0"
    bucket.close()


def test_a_taken_port_holds_campaigns_but_not_commands(metadata: MetadataStore,
                                                       tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    archive = DirectoryArchive(tmp_path / "archive")
    server = FirmwareServer(f"127.0.0.1:{port}", metadata, archive)
    broker = FakePublisher()
    register(metadata, "dc-1")
    ota = OtaService(metadata, archive)
    ota.upload_bytes(IMAGE, "2.0.0")
    campaign = ota.start_campaign("2.0.0", all_devices=True)
    command = CommandService(metadata, None).send("dc-1", "ping")
    dispatcher = Dispatcher(CommandService(metadata, broker),
                            RolloutDriver(metadata, broker, server),
                            firmware_server=server, interval_s=0.05, firmware_retry_s=0.2)
    dispatcher.start()
    try:
        wait_for(lambda: broker.sent, timeout_s=5, what="the command delivered")
        assert "cannot listen" in (dispatcher.health()["error"] or "")
        assert [m.id for m in broker.decoded()] == [command.id]
        assert ota.status(campaign.id).targets[0].state == "pending"
        blocker.close()  # the port is free again: the endpoint starts, the offer goes out
        wait_for(lambda: len(broker.sent) == 2, timeout_s=15, what="the offer")
        assert dispatcher.health()["firmware_endpoint"] == f"http://127.0.0.1:{port}"
    finally:
        dispatcher.stop()
        blocker.close()


def test_stop_does_not_wait_long_for_a_stalled_client(endpoint: FirmwareServer) -> None:
    stalled = socket.create_connection(("127.0.0.1", endpoint.port))  # never sends a request
    try:
        time.sleep(0.2)
        started = time.monotonic()
        endpoint.stop(drain_s=0.5)
        assert time.monotonic() - started < 2
    finally:
        stalled.close()
