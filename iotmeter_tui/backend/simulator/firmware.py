"""Firmware download for a simulated meter's OTA: a minimal asyncio HTTP/1.1 GET.

Thousands of meters may take an offer at once; an event-loop GET keeps them off threads and
reports progress as bytes arrive. It speaks just what firmware servers and presigned S3 URLs
need: http and https, Content-Length, chunked or read-to-close bodies, no redirects.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from iotmeter_tui.backend.errors import IotmeterError

CHUNK = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024


class FirmwareError(IotmeterError):
    """The image could not be fetched or is not the one offered; `str()` is the OTA error."""


async def fetch_firmware(
    url: str,
    *,
    max_size: int,
    timeout_s: float = 60.0,
    on_progress: Callable[[int], None] | None = None,
) -> bytes:
    """GET `url`; fail if the body is over `max_size` bytes (no point reading further).
    `on_progress(bytes_so_far)` is called as data arrives."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FirmwareError(f"unsupported firmware URL {url!r} (http or https only)")
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        raise FirmwareError(f"bad port in firmware URL {url!r}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                parts.hostname, port, ssl=ssl.create_default_context() if tls else None,
                limit=MAX_HEADER_BYTES,
            )
            try:
                writer.write(
                    f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\n"
                    "User-Agent: iotmeter-sim\r\nAccept-Encoding: identity\r\n"
                    "Connection: close\r\n\r\n".encode("latin-1")
                )
                return await _read_response(reader, max_size, on_progress)
            finally:
                writer.close()
    except TimeoutError:
        raise FirmwareError(f"download timed out after {timeout_s:g} s") from None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        raise FirmwareError(f"download failed: {exc or type(exc).__name__}") from None


async def _read_response(
    reader: asyncio.StreamReader, max_size: int, on_progress: Callable[[int], None] | None
) -> bytes:
    status_line = (await reader.readline()).decode("latin-1").strip()
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise FirmwareError(f"not an HTTP response: {status_line[:80]!r}")
    status = int(fields[1])
    headers: dict[str, str] = {}
    while True:
        line = (await reader.readline()).decode("latin-1")
        if line in ("\r\n", "\n", ""):
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status != 200:
        raise FirmwareError(f"HTTP {status} {fields[2] if len(fields) > 2 else ''}".rstrip())

    body = bytearray()

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
        if length > max_size:
            raise FirmwareError(f"image is larger than the offered {max_size} bytes "
                                f"(server says {length})")
        while len(body) < length:
            chunk = await reader.read(min(CHUNK, length - len(body)))
            if not chunk:
                raise FirmwareError(f"connection closed after {len(body)} of {length} bytes")
            take(chunk)
    else:
        while chunk := await reader.read(CHUNK):
            take(chunk)
    return bytes(body)
