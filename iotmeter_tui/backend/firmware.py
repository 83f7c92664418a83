"""Where devices fetch firmware images: the URL that goes into an OTA offer.

Two ways, picked by `firmware_links()` from the settings:
- **presigned S3 URLs** when the archive is S3 and no `firmware_base_url` is set: devices GET
  the object straight from the S3 server, which must be reachable from them;
- **the firmware endpoint** otherwise: a small HTTP server in the collector process,
  `GET /firmware/<version>`, streaming the image from the archive store with its
  Content-Length (stdlib `http.server`, a thread per download). It binds `firmware_listen`;
  offers carry `firmware_base_url` when set (a reverse proxy, a public name), else
  `http://<firmware_listen>`. docs/commands-ota.md explains how to expose it.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import threading
from typing import Any, Final, Protocol
from urllib.parse import quote, unquote, urlsplit

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.config import Settings
from iotmeter_tui.backend.errors import StoreError, StoreUnavailable
from iotmeter_tui.backend.stores.archive import ArchiveStore
from iotmeter_tui.backend.stores.metadata import Firmware, MetadataStore

log = logging.getLogger(__name__)

PATH_PREFIX: Final = "/firmware/"
# Each download holds its image in memory; more at once wait their turn, which bounds the
# memory a fleet-wide rollout can take (campaign batches bound it further).
MAX_CONCURRENT_DOWNLOADS: Final = 16
# On stop, downloads under way get this long to finish (within the collector's stop budget).
STOP_DRAIN_S: Final = 4.0
RETRY_AFTER_S: Final = 5
_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})


class FirmwareLinks(Protocol):
    """Makes the URL an offer carries for an image, valid for at least `valid_s` seconds."""

    def url_for(self, fw: Firmware, valid_s: int) -> str: ...


class PresignedLinks:
    """Presigned GET URLs of the image objects in an S3 archive (signed locally, no request)."""

    def __init__(self, archive: Any) -> None:
        self._archive = archive  # an S3Archive: it has presigned_get_url

    def url_for(self, fw: Firmware, valid_s: int) -> str:
        return str(self._archive.presigned_get_url(fw.key, valid_s))


def split_host_port(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9109' -> ('127.0.0.1', 9109); '[::1]:0' -> ('::1', 0)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class FirmwareServer:
    """The firmware endpoint. `start()` binds (OSError if it cannot); `url_for` makes links."""

    def __init__(self, listen: str, metadata: MetadataStore, archive: ArchiveStore, *,
                 base_url: str | None = None) -> None:
        self.host, self.requested_port = split_host_port(listen)
        self.metadata = metadata
        self.archive = archive
        self.base_url = base_url.rstrip("/") if base_url else None
        self._httpd: _FirmwareHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def serving(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return int(self._httpd.server_address[1])

    @property
    def advertised_url(self) -> str:
        """The base URL offers carry."""
        if self.base_url:
            return self.base_url
        host = self.host
        if host in _WILDCARD_HOSTS:
            host = socket.gethostname()  # a guess; firmware_base_url says it for sure
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def url_for(self, fw: Firmware, valid_s: int) -> str:
        return f"{self.advertised_url}{PATH_PREFIX}{quote(fw.version, safe='')}"

    def start(self) -> None:
        if self._httpd is not None:
            return
        server_class = _FirmwareHTTPServer6 if ":" in self.host else _FirmwareHTTPServer
        httpd = server_class((self.host, self.requested_port), _FirmwareHandler)
        httpd.metadata = self.metadata
        httpd.archive = self.archive
        httpd.downloads = threading.BoundedSemaphore(MAX_CONCURRENT_DOWNLOADS)
        httpd.active = 0
        httpd.idle = threading.Condition()
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="iotmeter-firmware-http", daemon=True)
        self._thread.start()
        if not self.base_url and self.host in _WILDCARD_HOSTS:
            log.warning("firmware endpoint on a wildcard address; offers name this host as "
                        "%s: set IOTMETER_FIRMWARE_BASE_URL to be sure", socket.gethostname(),
                        extra={"event": "firmware_url_guessed"})
        log.info("firmware endpoint serving", extra={
            "event": "firmware_endpoint_started", "listen": f"{self.host}:{self.port}",
            "url": self.advertised_url})

    def stop(self, drain_s: float = STOP_DRAIN_S) -> None:
        """Stop accepting; downloads under way get `drain_s` to finish, so a clean stop does
        not cut a device off halfway through an image (a stalled one does not hold it up)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        with httpd.idle:
            httpd.idle.wait_for(lambda: httpd.active == 0, timeout=drain_s)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)


class _FirmwareHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() waits for downloads itself, with a bound
    metadata: MetadataStore
    archive: ArchiveStore
    downloads: threading.BoundedSemaphore
    active: int  # requests being answered, guarded by `idle`
    idle: threading.Condition

    def process_request(self, request: Any, client_address: Any) -> None:
        # Counted here, in the serving thread, so stop() cannot miss a request accepted
        # just before shutdown whose thread has not started yet.
        with self.idle:
            self.active += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.idle:
                self.active -= 1
                self.idle.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("firmware endpoint: request failed", extra={
            "event": "firmware_request_error", "client": str(client_address)})


class _FirmwareHTTPServer6(_FirmwareHTTPServer):
    address_family = socket.AF_INET6


class _FirmwareHandler(http.server.BaseHTTPRequestHandler):
    server: _FirmwareHTTPServer
    server_version = "iotmeter-firmware"
    timeout = 30  # a device that stops reading does not hold a thread for ever

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def _serve(self, *, with_body: bool) -> None:
        path = urlsplit(self.path).path
        version = unquote(path[len(PATH_PREFIX):]) if path.startswith(PATH_PREFIX) else ""
        if not version or not protocol.is_valid_label(version):
            self._error(404, "not a firmware path: GET /firmware/<version>")
            return
        with self.server.downloads:
            try:
                fw = self.server.metadata.get_firmware(version)
                if fw is None:
                    self._error(404, f"no firmware {version}")
                    return
                image = self.server.archive.get(fw.key)
            except KeyError:
                log.error("firmware image missing from the archive", extra={
                    "event": "firmware_missing", "version": version})
                self._error(404, f"the image of firmware {version} is missing from the archive")
                return
            except StoreError as exc:
                self._error(503 if isinstance(exc, StoreUnavailable) else 500, str(exc))
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(image)))
            self.send_header("ETag", f'"{fw.sha256}"')
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if with_body:
                # A device may hang up early (it refuses an image larger than offered).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(image)

    def _error(self, status: int, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", str(RETRY_AFTER_S))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("firmware endpoint: " + format, *args)


def firmware_links(settings: Settings, metadata: MetadataStore,
                   archive: ArchiveStore) -> tuple[FirmwareLinks, FirmwareServer | None]:
    """How offers name images, and the endpoint to run for it (None: nothing to serve)."""
    if settings.firmware_base_url is None and hasattr(archive, "presigned_get_url"):
        return PresignedLinks(archive), None
    server = FirmwareServer(settings.firmware_listen, metadata, archive,
                            base_url=settings.firmware_base_url)
    return server, server
