"""Where devices fetch firmware images: the URL that goes into an OTA offer.

Two ways, picked by `firmware_links()` from the settings:
- **presigned S3 URLs** when the archive is S3 and no `firmware_base_url` is set: devices GET
  the object straight from the S3 server, which must be reachable from them;
- **the firmware endpoint** otherwise: a small HTTP server in the collector process,
  `GET /firmware/<version>?expires=<unix s>&sig=<hmac>`. Only URLs it signed itself (HMAC-SHA256
  over the version and the expiry, with a server secret) and that have not expired are served,
  so versions cannot be guessed and fetched. Images stream from the archive in chunks (memory
  per download is one chunk, whatever the image's size), ranges are served (206) so an
  interrupted download resumes, at most `firmware_max_downloads` run at once (503 with
  Retry-After beyond), and a download is cut only when it makes no progress for
  `firmware_idle_timeout_s`. Error bodies are generic: details go to the log, not to the
  device. It binds `firmware_listen` (127.0.0.1 by default); offers carry `firmware_base_url`
  when set (a reverse proxy, a public name), else `http://<firmware_listen>`.
  docs/commands-ota.md explains how to expose it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.server
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, quote, unquote, urlsplit

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.config import Settings
from iotmeter_tui.backend.errors import StoreError, StoreUnavailable
from iotmeter_tui.backend.stores.archive import ArchiveStore
from iotmeter_tui.backend.stores.metadata import Firmware, MetadataStore

log = logging.getLogger(__name__)

PATH_PREFIX: Final = "/firmware/"
DEFAULT_MAX_DOWNLOADS: Final = 16
DEFAULT_IDLE_TIMEOUT_S: Final = 60.0
# Connections beyond the download cap still get a thread, to read their request and answer
# 503 cleanly; beyond this many more, the accepting thread answers 503 itself and hangs up.
# Either way the number of threads is bounded.
BUSY_HEADROOM: Final = 8
# On stop, downloads under way get this long to finish (within the collector's stop budget).
STOP_DRAIN_S: Final = 4.0
RETRY_AFTER_S: Final = 5
SECRET_FILE: Final = "firmware-url.secret"
_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})
_URL_SIGNATURE_TAG: Final = b"iotmeter-firmware-url-v1"
_RANGE_RE: Final = re.compile(r"bytes=([0-9]*)-([0-9]*)")
_EXPIRES_RE: Final = re.compile(r"[0-9]{1,12}")
_BUSY_RESPONSE: Final = (
    f"HTTP/1.1 503 Service Unavailable\r\nRetry-After: {RETRY_AFTER_S}\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n"
    "Connection: close\r\n\r\nbusy\n"
).encode("ascii")


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


# --- signed URLs ----------------------------------------------------------------------------

class UrlSigner:
    """Expiring download URLs: HMAC-SHA256 over the version and the expiry (Unix seconds)."""

    def __init__(self, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 32:
            raise ValueError("a URL signing secret needs at least 32 bytes")
        self._secret = secret
        self._clock = clock

    def _mac(self, version: str, expires: int) -> str:
        message = b"\n".join((_URL_SIGNATURE_TAG, version.encode(), str(expires).encode()))
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def query(self, version: str, valid_s: int) -> str:
        expires = int(self._clock()) + max(1, int(valid_s))
        return f"expires={expires}&sig={self._mac(version, expires)}"

    def allows(self, version: str, query: str) -> bool:
        """Whether `query` carries an unexpired signature of `version` (constant-time check)."""
        try:
            fields = parse_qs(query, max_num_fields=4)
        except ValueError:  # more fields than a URL of ours has
            return False
        expires_text, sig = fields.get("expires", [""])[0], fields.get("sig", [""])[0]
        if _EXPIRES_RE.fullmatch(expires_text) is None or not sig:
            return False
        expires = int(expires_text)
        # Compared first whatever the expiry, so timing tells nothing about which check failed.
        valid = hmac.compare_digest(self._mac(version, expires).encode(),
                                    sig.encode("ascii", "replace"))
        return valid and expires >= self._clock()


def load_url_secret(settings: Settings) -> bytes:
    """The setting, or a secret generated once into $IOTMETER_HOME/firmware-url.secret (0600),
    so URLs in offers already sent stay valid across restarts."""
    if settings.firmware_url_secret:
        return settings.firmware_url_secret.encode()
    path = settings.home / SECRET_FILE
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it a moment ago
        return _read_secret(path)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(secrets.token_hex(32) + "\n")
        file.flush()
        os.fsync(file.fileno())
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    secret = path.read_bytes().strip()
    if len(secret) < 32:
        raise StoreError("firmware", f"{path} holds no usable URL secret (under 32 bytes); "
                         "delete it to have a new one made")
    return secret


# --- the endpoint ---------------------------------------------------------------------------

class FirmwareServer:
    """The firmware endpoint. `start()` binds (OSError if it cannot); `url_for` makes links."""

    def __init__(self, listen: str, metadata: MetadataStore, archive: ArchiveStore, *,
                 base_url: str | None = None, secret: bytes | None = None,
                 max_downloads: int = DEFAULT_MAX_DOWNLOADS,
                 idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.host, self.requested_port = split_host_port(listen)
        self.metadata = metadata
        self.archive = archive
        self.base_url = base_url.rstrip("/") if base_url else None
        # No secret given: one for this process only (URLs die with it); the collector
        # passes the persistent one.
        self.signer = UrlSigner(secret or secrets.token_bytes(32), clock=clock)
        self.max_downloads = max_downloads
        self.idle_timeout_s = idle_timeout_s
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
    def refused_busy(self) -> int:
        """Requests answered 503 because the download cap was reached."""
        return self._httpd.refused_busy if self._httpd is not None else 0

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
        return (f"{self.advertised_url}{PATH_PREFIX}{quote(fw.version, safe='')}?"
                f"{self.signer.query(fw.version, valid_s)}")

    def start(self) -> None:
        if self._httpd is not None:
            return
        server_class = _FirmwareHTTPServer6 if ":" in self.host else _FirmwareHTTPServer
        httpd = server_class((self.host, self.requested_port), _FirmwareHandler)
        httpd.metadata = self.metadata
        httpd.archive = self.archive
        httpd.signer = self.signer
        httpd.downloads = threading.BoundedSemaphore(self.max_downloads)
        httpd.max_connections = self.max_downloads + BUSY_HEADROOM
        httpd.idle_timeout_s = self.idle_timeout_s
        httpd.active = 0
        httpd.refused_busy = 0
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
    signer: UrlSigner
    downloads: threading.BoundedSemaphore
    max_connections: int
    idle_timeout_s: float
    active: int  # requests being answered, guarded by `idle`
    refused_busy: int
    idle: threading.Condition

    def process_request(self, request: Any, client_address: Any) -> None:
        # Counted here, in the serving thread, so stop() cannot miss a request accepted
        # just before shutdown whose thread has not started yet.
        with self.idle:
            if self.active >= self.max_connections:
                self.refused_busy += 1
                busy = True
            else:
                self.active += 1
                busy = False
        if busy:
            _answer_busy(request)
            self.shutdown_request(request)
            return
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


def _answer_busy(request: socket.socket) -> None:
    """A canned 503 from the accepting thread, which must never wait on a client: take what
    the client already sent (so closing does not reset the answer away), write, hang up."""
    with contextlib.suppress(OSError):
        request.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            request.recv(65536)
        request.send(_BUSY_RESPONSE)


class _Unsatisfiable(Exception):
    """A Range request that lies wholly past the image's end: 416."""


class _FirmwareHandler(http.server.BaseHTTPRequestHandler):
    server: _FirmwareHTTPServer
    server_version = "iotmeter-firmware"
    sys_version = ""  # no library versions for a scanner to match

    def setup(self) -> None:
        # A per-operation socket timeout: each read of the request and each chunk written
        # must make progress within it; a slow link may take as long as it needs in total.
        super().setup()
        self.connection.settimeout(self.server.idle_timeout_s)

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def _serve(self, *, with_body: bool) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        version = unquote(path[len(PATH_PREFIX):]) if path.startswith(PATH_PREFIX) else ""
        if not version or not protocol.is_valid_label(version):
            self._error(404, "not found")
            return
        if not self.server.signer.allows(version, parts.query):
            # Checked before any lookup: without a signed URL nothing tells whether a
            # version exists.
            log.info("firmware request refused: unsigned, expired or tampered URL", extra={
                "event": "firmware_url_refused", "version": version,
                "client": self.client_address[0]})
            self._error(403, "forbidden")
            return
        if not self.server.downloads.acquire(blocking=False):
            with self.server.idle:
                self.server.refused_busy += 1
            self._error(503, "busy")
            return
        try:
            self._serve_image(version, with_body)
        finally:
            self.server.downloads.release()

    def _serve_image(self, version: str, with_body: bool) -> None:
        try:
            fw = self.server.metadata.get_firmware(version)
            if fw is None:
                self._error(404, "not found")
                return
            try:
                wanted = self._range(fw)
            except _Unsatisfiable:
                self._error(416, "range not satisfiable", content_range=f"bytes */{fw.size}")
                return
            start, length = (0, fw.size) if wanted is None else wanted
            stream = self.server.archive.stream(fw.key, start, length)
        except KeyError:
            log.error("firmware image missing from the archive", extra={
                "event": "firmware_missing", "version": version})
            self._error(404, "not found")
            return
        except StoreError as exc:
            log.warning("firmware endpoint: store failed: %s", exc, extra={
                "event": "firmware_store_error", "version": version})
            unavailable = isinstance(exc, StoreUnavailable)
            self._error(503 if unavailable else 500,
                        "unavailable" if unavailable else "internal error")
            return
        with stream:
            self.send_response(200 if wanted is None else 206)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            if wanted is not None:
                self.send_header("Content-Range", f"bytes {start}-{start + length - 1}/{fw.size}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{fw.sha256}"')
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if with_body:
                self._send_body(stream, fw, start, length)

    def _send_body(self, stream: Any, fw: Firmware, start: int, length: int) -> None:
        sent = 0
        try:
            for chunk in stream:
                self.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
            # A device hung up (it refuses an image larger than offered) or stalled past
            # the idle timeout; it resumes with a range request.
            log.info("firmware download cut", extra={
                "event": "firmware_download_cut", "version": fw.version, "offset": start,
                "sent": sent, "reason": type(exc).__name__})
        except StoreError as exc:
            log.warning("firmware endpoint: store failed mid-download: %s", exc, extra={
                "event": "firmware_store_error", "version": fw.version})
        if sent != length:
            self.close_connection = True  # the device sees a short body, never a wrong one

    def _range(self, fw: Firmware) -> tuple[int, int] | None:
        """(start, length) of a satisfiable single range, or None: the whole image (no Range,
        several ranges, or an If-Range that names another image). _Unsatisfiable when the
        range lies past the end."""
        header = self.headers.get("Range")
        if header is None:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range.strip() != f'"{fw.sha256}"':
            return None
        match = _RANGE_RE.fullmatch(header.strip().replace(" ", ""))
        if match is None or not (match[1] or match[2]):
            return None  # a form we do not serve: RFC 9110 lets us answer with the whole
        size = fw.size
        if not match[1]:  # bytes=-N: the last N bytes
            suffix = int(match[2])
            if suffix == 0:
                raise _Unsatisfiable
            start = max(0, size - suffix)
            return start, size - start
        start = int(match[1])
        end = int(match[2]) if match[2] else size - 1
        if start >= size or end < start:
            raise _Unsatisfiable
        return start, min(end, size - 1) - start + 1

    def _error(self, status: int, message: str, *, content_range: str | None = None) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", str(RETRY_AFTER_S))
        if content_range is not None:
            self.send_header("Content-Range", content_range)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The path only: a query holds a URL signature, which must not reach the logs.
        log.debug("firmware endpoint: %s %s %s", self.command, urlsplit(self.path).path, code)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("firmware endpoint: " + format, *args)


def firmware_links(settings: Settings, metadata: MetadataStore,
                   archive: ArchiveStore) -> tuple[FirmwareLinks, FirmwareServer | None]:
    """How offers name images, and the endpoint to run for it (None: nothing to serve)."""
    if settings.firmware_base_url is None and hasattr(archive, "presigned_get_url"):
        return PresignedLinks(archive), None
    server = FirmwareServer(settings.firmware_listen, metadata, archive,
                            base_url=settings.firmware_base_url,
                            secret=load_url_secret(settings),
                            max_downloads=settings.firmware_max_downloads,
                            idle_timeout_s=settings.firmware_idle_timeout_s)
    return server, server
