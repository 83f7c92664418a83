"""The collector's firmware endpoint over real HTTP, the choice between it and presigned S3
URLs, and what happens when its port is taken."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotmeter_tui.backend.config import load_settings
from iotmeter_tui.backend.control.commands import CommandService
from iotmeter_tui.backend.control.dispatch import Dispatcher
from iotmeter_tui.backend.control.firmware import (
    BUSY_HEADROOM,
    SECRET_FILE,
    FirmwareServer,
    PresignedLinks,
    UrlSigner,
    firmware_links,
    load_url_secret,
)
from iotmeter_tui.backend.control.ota import OtaService, RolloutDriver
from iotmeter_tui.backend.errors import StoreUnavailable
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.archive_s3 import S3Archive
from iotmeter_tui.backend.stores.factory import open_metadata
from iotmeter_tui.backend.stores.metadata import Firmware, MetadataStore
from testsupport import S3Server
from testsupport.commands import FakePublisher, register
from testsupport.fleet import wait_for
from testsupport.harness import settings_for

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


def get(server: FirmwareServer, path: str, method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def path_of(server: FirmwareServer, url: str) -> str:
    return url.split(f":{server.port}", 1)[1]


def signed_path(server: FirmwareServer, fw: Firmware, valid_s: int = 60) -> str:
    return path_of(server, server.url_for(fw, valid_s))


def test_an_image_is_served_whole_with_its_length(endpoint: FirmwareServer,
                                                  metadata: MetadataStore) -> None:
    fw = OtaService(metadata, endpoint.archive).upload_bytes(IMAGE, "2.0.0+b7")
    url = endpoint.url_for(fw, 60)
    assert url.startswith(f"http://127.0.0.1:{endpoint.port}/firmware/2.0.0%2Bb7?expires=")
    status, headers, body = get(endpoint, path_of(endpoint, url))
    assert status == 200 and body == IMAGE
    assert headers["Content-Length"] == str(len(IMAGE))
    assert headers["ETag"] == f'"{hashlib.sha256(IMAGE).hexdigest()}"'
    assert headers["Accept-Ranges"] == "bytes"
    assert "Python" not in headers["Server"]
    status, headers, body = get(endpoint, path_of(endpoint, url), "HEAD")
    assert status == 200 and body == b"" and headers["Content-Length"] == str(len(IMAGE))


@pytest.mark.parametrize("path", ["/firmware/", "/firmware/..%2Fx", "/", "/other/2.0.0"])
def test_what_is_not_a_firmware_path_is_404(endpoint: FirmwareServer, path: str) -> None:
    status, _, body = get(endpoint, path)
    assert (status, body) == (404, b"not found\n")


def test_unsigned_expired_or_tampered_urls_are_403(endpoint: FirmwareServer,
                                                    metadata: MetadataStore) -> None:
    clock = [time.time()]
    endpoint.signer = UrlSigner(b"k" * 32, clock=lambda: clock[0])
    endpoint.stop()
    endpoint.start()  # the handler takes the signer at start
    ota = OtaService(metadata, endpoint.archive)
    fw = ota.upload_bytes(IMAGE, "2.0.0")
    other = ota.upload_bytes(IMAGE[::-1], "2.0.1")
    good = signed_path(endpoint, fw, 60)
    assert get(endpoint, good)[0] == 200
    expires = re.search(r"expires=(\d+)", good)[1]  # type: ignore[index]
    sig = re.search(r"sig=([0-9a-f]+)", good)[1]  # type: ignore[index]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    refused = [
        "/firmware/2.0.0",  # unsigned
        "/firmware/9.9.9",  # unsigned, and no such version: the same answer
        f"/firmware/2.0.0?expires={expires}",
        f"/firmware/2.0.0?sig={sig}",
        f"/firmware/2.0.0?expires={expires}&sig={flipped}",
        f"/firmware/2.0.0?expires={int(expires) + 3600}&sig={sig}",  # a later expiry
        f"/firmware/2.0.1?expires={expires}&sig={sig}",  # another version, this signature
        f"/firmware/9.9.9?expires={expires}&sig={sig}",
        f"/firmware/2.0.0?expires=-1&sig={sig}",
        f"/firmware/2.0.0?expires={expires}&sig={sig}x",
        f"/firmware/2.0.0?expires=%C2%B2&sig={sig}",  # a digit to str.isdigit, not to int
        f"/firmware/2.0.0?expires={expires}&sig={sig}&a=1&b=2&c=3&d=4",  # too many fields
        f"/firmware/2.0.0?expires={expires}&sig=%FF%FE",
    ]
    for path in refused:
        assert get(endpoint, path)[:3:2] == (403, b"forbidden\n"), path
    assert get(endpoint, signed_path(endpoint, other))[0] == 200
    clock[0] += 61  # the URL has expired
    assert get(endpoint, good)[:3:2] == (403, b"forbidden\n")
    # A server with another secret does not honour this one's URLs.
    stranger = UrlSigner(b"s" * 32)
    assert not stranger.allows("2.0.0", good.partition("?")[2])


def test_a_signed_url_of_an_unknown_version_is_404(endpoint: FirmwareServer) -> None:
    status, _, body = get(endpoint, "/firmware/9.9.9?" + endpoint.signer.query("9.9.9", 60))
    assert (status, body) == (404, b"not found\n")


def test_an_image_missing_from_the_archive_is_a_generic_404(endpoint: FirmwareServer,
                                                            metadata: MetadataStore) -> None:
    fw = OtaService(metadata, endpoint.archive).upload_bytes(IMAGE, "2.0.0")
    endpoint.archive.delete(fw.key)
    status, _, body = get(endpoint, signed_path(endpoint, fw))
    assert (status, body) == (404, b"not found\n")  # nothing about the archive or its paths


def test_a_store_outage_answers_a_generic_503_with_retry_after(
        endpoint: FirmwareServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(version: str) -> None:
        raise StoreUnavailable("postgresql", "cannot reach db.internal:5432 (10.0.3.7)")

    monkeypatch.setattr(endpoint.metadata, "get_firmware", down)
    path = "/firmware/2.0.0?" + endpoint.signer.query("2.0.0", 60)
    status, headers, body = get(endpoint, path)
    assert status == 503 and headers["Retry-After"] == "5"
    assert body == b"unavailable\n"


@pytest.mark.parametrize(("header", "start", "end"), [
    ("bytes=0-0", 0, 0), ("bytes=100-199", 100, 199), ("bytes=70000-", 70_000, len(IMAGE) - 1),
    ("bytes=-10", len(IMAGE) - 10, len(IMAGE) - 1), ("bytes=5-999999999", 5, len(IMAGE) - 1),
    ("bytes=-999999999", 0, len(IMAGE) - 1),
])
def test_a_range_request_is_served_206(endpoint: FirmwareServer, metadata: MetadataStore,
                                       header: str, start: int, end: int) -> None:
    fw = OtaService(metadata, endpoint.archive).upload_bytes(IMAGE, "2.0.0")
    status, headers, body = get(endpoint, signed_path(endpoint, fw), headers={"Range": header})
    assert status == 206 and body == IMAGE[start:end + 1]
    assert headers["Content-Range"] == f"bytes {start}-{end}/{len(IMAGE)}"
    assert headers["Content-Length"] == str(end - start + 1)


@pytest.mark.parametrize("header", [f"bytes={len(IMAGE)}-", "bytes=99999999-", "bytes=-0",
                                    "bytes=10-5"])
def test_a_range_past_the_end_is_416(endpoint: FirmwareServer, metadata: MetadataStore,
                                     header: str) -> None:
    fw = OtaService(metadata, endpoint.archive).upload_bytes(IMAGE, "2.0.0")
    status, headers, _ = get(endpoint, signed_path(endpoint, fw), headers={"Range": header})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(IMAGE)}"


@pytest.mark.parametrize("headers", [{"Range": "bytes=0-1,5-6"}, {"Range": "items=0-5"},
                                     {"Range": "bytes=0-5", "If-Range": '"another-image"'}])
def test_other_range_forms_get_the_whole_image(endpoint: FirmwareServer,
                                               metadata: MetadataStore,
                                               headers: dict[str, str]) -> None:
    fw = OtaService(metadata, endpoint.archive).upload_bytes(IMAGE, "2.0.0")
    status, _, body = get(endpoint, signed_path(endpoint, fw), headers=headers)
    assert status == 200 and body == IMAGE


def test_an_interrupted_download_resumes_with_a_range(endpoint: FirmwareServer,
                                                      metadata: MetadataStore) -> None:
    image = os.urandom(3 * 1024 * 1024)
    fw = OtaService(metadata, endpoint.archive).upload_bytes(image, "3.0.0")
    path = signed_path(endpoint, fw)
    # The first attempt reads part of the body, then the link drops.
    sock = _slow_reader(endpoint, path)
    sock.settimeout(10)
    received = bytearray()
    while len(received) < 1_000_000:
        received += sock.recv(256 * 1024)
    sock.close()
    head, _, first = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
    status, headers, rest = get(endpoint, path, headers={
        "Range": f"bytes={len(first)}-", "If-Range": f'"{fw.sha256}"'})
    assert status == 206
    assert headers["Content-Range"] == f"bytes {len(first)}-{len(image) - 1}/{len(image)}"
    assert hashlib.sha256(first + rest).hexdigest() == fw.sha256
    # The cut download gave its slot back.
    wait_for(lambda: _active(endpoint) == 0, timeout_s=5, what="the cut download to end")


def _active(server: FirmwareServer) -> int:
    assert server._httpd is not None
    return server._httpd.active


def _slow_reader(server: FirmwareServer, path: str) -> socket.socket:
    """A client that sends its request, then reads nothing (a slow cellular link)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: fw\r\n\r\n".encode())
    return sock


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(20)
    data = bytearray()
    while chunk := sock.recv(1 << 20):
        data += chunk
    sock.close()
    return bytes(data)


def _capped(metadata: MetadataStore, tmp_path: Path, idle_s: float) -> Iterator[FirmwareServer]:
    server = FirmwareServer("127.0.0.1:0", metadata, DirectoryArchive(tmp_path / "capped"),
                            max_downloads=2, idle_timeout_s=idle_s)
    server.start()
    yield server
    server.stop(drain_s=0.1)


@pytest.fixture
def capped(metadata: MetadataStore, tmp_path: Path) -> Iterator[FirmwareServer]:
    """At most two downloads at once, cut after 1 s without progress."""
    yield from _capped(metadata, tmp_path, 1.0)


@pytest.fixture
def capped_patient(metadata: MetadataStore, tmp_path: Path) -> Iterator[FirmwareServer]:
    """At most two downloads; idle connections outlive the test's checks."""
    yield from _capped(metadata, tmp_path, 30.0)


def test_over_the_cap_is_503_with_retry_after(capped_patient: FirmwareServer,
                                              metadata: MetadataStore) -> None:
    capped = capped_patient
    fw = OtaService(metadata, capped.archive).upload_bytes(os.urandom(16 << 20), "4.0.0")
    path = signed_path(capped, fw)
    slow = [_slow_reader(capped, path) for _ in range(2)]
    try:
        wait_for(lambda: _active(capped) == 2, timeout_s=5, what="two downloads under way")
        time.sleep(0.1)
        status, headers, body = get(capped, path)
        assert (status, headers["Retry-After"], body) == (503, "5", b"busy\n")
        # Past the headroom too the answer is 503, from the accepting thread: no thread each.
        idle = [socket.create_connection(("127.0.0.1", capped.port)) for _ in range(BUSY_HEADROOM)]
        wait_for(lambda: _active(capped) == 2 + BUSY_HEADROOM, timeout_s=5, what="headroom full")
        status, headers, _ = get(capped, path)
        assert status == 503 and headers["Retry-After"] == "5"
        assert capped.refused_busy == 2
        for sock in idle:
            sock.close()
    finally:
        images = [_read_all(sock) for sock in slow]
    for data in images:  # the slow downloads were never disturbed
        assert hashlib.sha256(data.partition(b"\r\n\r\n")[2]).hexdigest() == fw.sha256
    assert get(capped, path)[0] == 200  # slots free again


def test_a_stalled_download_is_cut_after_the_idle_timeout(capped: FirmwareServer,
                                                          metadata: MetadataStore) -> None:
    fw = OtaService(metadata, capped.archive).upload_bytes(os.urandom(16 << 20), "4.0.0")
    path = signed_path(capped, fw)
    stalled = [_slow_reader(capped, path) for _ in range(2)]
    try:
        wait_for(lambda: _active(capped) == 2, timeout_s=5, what="two downloads under way")
        assert get(capped, path)[0] == 503
        # Both stalled past 1 s without progress: cut, their slots free.
        wait_for(lambda: _active(capped) == 0, timeout_s=10, what="stalled downloads cut")
        assert get(capped, path, headers={"Range": "bytes=0-9"})[0] == 206
    finally:
        for sock in stalled:
            sock.close()


def test_a_slow_download_that_keeps_moving_is_not_cut(capped: FirmwareServer,
                                                      metadata: MetadataStore) -> None:
    image = os.urandom(4 << 20)
    fw = OtaService(metadata, capped.archive).upload_bytes(image, "4.1.0")
    sock = _slow_reader(capped, signed_path(capped, fw))
    sock.settimeout(10)
    data = bytearray()
    started = time.monotonic()
    # Longer in total than the 1 s idle timeout, but every read within it.
    while time.monotonic() - started < 2.5:
        data += sock.recv(256 * 1024)
        time.sleep(0.3)
    data += _read_all(sock)
    assert hashlib.sha256(bytes(data).partition(b"\r\n\r\n")[2]).hexdigest() == fw.sha256


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_stays_bound_under_parallel_slow_downloads(endpoint: FirmwareServer,
                                                          metadata: MetadataStore) -> None:
    size, clients = 32 << 20, 6
    image = os.urandom(size)
    fw = OtaService(metadata, endpoint.archive).upload_bytes(image, "5.0.0")
    del image
    path = signed_path(endpoint, fw)
    baseline = _rss_bytes()
    slow = [_slow_reader(endpoint, path) for _ in range(clients)]
    received = [bytearray() for _ in slow]
    peak = baseline
    try:
        wait_for(lambda: _active(endpoint) == clients, timeout_s=5, what="downloads under way")
        for _ in range(10):  # the downloads sit with full socket buffers, reading slowly
            for sock, data in zip(slow, received, strict=True):
                data += sock.recv(64 * 1024)
            peak = max(peak, _rss_bytes())
            time.sleep(0.05)
    finally:
        images = [bytes(data) + _read_all(sock) for sock, data in zip(slow, received,
                                                                      strict=True)]
    # Holding each image whole would take clients x 32 MiB = 192 MiB; a chunk each is < 1 MiB.
    assert peak - baseline < 24 << 20, f"RSS grew {(peak - baseline) >> 20} MiB"
    for data in images:
        assert hashlib.sha256(data.partition(b"\r\n\r\n")[2]).hexdigest() == fw.sha256


def test_the_url_secret_is_made_once_0600_and_a_setting_wins(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "home", {})
    first = load_url_secret(settings)
    secret_file = settings.home / SECRET_FILE
    assert len(first) >= 32 and stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert load_url_secret(settings) == first
    chosen = settings_for(tmp_path / "other", {"IOTMETER_FIRMWARE_URL_SECRET": "c" * 40})
    assert load_url_secret(chosen) == b"c" * 40


def test_the_endpoint_binds_loopback_by_default(tmp_path: Path,
                                                metadata: MetadataStore) -> None:
    settings = load_settings(env={"IOTMETER_HOME": str(tmp_path / "home")})
    assert settings.firmware_listen == "127.0.0.1:9109"
    _, server = firmware_links(settings, metadata, DirectoryArchive(tmp_path / "archive"))
    assert server is not None and server.host == "127.0.0.1"
    assert server.max_downloads == 16 and server.idle_timeout_s == 60.0


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
    assert links.url_for(fw, 300).startswith("https://fw.example/firmware/2.0.0?expires=")
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
        assert "cannot listen" in (dispatcher.health().error or "")
        assert [m.id for m in broker.decoded()] == [command.id]
        assert ota.status(campaign.id).targets[0].state == "pending"
        blocker.close()  # the port is free again: the endpoint starts, the offer goes out
        wait_for(lambda: len(broker.sent) == 2, timeout_s=15, what="the offer")
        assert dispatcher.health().firmware_endpoint == f"http://127.0.0.1:{port}"
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
