"""Firmware download for a simulated meter's OTA: a minimal asyncio HTTP/1.1 GET.

Thousands of meters may take an offer at once; an event-loop GET keeps them off threads and
reports progress as bytes arrive. It speaks just what firmware servers and presigned S3 URLs
need: http and https, Content-Length, chunked or read-to-close bodies, no redirects. Like a
real meter on a poor link it resumes: a connection that breaks mid-body is followed by a
`Range: bytes=<received>-` request (206 continues, 200 starts over), and a `503` is retried
after its `Retry-After`, all within the one overall timeout.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from typing import Final
from urllib.parse import SplitResult, urlsplit

from iotmeter_tui.backend.errors import IotmeterError

CHUNK = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_ATTEMPTS: Final = 8  # connections per download: resumes and busy retries together
MAX_RETRY_AFTER_S: Final = 30.0
_CONTENT_RANGE_RE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class FirmwareError(IotmeterError):
    """The image could not be fetched or is not the one offered; `str()` is the OTA error."""


class _Interrupted(Exception):
    """The body stopped short (connection closed or reset): resume from what arrived."""


class _Busy(Exception):
    """503 from the server: wait `retry_after` seconds and ask again."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


async def fetch_firmware(
    url: str,
    *,
    max_size: int,
    timeout_s: float = 60.0,
    on_progress: Callable[[int], None] | None = None,
) -> bytes:
    """GET `url`; fail if the body is over `max_size` bytes (no point reading further).
    `on_progress(bytes_so_far)` is called as data arrives. A broken transfer resumes with a
    range request, a 503 is retried after Retry-After, all within `timeout_s`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FirmwareError(f"unsupported firmware URL {url!r} (http or https only)")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise FirmwareError(f"bad port in firmware URL {url!r}") from None
    body = bytearray()
    etag: list[str | None] = [None]
    try:
        async with asyncio.timeout(timeout_s):
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    await _get(parts, body, etag, max_size, on_progress)
                    return bytes(body)
                except _Busy as busy:
                    if attempt == MAX_ATTEMPTS:
                        raise FirmwareError("HTTP 503 (server busy), gave up") from None
                    await asyncio.sleep(busy.retry_after)
                except _Interrupted as cut:
                    if attempt == MAX_ATTEMPTS:
                        raise FirmwareError(f"download failed: {cut}") from None
            raise AssertionError("unreachable")  # pragma: no cover
    except TimeoutError:
        raise FirmwareError(f"download timed out after {timeout_s:g} s") from None
    except (OSError, asyncio.LimitOverrunError, ValueError) as exc:
        raise FirmwareError(f"download failed: {exc or type(exc).__name__}") from None


async def _get(parts: SplitResult, body: bytearray, etag: list[str | None], max_size: int,
               on_progress: Callable[[int], None] | None) -> None:
    """One request: the whole image, or the rest of it when `body` holds a first part."""
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    resume = ""
    if body:
        resume = f"Range: bytes={len(body)}-\r\n"
        if etag[0] is not None:
            resume += f"If-Range: {etag[0]}\r\n"
    try:
        reader, writer = await asyncio.open_connection(
            parts.hostname, port, ssl=ssl.create_default_context() if tls else None,
            limit=MAX_HEADER_BYTES,
        )
    except (ConnectionRefusedError, ConnectionResetError) as exc:
        if body:  # the server went away mid-download: it may be back in a moment
            raise _Interrupted(str(exc) or type(exc).__name__) from None
        raise
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\n"
            f"User-Agent: iotmeter-sim\r\nAccept-Encoding: identity\r\n{resume}"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        await _read_response(reader, body, etag, max_size, on_progress)
    except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as exc:
        raise _Interrupted(str(exc) or type(exc).__name__) from None
    finally:
        writer.close()


async def _read_response(
    reader: asyncio.StreamReader, body: bytearray, etag: list[str | None], max_size: int,
    on_progress: Callable[[int], None] | None,
) -> None:
    status_line = (await reader.readline()).decode("latin-1").strip()
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        if not status_line and body:
            raise _Interrupted("connection closed before the answer")
        raise FirmwareError(f"not an HTTP response: {status_line[:80]!r}")
    status = int(fields[1])
    headers: dict[str, str] = {}
    while True:
        line = (await reader.readline()).decode("latin-1")
        if line in ("\r\n", "\n", ""):
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status == 503:
        retry = headers.get("retry-after", "")
        raise _Busy(min(float(retry), MAX_RETRY_AFTER_S) if retry.isdigit() else 1.0)
    if status == 206 and body:
        match = _CONTENT_RANGE_RE.fullmatch(headers.get("content-range", ""))
        if match is None or int(match[1]) != len(body):
            raise FirmwareError(f"the server resumed at the wrong place "
                                f"({headers.get('content-range')!r}, have {len(body)} bytes)")
    elif status == 200:
        body.clear()  # a fresh answer (the image changed, or ranges are not served)
    else:
        raise FirmwareError(f"HTTP {status} {fields[2] if len(fields) > 2 else ''}".rstrip())
    etag[0] = headers.get("etag") or etag[0]

    def take(chunk: bytes) -> None:
        body.extend(chunk)
        if len(body) > max_size:
            raise FirmwareError(f"image is larger than the offered {max_size} bytes")
        if on_progress is not None:
            on_progress(len(body))

    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            take(await reader.readexactly(size))
            await reader.readexactly(2)  # CRLF after each chunk
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if len(body) + length > max_size:
            raise FirmwareError(f"image is larger than the offered {max_size} bytes "
                                f"(server says {len(body) + length})")
        end = len(body) + length
        while len(body) < end:
            chunk = await reader.read(min(CHUNK, end - len(body)))
            if not chunk:
                raise _Interrupted(f"connection closed after {len(body)} of {end} bytes")
            take(chunk)
    else:
        while chunk := await reader.read(CHUNK):
            take(chunk)
