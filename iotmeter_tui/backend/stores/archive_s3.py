"""Archive adapter for any S3 server (AWS S3, SeaweedFS, Garage, Ceph RGW, MinIO) via `minio`.

Errors are translated where they leave the SDK: unreachable, 5xx, throttling and a vanished
bucket become StoreUnavailable (retry later); refusals such as AccessDenied become
StoreRejected; a missing key on get is KeyError. Timeouts are short and retries bounded so an
outage reaches the caller (whose spool keeps the data) in seconds, not after the SDK's defaults
of five-minute timeouts.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import MAX_PART_SIZE, MIN_PART_SIZE, check_bucket_name
from urllib3.exceptions import MaxRetryError, SSLError

from iotmeter_tui.backend import tls
from iotmeter_tui.backend.errors import StoreError, StoreRejected, StoreUnavailable
from iotmeter_tui.backend.stores.archive import (
    STREAM_CHUNK_BYTES,
    ObjectStream,
    validate_key,
    validate_range,
)

STORE = "s3"

# Answers that mean "the server is there but cannot serve now": retry after a back-off.
_UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "OperationAborted",
        "XMinioStorageFull",
        "XMinioServerNotInitialized",
    }
)
_RETRY_STATUSES = (429, 500, 502, 503, 504)
_CONTENT_TYPES = {".gz": "application/gzip", ".ndjson": "application/x-ndjson"}
# S3 accepts presigned URLs valid for at most seven days.
MAX_PRESIGN_S = 7 * 24 * 3600


class S3Archive:
    """`ArchiveStore` on one S3 bucket. The bucket is created on first use when missing."""

    def __init__(
        self,
        bucket: str,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        region: str = "us-east-1",
        *,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 10.0,
        retries: int = 2,
    ) -> None:
        """`endpoint` is `http(s)://host[:port]`; its scheme decides TLS. `retries` bounds the
        repeats of a failed request (refused or timed-out connection, 5xx, 429) inside one call;
        a timed-out read is repeated once at most, since a hung server rarely recovers at once."""
        parts = urlsplit(endpoint)
        host = parts.netloc.rpartition("@")[2]  # never carry credentials from a URL into logs
        if parts.scheme not in ("http", "https") or not host or parts.path not in ("", "/"):
            raise StoreRejected(STORE, f"endpoint must be http(s)://host[:port], not {host!r}")
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError as exc:
            raise StoreRejected(STORE, f"bucket name {bucket!r}: {exc}") from None
        self._bucket = bucket
        self._where = f"{parts.scheme}://{host}/{bucket}"
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            maxsize=10,
            # Verifies against the system's CAs plus IOTMETER_TLS_CA_FILE (https:// only).
            ssl_context=tls.client_context() if parts.scheme == "https" else None,
            retries=urllib3.Retry(
                total=retries,
                connect=retries,
                read=min(retries, 1),
                status=retries,
                backoff_factor=0.2,
                backoff_max=2.0,
                status_forcelist=_RETRY_STATUSES,
                # A server's Retry-After may say minutes; we surface it instead of sleeping.
                respect_retry_after_header=False,
                # Hand the last error answer to the SDK, which parses its S3 error code.
                raise_on_status=False,
            ),
        )
        self._client = Minio(
            host,
            access_key=access_key,
            secret_key=secret_key,
            secure=parts.scheme == "https",
            region=region,  # known region: the SDK need not ask the server for it
            http_client=self._http,
        )
        self._bucket_ready = False
        self._prepare_lock = threading.Lock()

    @property
    def bucket(self) -> str:
        return self._bucket

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        # A PUT is durable when S3 answers it: `durable` changes nothing here.
        validate_key(STORE, key)
        self._ensure_bucket()
        with self._translated("put", key):
            self._client.put_object(
                self._bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=_content_type(key),
                # One PUT for any object up to 5 GiB: a single request that urllib3 can repeat
                # whole, where an interrupted multipart upload would leave parts behind.
                part_size=min(max(len(data), MIN_PART_SIZE), MAX_PART_SIZE),
            )

    def get(self, key: str) -> bytes:
        validate_key(STORE, key)
        self._ensure_bucket()
        with self._translated("get", key):
            try:
                response = self._client.get_object(self._bucket, key)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    raise KeyError(key) from None
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def stream(self, key: str, offset: int = 0, length: int | None = None) -> ObjectStream:
        """A ranged GET (the SDK's offset/length): the body is read as it is consumed, each
        read bounded by the client's read timeout, never the whole transfer."""
        validate_key(STORE, key)
        validate_range(STORE, offset, length)
        self._ensure_bucket()
        if length == 0:
            self._require(key)
            return ObjectStream(iter(()), lambda: None)
        with self._translated("get", key):
            try:
                response = self._client.get_object(self._bucket, key, offset=offset,
                                                   length=length or 0)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    raise KeyError(key) from None
                if exc.code == "InvalidRange":  # the offset is at or past the end
                    self._require(key)
                    return ObjectStream(iter(()), lambda: None)
                raise

        def release() -> None:
            response.close()
            response.release_conn()

        return ObjectStream(self._chunks(response, key), release)

    def _chunks(self, response: urllib3.BaseHTTPResponse, key: str) -> Iterator[bytes]:
        with self._translated("get", key):
            yield from response.stream(STREAM_CHUNK_BYTES)

    def _require(self, key: str) -> None:
        """KeyError unless the object exists (a HEAD)."""
        with self._translated("get", key):
            try:
                self._client.stat_object(self._bucket, key)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    raise KeyError(key) from None
                raise

    def list(self, prefix: str = "") -> Iterator[str]:
        self._ensure_bucket()
        with self._translated("list", prefix):
            for obj in self._client.list_objects(self._bucket, prefix=prefix, recursive=True):
                if obj.object_name is not None:
                    yield obj.object_name

    def delete(self, key: str) -> None:
        validate_key(STORE, key)
        self._ensure_bucket()
        with self._translated("delete", key):
            self._client.remove_object(self._bucket, key)

    def check(self) -> None:
        """Reach the server and make sure the bucket exists (creating it if allowed)."""
        self._bucket_ready = False
        self._ensure_bucket()

    def sync(self) -> None:
        """Nothing to do: every put was durable when it returned."""

    def close(self) -> None:
        self._http.clear()

    def presigned_get_url(self, key: str, expires_s: int = 3600) -> str:
        """A URL anyone can GET the object with for `expires_s` seconds (at most 7 days).

        Signed locally, no request is made. It names the endpoint this archive was given, so
        the devices must be able to reach that host."""
        validate_key(STORE, key)
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise StoreRejected(STORE, f"presigned URL lifetime {expires_s}s is not 1..7 days")
        with self._translated("presign", key):
            return self._client.presigned_get_object(
                self._bucket, key, expires=timedelta(seconds=expires_s)
            )

    # --- internals ---------------------------------------------------------------------------

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._prepare_lock:  # one check per archive, not one per writer thread
            if self._bucket_ready:
                return
            with self._translated("prepare bucket", ""):
                self._create_bucket_if_missing()
            self._bucket_ready = True

    def _create_bucket_if_missing(self) -> None:
        try:
            if self._client.bucket_exists(self._bucket):
                return
        except S3Error as exc:
            if exc.code != "AccessDenied":
                raise
            # Credentials scoped to objects may not look at the bucket itself. Assume it is
            # there; if not, the first object operation says so.
            return
        try:
            self._client.make_bucket(self._bucket)
        except S3Error as exc:
            if exc.code == "BucketAlreadyOwnedByYou":
                return  # another collector created it a moment ago
            if exc.code == "AccessDenied":
                raise StoreRejected(
                    STORE,
                    f"bucket {self._where} does not exist and these credentials may not "
                    "create it; create it or grant s3:CreateBucket",
                ) from exc
            raise

    @contextmanager
    def _translated(self, action: str, key: str) -> Iterator[None]:
        """Turn the SDK's and urllib3's exceptions into StoreUnavailable / StoreRejected."""
        try:
            yield
        except (
            S3Error,
            ServerError,
            InvalidResponseError,
            urllib3.exceptions.HTTPError,
            OSError,
            ValueError,
        ) as exc:
            raise self._translate(exc, action, key) from exc

    def _translate(self, exc: Exception, action: str, key: str) -> StoreError:
        where = f"{action} {self._where}/{key}" if key else f"{action} {self._where}"
        if isinstance(exc, S3Error):
            return self._from_s3_error(exc, where)
        if isinstance(exc, ServerError):
            return _by_status(exc.status_code, f"{where}: HTTP {exc.status_code}")
        if isinstance(exc, InvalidResponseError):
            # Not an S3 answer: usually a proxy or load balancer's error page. The SDK keeps
            # the status only in a private attribute.
            status = getattr(exc, "_code", 0)
            return _by_status(status, f"{where}: HTTP {status} that is not an S3 response")
        if isinstance(exc, MaxRetryError) and isinstance(exc.reason, SSLError):
            return StoreRejected(STORE, f"{where}: TLS failed: {exc.reason}")
        if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
            reason = exc.reason if isinstance(exc, MaxRetryError) else exc
            return StoreUnavailable(STORE, f"{where}: cannot reach the server: {reason}")
        return StoreRejected(STORE, f"{where}: {exc}")

    def _from_s3_error(self, exc: S3Error, where: str) -> StoreError:
        response = exc.response
        status = response.status if response is not None else 0
        message = f"{where}: {exc.code} ({status}): {exc.message}"
        if exc.code == "NoSuchBucket":
            self._bucket_ready = False  # deleted behind our back: the next call re-creates it
            return StoreUnavailable(STORE, message)
        if exc.code in _UNAVAILABLE_CODES or status in _RETRY_STATUSES or status >= 500:
            retry_after = response.headers.get("Retry-After") if response is not None else None
            return StoreUnavailable(STORE, message, retry_after=_seconds(retry_after))
        return StoreRejected(STORE, message)


def _by_status(status: int, message: str) -> StoreError:
    if status in _RETRY_STATUSES or status >= 500:
        return StoreUnavailable(STORE, message)
    return StoreRejected(STORE, message)


def _seconds(header: str | None) -> float | None:
    """Retry-After as seconds; its HTTP-date form is rare from S3 servers and ignored."""
    try:
        return float(header) if header else None
    except ValueError:
        return None


def _content_type(key: str) -> str:
    suffix = key[key.rfind(".") :] if "." in key.rpartition("/")[2] else ""
    return _CONTENT_TYPES.get(suffix, "application/octet-stream")
