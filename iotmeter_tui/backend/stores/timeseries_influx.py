"""InfluxDB adapter of the time-series port, over the v1-compatible HTTP API only.

Line protocol goes to `/write` (gzip), InfluxQL to `/query`: the one API that InfluxDB 1.x,
2.x (v1 compatibility, token auth, automatic DBRP mapping) and 3.x all serve. The standard
library's http.client keeps one keep-alive connection per thread; every operation is
idempotent (a point is keyed by series and time), so any of them may be retried safely.

Credentials: a token is sent as `Authorization: Token <token>` (2.x, 3.x). A token holding a
colon is a 1.x `user:password` pair, which 1.x does not read from a Token header; it goes as
HTTP Basic auth instead, which 1.x, 2.x (v1 auth) and 3.x all accept and which, unlike the
`u`/`p` query parameters, keeps the password out of URLs and access logs.

Speed on InfluxDB 1.6 (bench/stores_timeseries.py): `latest()` for a page of devices is
tag-scoped and fast; for a whole fleet it is one pair of `GROUP BY device_id` statements,
which 1.6 answers in about 0.2 ms per device. `history()` costs one pass over the range's
points per field and aggregate (no two calls share a scan, whatever the statement's shape),
about 15 ms for a day at 1 s: hence only the aggregates asked for are selected.

Rollups (rollups.py), kept by roll_up(), not by write(): the collector's rollup sink calls
it with points once they are stored, and every 1-minute bucket they fall in is recomputed
from the raw points, then every 1-hour bucket from the 1-minute rows, and written to
`iot_telemetry_1m` and `iot_telemetry_1h` (fields `<field>_min|_max|_sum|_count|_last|_lt`)
as line protocol; so a late point lands in its old buckets and rolling up twice counts
nothing twice. Not continuous queries: InfluxDB 2.x and 3.x serve the v1 API without them,
and a CQ never revisits a bucket once its interval has passed, so late data would be missed.
Each rollup level lives in its own retention policy (`rollup_1m`, `rollup_1h`) where the
credentials may create one (1.x); where they may not (2.x/3.x tokens) rollups go to the
database's default policy, and the bucket's retention applies. A rollup point is keyed by
series and bucket time, so writing it again is idempotent. All of this only with rollups on
(IOTMETER_ROLLUPS): off, roll_up() does nothing, history() reads raw points and no rollup
policy is created. Points written while rollups were off are not rolled up later (see docs).
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import http.client
import itertools
import json
import logging
import math
import random
import re
import ssl
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlencode, urlsplit

import msgspec

from iotmeter_tui.backend import tls
from iotmeter_tui.backend.errors import (
    PartialWriteError,
    StoreRejected,
    StoreUnavailable,
)
from iotmeter_tui.backend.protocol import (
    RESERVED_TELEMETRY_FIELDS,
    field_name_problem,
    tag_problem,
)
from iotmeter_tui.backend.stores.rollup_fold import FoldedRows, RollupBatch
from iotmeter_tui.backend.stores.rollups import (
    HOUR_MS,
    RESOLUTIONS,
    Resolution,
    Retention,
    bucket_runs,
    readable_resolution,
    touched_buckets,
)
from iotmeter_tui.backend.stores.timeseries import (
    AGGREGATES,
    DEFAULT_DATABASE,
    MEASUREMENT,
    Bucket,
    Latest,
    Point,
    bucket_width,
    check_aggregates,
    check_field_names,
    clamp_range,
    point_problem,
)

STORE: Final = "influxdb"
DEFAULT_PORT: Final = 8086
CHUNK_POINTS: Final = 5_000
# Devices per tag-scoped latest() statement: InfluxQL plans a long OR chain slowly.
IDS_PER_STATEMENT: Final = 50
# Past this many device ids, one fleet-wide query filtered here is no slower than scoped ones.
SCOPED_LATEST_LIMIT: Final = 2_000
# Rows per chunk of a chunked /query answer; chunked answers are never cut at a row limit.
QUERY_CHUNK_ROWS: Final = 10_000
# A database name safe both in the URL and as a double-quoted InfluxQL identifier.
_DATABASE_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_CONFLICT_RE: Final = re.compile(r'input field "(.*?)" on measurement')
_DROPPED_RE: Final = re.compile(r"dropped=(\d+)")
_CACHE_LIMIT: Final = 100_000
# The line caches are bounded by their text too: a template holds every field name of a
# message (up to 64 of 128 characters each), so entries alone allowed gigabytes.
_CACHE_BYTES: Final = 16 << 20
# Rollup fields per telemetry field; mean is read back as sum / count.
# `lt` is the ts of the point `last` came from: merging a late point needs it.
ROLLUP_PARTS: Final = ("min", "max", "sum", "count", "last", "lt")
# Statements per /query request when recomputing rollups.
ROLLUP_STATEMENTS: Final = 50

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    retry_after: str | None


@dataclass(slots=True)
class _Series:
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]


class InfluxTimeSeries:
    """The time-series port on InfluxDB. Thread-safe; one keep-alive connection per thread.

    url: influxdb://host[:8086]/database, or influxdbs:// for TLS; user:password in the URL is
    used when no token is given. retries: attempts after the first on connection errors, 5xx
    and 429, waiting backoff_s, doubling up to max_backoff_s, with jitter; a Retry-After
    longer than max_backoff_s is not waited out but returned in StoreUnavailable.retry_after.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        retries: int = 4,
        backoff_s: float = 0.25,
        max_backoff_s: float = 5.0,
        chunk_points: int = CHUNK_POINTS,
        gzip_level: int = 1,
        ssl_context: ssl.SSLContext | None = None,
        retention: Retention | None = None,
        rollups: bool = False,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("influxdb", "influxdbs") or not parts.hostname:
            raise ValueError(f"{url!r} is not influxdb://host:port/database")
        database = unquote(parts.path.strip("/")) or DEFAULT_DATABASE
        if not _DATABASE_RE.fullmatch(database):
            raise ValueError(f"database name {database!r} does not match {_DATABASE_RE.pattern}")
        if token is None and parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        self._host = parts.hostname
        self._port = parts.port or DEFAULT_PORT
        self._tls = parts.scheme == "influxdbs"
        self._ssl_context = ssl_context
        self._database = database
        self._where = f"{self._host}:{self._port}/{database}"  # for messages: no credentials
        self._auth = _auth_headers(token)
        self._timeout = timeout
        self._retries = retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._chunk_points = chunk_points
        self._gzip_level = gzip_level
        self._write_target = "/write?" + urlencode({"db": database, "precision": "ms"})
        self._local = threading.local()
        self._connections: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()
        self._lock = threading.Lock()  # guards _connections
        self._prepare_lock = threading.Lock()
        self._prepared = False
        self.retention = retention or Retention()
        self.rollups = rollups  # keep and read rollups (IOTMETER_ROLLUPS)
        # Retention policy of each rollup level; None: the database's default one.
        self._rollup_rp: dict[str, str | None] = {r.name: None for r in RESOLUTIONS}
        self._rollable: set[str] = set()  # float fields of the measurement, as last seen
        # The rows of the newest rollup buckets as this process wrote them, when it is the
        # only rollup writer (roll_up(sole_writer=True)): see rollup_fold.py.
        self._folded = {r.name: FoldedRows(r) for r in RESOLUTIONS}
        # Per field name, its rollup columns' escaped `<field>_<part>=` keys.
        self._rollup_keys: dict[str, tuple[str, ...]] = {}
        self._fold_lock = threading.Lock()
        # Line-protocol prefixes per (device_id, device_type), and %-templates for the rest
        # per tuple of field names: a fleet repeats a few thousand of each, and building
        # lines is most of the client's cost of a write.
        self._heads: dict[tuple[str, str], str] = {}
        self._templates: dict[tuple[str, ...], str] = {}
        self._cached_chars = 0  # of heads and templates (their keys are about as long)

    # --- the port -------------------------------------------------------------------------

    def write(self, points: Sequence[Point]) -> None:
        if not points:
            return
        self._prepare()
        refused: list[Point] = []
        reasons: list[str] = []
        valid: list[Point] = []
        for point in points:
            problem = point_problem(point)
            if problem is None:
                valid.append(point)
            else:
                refused.append(point)
                reasons.append(problem)
        accepted = self._write_chunks(valid, refused, reasons)
        if refused:
            raise PartialWriteError(
                STORE,
                f"{len(refused)} of {len(points)} points refused: {reasons[0]}",
                failed=list(refused),
                accepted=accepted,
            )

    def roll_up(self, batch: RollupBatch, *, sole_writer: bool = False) -> None:
        if not self.rollups or not batch.minutes:
            return
        self._prepare()
        names = self._rollup_names(batch.names)
        if not names:
            return
        if sole_writer:
            with self._fold_lock:
                self._fold_rollups(batch, names)
        else:
            self._update_rollups(set(batch.minutes), names)

    def _write_chunks(self, valid: list[Point], refused: list[Point], reasons: list[str]) -> int:
        """Write the points' line protocol, chunk by chunk; adds what was refused (and why)
        to `refused` and `reasons`, returns how many points were kept."""
        accepted = 0
        for start in range(0, len(valid), self._chunk_points):
            kept, failed, reason = self._write_chunk(valid[start : start + self._chunk_points])
            accepted += kept
            refused.extend(failed)
            if reason:
                reasons.append(reason)
        return accepted

    def latest(self, device_ids: Iterable[str] | None = None) -> dict[str, Latest]:
        self._prepare()
        if device_ids is None:
            return self._latest([None])
        wanted = [d for d in dict.fromkeys(device_ids) if _storable_tag(d)]
        if len(wanted) > SCOPED_LATEST_LIMIT:
            fleet = self._latest([None])
            return {d: fleet[d] for d in wanted if d in fleet}
        conditions: list[str | None] = [
            " OR ".join(f'"device_id" = {_literal(d)}' for d in wanted[i : i + IDS_PER_STATEMENT])
            for i in range(0, len(wanted), IDS_PER_STATEMENT)
        ]
        return self._latest(conditions) if conditions else {}

    def history(
        self,
        device_id: str,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        max_points: int = 500,
        *,
        aggregates: Sequence[str] = AGGREGATES,
    ) -> list[Bucket]:
        names = check_field_names(fields)
        chosen = check_aggregates(aggregates)
        start_ms, end_ms = clamp_range(start_ms, end_ms)
        width = bucket_width(start_ms, end_ms, max_points)
        if not names or not chosen or end_ms <= start_ms or not _storable_tag(device_id):
            return []
        self._prepare()
        resolution = readable_resolution(start_ms, end_ms, width) if self.rollups else None
        if resolution is not None:
            return self._rollup_history(
                resolution, device_id, names, chosen, start_ms, end_ms, width)
        selected = ", ".join(
            f'{aggregate}({_ident(name)}) AS "{aggregate}{i}"'
            for i, name in enumerate(names)
            for aggregate in chosen
        )
        statement = (
            f"SELECT {selected} FROM {_ident(MEASUREMENT)} "
            f'WHERE "device_id" = {_literal(device_id)} AND {_time_range(start_ms, end_ms)} '
            # The offset aligns buckets on start_ms, so there are at most max_points of them.
            f"GROUP BY time({width}ms, {start_ms % width}ms) fill(none)"
        )
        per_field = len(chosen)
        buckets: list[Bucket] = []
        for series in self._query([statement])[0]:
            for row in series.values:
                # Each aggregate reads the data apart from the others, so while points are
                # being written into a bucket some may see them and some not yet: such a
                # half-seen field is left out of the bucket until the next read.
                values = {
                    name: dict(zip(chosen, map(float, found), strict=True))
                    for i, name in enumerate(names)
                    if None not in (found := row[1 + per_field * i : 1 + per_field * (i + 1)])
                }
                if values:
                    buckets.append(Bucket(int(row[0]), values))
        buckets.sort(key=lambda bucket: bucket.ts)
        return buckets

    def counts(self, start_ms: int | None = None, end_ms: int | None = None) -> dict[str, int]:
        self._prepare()
        statement = (
            f'SELECT count("seq") FROM {_ident(MEASUREMENT)} '
            f'WHERE {_time_range(start_ms, end_ms)} GROUP BY "device_id"'
        )
        counts: dict[str, int] = {}
        for series in self._query([statement])[0]:
            device_id = series.tags.get("device_id", "")
            counts[device_id] = counts.get(device_id, 0) + int(series.values[0][1])
        return {device: n for device, n in counts.items() if n}

    def points(
        self, device_id: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[Point]:
        if not _storable_tag(device_id):
            return []
        self._prepare()
        statement = (
            f"SELECT * FROM {_ident(MEASUREMENT)} "
            f'WHERE "device_id" = {_literal(device_id)} AND {_time_range(start_ms, end_ms)}'
        )
        points: list[Point] = []
        for series in self._query([statement], chunked=True)[0]:
            columns = series.columns
            for row in series.values:
                record = dict(zip(columns, row, strict=True))
                if type(record.get("boot")) is not int or type(record.get("seq")) is not int:
                    # Not a whole point of ours: another writer's, or one being written now
                    # (InfluxDB 1.x adds a point to its cache field by field, so a query at
                    # that moment may see some of its fields and not others).
                    continue
                fields = {
                    name: float(value)
                    for name, value in record.items()
                    # type(): another writer's string or boolean fields are not telemetry.
                    if type(value) in (float, int) and name not in RESERVED_TELEMETRY_FIELDS
                }
                points.append(Point(
                    device_id=device_id,
                    device_type=str(record["device_type"]),
                    ts=int(record["time"]),
                    boot=record["boot"],
                    seq=record["seq"],
                    fields=fields,
                ))
        points.sort(key=lambda point: point.ts)
        return points

    def apply_retention(self, now_ms: int | None = None) -> dict[str, int]:
        """Nothing to do here: the retention policies set up on first use make InfluxDB
        drop expired shard groups itself."""
        self._prepare()
        return {}

    def check(self) -> None:
        self._prepare()
        self._query(["SHOW MEASUREMENTS LIMIT 1"])

    def close(self) -> None:
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            connection.close()

    # --- writing ----------------------------------------------------------------------------

    def _write_chunk(self, chunk: list[Point]) -> tuple[int, list[Point], str | None]:
        """Write up to chunk_points points: (how many were kept, which failed, why)."""
        lines = [self._line(point) for point in chunk]
        body = gzip.compress("\n".join(lines).encode(), compresslevel=self._gzip_level)
        headers = {
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Encoding": "gzip",
            **self._auth,
        }
        reply = self._request("POST", self._write_target, body, headers)
        if reply.status == 404 and b"database not found" in reply.body:
            # Dropped behind our back since we prepared it: prepare again, once.
            self._prepared = False
            self._prepare()
            reply = self._request("POST", self._write_target, body, headers)
        if reply.status in (200, 204):
            return len(chunk), [], None
        if reply.status == 400:
            partial = _partial_failures(reply.body, lines, chunk)
            if partial is not None:
                failed_at, refused = partial
                return len(chunk) - refused, [chunk[i] for i in sorted(failed_at)], (
                    _error_text(reply.body)
                )
        raise self._refusal("write", reply)

    def _line(self, point: Point) -> str:
        """One point as line protocol. Every value is written as a float (750, or 750.0: a
        number without the `i` suffix is a float), so a field never meets a type conflict."""
        head = self._heads.get((point.device_id, point.device_type))
        if head is None:
            head = self._head(point.device_id, point.device_type)
        names = tuple(point.fields)
        template = self._templates.get(names)
        if template is None:
            template = self._template(names)
        if template is _PLAIN_NAMES:
            # Names that need no escaping: the fields as one JSON object (at C speed, each
            # number in its shortest exact text), braces and quotes taken out, are the field
            # set. Formatting field by field took most of the sink's time.
            try:
                fields = _json_object(point.fields)
            except (OverflowError, TypeError):  # an int past 64 bits: the slow way below
                pass
            else:
                text = fields[2:-1].replace(b'":', b"=").replace(b',"', b",").decode()
                return f"{head}{text},boot={point.boot}i,seq={point.seq}i {point.ts}"
            template = self._template(names, plain=False)
        values = (*map(float, point.fields.values()), point.boot, point.seq, point.ts)
        return head + template % values

    def _head(self, device_id: str, device_type: str) -> str:
        if len(self._heads) >= _CACHE_LIMIT or self._cached_chars >= _CACHE_BYTES:
            self._clear_caches()
        head = (
            f"{MEASUREMENT},device_id={_escape(device_id)},"
            f"device_type={_escape(device_type)} "
        )
        self._heads[(device_id, device_type)] = head
        self._cached_chars += 2 * len(head)
        return head

    def _clear_caches(self) -> None:
        self._heads.clear()
        self._templates.clear()
        self._cached_chars = 0

    def _template(self, names: tuple[str, ...], *, plain: bool = True) -> str:
        """The fields' format (%r, the shortest exact float text, per field), or
        _PLAIN_NAMES for names _line may copy out of the fields' JSON as they are."""
        if len(self._templates) >= _CACHE_LIMIT or self._cached_chars >= _CACHE_BYTES:
            self._clear_caches()
        if plain and names and _PLAIN_NAME_RE.fullmatch("".join(names)):
            self._templates[names] = _PLAIN_NAMES
            # The key keeps the names alive: counted like a template's text.
            self._cached_chars += 2 * sum(map(len, names))
            return _PLAIN_NAMES
        fields = "".join(_escape(name).replace("%", "%%") + "=%r," for name in names)
        template = fields + "boot=%di,seq=%di %d"
        if plain:
            self._templates[names] = template
            self._cached_chars += 2 * len(template)
        return template

    # --- rollups ----------------------------------------------------------------------------

    def _rollup_source(self, level: Resolution | None) -> str:
        """The FROM target of a level: raw points, or a rollup measurement in its policy."""
        if level is None:
            return _ident(MEASUREMENT)
        measurement = _ident(f"{MEASUREMENT}_{level.name}")
        policy = self._rollup_rp[level.name]
        return f"{_ident(policy)}.{measurement}" if policy else measurement

    def _rollup_names(self, fields: Iterable[str]) -> list[str]:
        """The batch's fields that rollups can hold: floats in the measurement (another
        writer may have made one a string, which cannot be summed)."""
        names = set(fields)
        if not self._rollable.issuperset(names):
            [keys] = self._query([f"SHOW FIELD KEYS FROM {_ident(MEASUREMENT)}"])
            kinds = {str(name): kind for series in keys for name, kind in series.values}
            # A name not stored yet will be a float: this adapter writes nothing else.
            self._rollable = {n for n, kind in kinds.items() if kind == "float"} | {
                n for n in names if n not in kinds}
        return sorted(names & self._rollable)

    def _select(
        self, level: Resolution | None, runs: list[tuple[int, int]], devices: list[str],
        columns: str = "*",
    ) -> Iterator[tuple[str, int, dict[str, Any]]]:
        """(device_id, time, record) of every row of a level in the time runs, for the given
        devices (a filter only when they are few: a long OR chain plans slowly). Not grouped
        by device: the tag comes as a column of one series, which InfluxDB answers many
        times faster than a series per device."""
        scope = ""
        if len(devices) <= IDS_PER_STATEMENT:
            scope = " AND (" + " OR ".join(f'"device_id" = {_literal(d)}' for d in devices) + ")"
        statements = [
            f"SELECT {columns} FROM {self._rollup_source(level)} WHERE "
            f"{_time_range(start, end)}{scope}"
            for start, end in runs
        ]
        for i in range(0, len(statements), ROLLUP_STATEMENTS):
            for result in self._query(statements[i : i + ROLLUP_STATEMENTS], chunked=True):
                for series in result:
                    for row in series.values:
                        record = dict(zip(series.columns, row, strict=True))
                        yield str(record.get("device_id")), int(row[0]), record

    def _update_rollups(self, keys: set[tuple[str, int]], names: list[str]) -> None:
        """Recompute the 1 min buckets the (device_id, ts) keys fall in from raw points, then
        the 1 h buckets of those minutes from 1 min rows, and write them. A bucket reaching
        below what retention has deleted of its level below is left alone (recompute_floor).
        Raises StoreUnavailable like write(): the sink retries the batch."""
        now = int(time.time() * 1000)
        below: Resolution | None = None
        touched: Iterable[tuple[str, int]] = keys
        for level in RESOLUTIONS:
            redo = touched_buckets(touched, level.width_ms,
                                   self.retention.recompute_floor(level, now))
            self._write_rollups(level, self._recomputed(level, redo, names, below))
            touched = [(d, b) for d, buckets in redo.items() for b in buckets]
            below = level

    def _fold_rollups(self, batch: RollupBatch, names: list[str]) -> None:
        """roll_up() for the only rollup writer: the batch's minutes are folded into the
        rows of their buckets (read from the store when not in memory) and written; a bucket
        the fold cannot take exactly is recomputed from the level below (rollup_fold.py).
        The 1 h rows take the batch's minutes too, not the minute rows read back."""
        now = int(time.time() * 1000)
        below: Resolution | None = None
        redo_below: set[tuple[str, int]] = set()
        for level in RESOLUTIONS:
            kept = self._folded[level.name]
            touched = kept.keys(batch.minutes)
            unknown = kept.unknown(touched)
            if unknown:
                kept.learn(self._stored_rows(level, unknown))
            rows, redo = kept.fold(batch.minutes, names)
            try:
                # A bucket recomputed below changes its coarser one in ways no delta says.
                redo |= {(d, b - b % level.width_ms) for d, b in redo_below}
                recomputed = self._recomputed(level, touched_buckets(
                    redo, level.width_ms, self.retention.recompute_floor(level, now)),
                    names, below)
                for key in redo:
                    row = rows[key] = kept.rows[key]
                    for name, acc in recomputed.get(key, {}).items():
                        row.put(name, acc)
                self._write_rollups(level, rows)
            except BaseException:
                kept.forget(touched)
                raise
            kept.keep(rows, now)
            redo_below = redo
            below = level

    def _stored_rows(
        self, level: Resolution, keys: list[tuple[str, int]]
    ) -> dict[tuple[str, int], dict[str, list[float]]]:
        """The stored rows of `keys` with every field they hold; an empty one where the store
        has none."""
        rows: dict[tuple[str, int], dict[str, list[float]]] = {key: {} for key in keys}
        devices = sorted({d for d, _ in keys})
        runs = bucket_runs(sorted({b for _, b in keys}), level.width_ms)
        for device_id, ts, record in self._select(level, runs, devices):
            row = rows.get((device_id, ts))
            if row is not None:
                row.update(_rollup_fields(record, _row_names(record)))
        return rows

    def _recomputed(
        self, level: Resolution, redo: dict[str, list[int]], names: list[str],
        below: Resolution | None,
    ) -> dict[tuple[str, int], dict[str, list[float]]]:
        """The buckets in `redo` of `level`, folded from the rows of `below` (raw points when
        None)."""
        redo_keys = {(d, b) for d, buckets in redo.items() for b in buckets}
        rows: dict[tuple[str, int], dict[str, list[float]]] = {}
        if not redo_keys:
            return rows
        try:
            return self._aggregated(level, redo_keys, sorted(redo), names, below)
        except StoreRejected as exc:
            # InfluxDB cannot put in JSON an aggregate that is not finite (the sum of
            # adversarial readings near 1e308 overflows): it answers with an error text
            # instead. Those buckets are folded here from the rows below, where the sum that
            # overflows leaves its field's bucket out (_write_rollups), as in SQLite.
            log.warning("rollup buckets folded from the level below", extra={
                "event": "rollup_fold_locally", "level": level.name, "error": str(exc)})
        # Only the batch's fields: a mixed fleet's other fields would come back as nulls.
        if below is None:
            columns = ", ".join(_ident(name) for name in names) + ', "device_id"'
        else:
            columns = ", ".join(_ident(f"{name}_{part}") for name in names
                                for part in ROLLUP_PARTS) + ', "device_id"'
        width = level.width_ms
        source = self._select(below, bucket_runs(sorted({b for _, b in redo_keys}), width),
                              sorted(redo), columns)
        for device_id, ts, record in source:
            key = (device_id, ts - ts % width)
            if key not in redo_keys:
                continue
            row = rows.setdefault(key, {})
            if below is None:
                for name in names:
                    value = record.get(name)
                    if isinstance(value, (float, int)) and not isinstance(value, bool):
                        v = float(value)
                        _fold(row, name, [v, v, v, 1, v, ts])
            else:
                for name, acc in _rollup_fields(record, names).items():
                    _fold(row, name, acc)
        return rows

    def _aggregated(
        self, level: Resolution, redo_keys: set[tuple[str, int]], devices: list[str],
        names: list[str], below: Resolution | None,
    ) -> dict[tuple[str, int], dict[str, list[float]]]:
        """Buckets of `level` aggregated by the server (GROUP BY time) from raw points or the
        rows of the level below: one row a bucket crosses the wire instead of every point or
        minute. Raw points kept the collector's CPU for rollups several times its write's;
        an hour of a 5,000-meter fleet's minute rows, read back and folded here on every
        batch, kept the rollups behind the fleet. `lt` is the newest of the minutes' for
        an hour; from raw points (whose time no aggregate returns) it is the bucket's last
        ms, which orders rows of different buckets and sends any later point of that minute
        to a recompute (rollup_fold.py)."""
        width = level.width_ms
        scope = ""
        if len(devices) <= IDS_PER_STATEMENT:
            scope = " AND (" + " OR ".join(f'"device_id" = {_literal(d)}' for d in devices) + ")"
        if below is None:
            aggregates = ", ".join(f"{fn}({_ident(name)})" for name in names
                                   for fn in ("min", "max", "sum", "count", "last"))
        else:  # min of mins, max of maxes, sums of sums and counts, the last minute's last
            aggregates = ", ".join(
                f"{fn}({_ident(f'{name}_{part}')})" for name in names
                for fn, part in (("min", "min"), ("max", "max"), ("sum", "sum"),
                                 ("sum", "count"), ("last", "last"), ("max", "lt")))
        per_name = 5 if below is None else 6
        statements = [
            f"SELECT {aggregates} FROM {self._rollup_source(below)} WHERE "
            f"{_time_range(start, end)}{scope} GROUP BY time({width}ms), \"device_id\" "
            "fill(none)"
            for start, end in bucket_runs(sorted({b for _, b in redo_keys}), width)
        ]
        rows: dict[tuple[str, int], dict[str, list[float]]] = {}
        for i in range(0, len(statements), ROLLUP_STATEMENTS):
            for result in self._query(statements[i : i + ROLLUP_STATEMENTS], chunked=True):
                for series in result:
                    device_id = series.tags.get("device_id", "")
                    for row in series.values:
                        key = (device_id, int(row[0]))
                        if key not in redo_keys:
                            continue
                        fields = rows.setdefault(key, {})
                        for n, name in enumerate(names):
                            found = row[1 + per_name * n : 1 + per_name * (n + 1)]
                            if found[3]:
                                lt = found[5] if below is not None else key[1] + width - 1
                                fields[name] = [float(v) for v in found[:5]] + [float(lt)]
        return rows

    def _write_rollups(
        self, level: Resolution, rows: Mapping[tuple[str, int], Mapping[str, Sequence[float]]]
    ) -> None:
        """Write the rows as line protocol, a chunk at a time: a fleet's rows as one list of
        lines held tens of MiB at once."""
        params = {"db": self._database, "precision": "ms"}
        policy = self._rollup_rp[level.name]
        if policy:
            params["rp"] = policy
        headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Encoding": "gzip",
                   **self._auth}
        lines = self._rollup_lines(level, rows)
        while chunk := list(itertools.islice(lines, self._chunk_points)):
            body = gzip.compress("\n".join(chunk).encode(), compresslevel=self._gzip_level)
            reply = self._request("POST", "/write?" + urlencode(params), body, headers)
            if reply.status in (200, 204):
                continue
            if reply.status == 400 and b"beyond retention" in reply.body:
                continue  # a bucket older than its level keeps: nothing to keep it in
            raise self._refusal(f"rollup {level.name} write", reply)

    def _rollup_lines(
        self, level: Resolution, rows: Mapping[tuple[str, int], Mapping[str, Sequence[float]]]
    ) -> Iterator[str]:
        measurement = f"{MEASUREMENT}_{level.name}"
        keys = self._rollup_keys
        for (device_id, bucket), fields in rows.items():
            pairs = []
            for name, acc in fields.items():
                # A sum of +inf and -inf is NaN, which line protocol cannot carry: such a
                # field (only adversarial readings make one) gets no rollup rather than
                # failing the batch.
                if not math.isfinite(acc[2]):
                    continue
                escaped = keys.get(name)
                if escaped is None:
                    if len(keys) >= _CACHE_LIMIT:  # field names are device-chosen
                        keys.clear()
                    escaped = keys[name] = tuple(
                        f"{_escape(f'{name}_{part}')}=" for part in ROLLUP_PARTS)
                pairs += [f"{key}{float(value)!r}"
                          for key, value in zip(escaped, acc, strict=True)]
            if pairs:
                yield (f"{measurement},device_id={_escape(device_id)} "
                       f"{','.join(pairs)} {bucket}")

    def _rollup_history(
        self, level: Resolution, device_id: str, names: list[str], chosen: Sequence[str],
        start_ms: int, end_ms: int, width: int,
    ) -> list[Bucket]:
        """history() from a rollup level whose buckets tile the query's: min of mins, max of
        maxes, last of lasts, mean as sum of sums over sum of counts."""
        wanted: list[tuple[str, str]] = []  # (field, part)
        for name in names:
            for aggregate in chosen:
                wanted += [(name, "sum"), (name, "count")] if aggregate == "mean" else [
                    (name, aggregate)]
        fold = {"min": "min", "max": "max", "sum": "sum", "count": "sum", "last": "last"}
        selected = ", ".join(
            f'{fold[part]}({_ident(f"{name}_{part}")}) AS "a{i}"'
            for i, (name, part) in enumerate(wanted)
        )
        statement = (
            f"SELECT {selected} FROM {self._rollup_source(level)} "
            f'WHERE "device_id" = {_literal(device_id)} AND {_time_range(start_ms, end_ms)} '
            f"GROUP BY time({width}ms, {start_ms % width}ms) fill(none)"
        )
        buckets: list[Bucket] = []
        for series in self._query([statement])[0]:
            for row in series.values:
                got: dict[tuple[str, str], float] = {}
                for (name, part), value in zip(wanted, row[1:], strict=True):
                    if value is not None:
                        got[(name, part)] = float(value)
                values: dict[str, dict[str, float]] = {}
                for name in names:
                    field: dict[str, float] = {}
                    for aggregate in chosen:
                        if aggregate == "mean":
                            count = got.get((name, "count"))
                            total = got.get((name, "sum"))
                            if count and total is not None:
                                field["mean"] = total / count
                        elif (name, aggregate) in got:
                            field[aggregate] = got[(name, aggregate)]
                    if len(field) == len(chosen):
                        values[name] = field
                if values:
                    buckets.append(Bucket(int(row[0]), values))
        buckets.sort(key=lambda bucket: bucket.ts)
        return buckets

    # --- reading ----------------------------------------------------------------------------

    def _latest(self, conditions: list[str | None]) -> dict[str, Latest]:
        """Per condition, two statements: with one selector InfluxQL returns the point's own
        time (and may add a tag); with several it returns time 0. The fields are named, not
        last(*): that would also run last() over boot and seq, a third of the cost."""
        names = self._float_fields()
        statements: list[str] = []
        for condition in conditions:
            where = _time_range(None, None) + (f" AND ({condition})" if condition else "")
            source = f'FROM {_ident(MEASUREMENT)} WHERE {where} GROUP BY "device_id"'
            statements.append(f'SELECT last("seq"), "device_type" {source}')
            if names:
                lasts = ", ".join(f'last({_ident(name)}) AS "v{i}"' for i, name in enumerate(names))
                statements.append(f"SELECT {lasts} {source}")
        per_condition = 2 if names else 1
        results = self._query(statements)
        newest: dict[str, tuple[int, str]] = {}
        values: dict[str, dict[str, float]] = {}
        for i in range(0, len(results), per_condition):
            for series in results[i]:
                ts, _seq, device_type = series.values[0]
                newest[series.tags["device_id"]] = (int(ts), str(device_type))
            for series in results[i + 1] if names else []:
                values[series.tags["device_id"]] = {
                    name: float(value)
                    for name, value in zip(names, series.values[0][1:], strict=True)
                    if value is not None
                }
        return {
            device: Latest(device, device_type, ts, values.get(device, {}))
            for device, (ts, device_type) in newest.items()
        }

    def _float_fields(self) -> list[str]:
        """The measurement's telemetry fields (metadata only: about a millisecond). Names
        another writer stored that our rules would refuse are left out."""
        [keys] = self._query([f"SHOW FIELD KEYS FROM {_ident(MEASUREMENT)}"])
        return [
            name for series in keys for name, kind in series.values
            if kind == "float" and field_name_problem(name) is None
        ]

    def _query(self, statements: list[str], *, chunked: bool = False) -> list[list[_Series]]:
        """Run InfluxQL statements in one request: per statement, its series. `chunked` for
        answers of unbounded length (never cut at a server's row limit); it makes answers of
        many short series much slower to produce, so only points() asks for it."""
        params = {"db": self._database, "q": ";".join(statements), "epoch": "ms"}
        if chunked:
            params.update(chunked="true", chunk_size=str(QUERY_CHUNK_ROWS))
        body = urlencode(params).encode()
        reply = self._request("POST", "/query", body, {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            **self._auth,
        })
        if reply.status != 200:
            raise self._refusal("query", reply)
        try:
            return _parse_results(reply.body, len(statements))
        except _StatementError as exc:
            raise StoreRejected(STORE, f"query on {self._where} failed: {exc}") from None

    # --- preparing the database ------------------------------------------------------------

    def _prepare(self) -> None:
        """CREATE DATABASE once, on first use. It is idempotent on 1.x; where the credentials
        may not create (2.x/3.x tokens, DBRP-mapped buckets) the refusal is ignored: if the
        database really is missing, the first write says so."""
        if self._prepared:
            return
        with self._prepare_lock:
            if self._prepared:
                return
            body = urlencode({"q": f"CREATE DATABASE {_ident(self._database)}"}).encode()
            reply = self._request("POST", "/query", body, {
                "Content-Type": "application/x-www-form-urlencoded",
                **self._auth,
            })
            if reply.status != 200 or b'"error"' in reply.body:
                log.info(
                    "influxdb: CREATE DATABASE %s not done (%s: %s); assuming it exists",
                    self._database, reply.status, _error_text(reply.body),
                )
            self._prepare_retention()
            self._prepared = True

    def _prepare_retention(self) -> None:
        """Retention policies: the default one's duration set to the raw retention, one
        policy per rollup level created or altered (with rollups on). Where the credentials
        may not (2.x/3.x tokens, a 1.x user without admin), what exists stays and rollups go
        where they can."""
        policies: dict[str, bool] = {}  # name -> is the default
        try:
            [found] = self._query([f"SHOW RETENTION POLICIES ON {_ident(self._database)}"])
            for series in found:
                at = {c: i for i, c in enumerate(series.columns)}
                for row in series.values:
                    policies[str(row[at["name"]])] = bool(row[at["default"]])
        except (StoreRejected, KeyError) as exc:
            log.info("influxdb: no retention policies on %s (%s); rollups go to the default "
                     "one", self._database, exc)
            return
        for name, default in policies.items():
            if default:
                self._admin(f"ALTER RETENTION POLICY {_ident(name)} ON "
                            f"{_ident(self._database)} {_rp_durations(self.retention.raw_ms)}")
        if not self.rollups:
            return
        for level in RESOLUTIONS:
            policy = f"rollup_{level.name}"
            durations = _rp_durations(self.retention.of(level))
            if policy in policies:
                self._admin(f"ALTER RETENTION POLICY {_ident(policy)} ON "
                            f"{_ident(self._database)} {durations}")
                self._rollup_rp[level.name] = policy
            elif self._admin(f"CREATE RETENTION POLICY {_ident(policy)} ON "
                             f"{_ident(self._database)} {durations}"):
                self._rollup_rp[level.name] = policy

    def _admin(self, statement: str) -> bool:
        """Run a statement that needs rights the credentials may lack; False (logged) when
        it was refused."""
        body = urlencode({"q": statement}).encode()
        reply = self._request("POST", "/query", body, {
            "Content-Type": "application/x-www-form-urlencoded", **self._auth})
        if reply.status != 200 or b'"error"' in reply.body:
            log.info("influxdb: %s not done (%s: %s)", statement, reply.status,
                     _error_text(reply.body))
            return False
        return True

    # --- HTTP -------------------------------------------------------------------------------

    def _request(
        self, method: str, target: str, body: bytes, headers: Mapping[str, str]
    ) -> _Reply:
        """Send with retries: connection errors, 5xx and 429 are retried with back-off, then
        raise StoreUnavailable; any other answer is returned to the caller to judge."""
        failures = 0
        stale_retried = False
        while True:
            reused = getattr(self._local, "used", False)
            try:
                reply = self._exchange(method, target, body, headers)
            except ssl.SSLCertVerificationError as exc:
                self._drop_connection()
                raise StoreRejected(STORE, f"TLS to {self._where} refused: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                if reused and not stale_retried and not isinstance(exc, TimeoutError):
                    # The server may close a keep-alive connection while it sits idle: that
                    # is not an outage, so try once more on a fresh one at once.
                    stale_retried = True
                    continue
                reason = f"cannot reach {self._where}: {exc or type(exc).__name__}"
                retry_after = None
            else:
                if reply.status != 429 and reply.status < 500:
                    return reply
                reason = f"{self._where} answered {reply.status}: {_error_text(reply.body)}"
                retry_after = _parse_retry_after(reply.retry_after)
            failures += 1
            delay = self._delay(failures, retry_after)
            if failures > self._retries or delay is None:
                raise StoreUnavailable(
                    STORE, f"{reason} (after {failures} attempts)", retry_after=retry_after
                )
            time.sleep(delay)

    def _delay(self, failures: int, retry_after: float | None) -> float | None:
        """Seconds to wait before the next attempt; None when the server asks for longer than
        we are willing to block (the caller gets retry_after instead)."""
        backoff = min(self._max_backoff_s, self._backoff_s * 2 ** (failures - 1))
        delay = backoff * random.uniform(0.5, 1.0)  # jitter: writers do not retry in step
        if retry_after is None:
            return delay
        return None if retry_after > self._max_backoff_s else max(delay, retry_after)

    def _exchange(
        self, method: str, target: str, body: bytes, headers: Mapping[str, str]
    ) -> _Reply:
        connection = self._connection()
        connection.request(method, target, body, dict(headers))
        response = connection.getresponse()
        data = response.read()
        self._local.used = True
        return _Reply(response.status, data, response.getheader("Retry-After"))

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self._tls:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout,
                    context=self._ssl_context or tls.client_context(),
                )
            else:
                connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
            self._local.connection = connection
            self._local.used = False
            with self._lock:
                self._connections.add(connection)
        return connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
            self._local.used = False

    def _refusal(self, what: str, reply: _Reply) -> StoreRejected:
        text = _error_text(reply.body)
        if reply.status in (401, 403):
            return StoreRejected(STORE, f"{what} on {self._where} not authorised: {text}")
        return StoreRejected(STORE, f"{what} on {self._where} refused ({reply.status}): {text}")


class _StatementError(Exception):
    """A statement inside a 200 answer failed."""


def _auth_headers(token: str | None) -> dict[str, str]:
    if not token:
        return {}
    if ":" in token:
        return {"Authorization": "Basic " + base64.b64encode(token.encode()).decode()}
    return {"Authorization": f"Token {token}"}


# Field names whose JSON text is their line-protocol text: nothing JSON escapes (quote,
# backslash, control characters) or line protocol escapes (comma, '=', space).
_PLAIN_NAME_RE = re.compile(r"[A-Za-z0-9_.:/%+-]+")
_PLAIN_NAMES: Final = "plain"  # a marker in _templates, compared by identity
_json_object = msgspec.json.Encoder().encode


def _escape(text: str) -> str:
    """Line-protocol escaping of a tag value or field key. Backslashes never get here
    (the protocol's rules refuse them: 1.x keeps an escaped one doubled, 3.x does not)."""
    return text.replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def _ident(name: str) -> str:
    """A double-quoted InfluxQL identifier; names are validated to hold no quote or backslash."""
    return f'"{name}"'


def _literal(text: str) -> str:
    """A single-quoted InfluxQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _storable_tag(value: object) -> bool:
    """Whether a point could carry this tag value: any other can match nothing, so the query
    need not run (and a control character never reaches InfluxQL)."""
    return tag_problem("device_id", value) is None


def _fold(row: dict[str, list[float]], name: str, acc: list[float]) -> None:
    """Fold one [min, max, sum, count, last, lt] into a row's field, in place."""
    have = row.get(name)
    if have is None:
        row[name] = list(acc)
        return
    if acc[0] < have[0]:
        have[0] = acc[0]
    if acc[1] > have[1]:
        have[1] = acc[1]
    have[2] += acc[2]
    have[3] += acc[3]
    if acc[5] >= have[5]:
        have[4], have[5] = acc[4], acc[5]


def _row_names(record: dict[str, Any]) -> list[str]:
    """The telemetry fields a rollup row's columns (`<field>_<part>`) are of."""
    return sorted({column.rpartition("_")[0] for column in record
                   if column.endswith("_lt") and record[column] is not None})


def _rollup_fields(record: dict[str, Any], names: list[str]) -> dict[str, list[float]]:
    """A stored rollup row's [min, max, sum, count, last, lt] per field of `names`."""
    fields: dict[str, list[float]] = {}
    for name in names:
        found = [record.get(f"{name}_{part}") for part in ROLLUP_PARTS]
        if None not in found:
            fields[name] = [float(v) for v in found]  # type: ignore[arg-type]
    return fields


def _rp_durations(kept_ms: int | None) -> str:
    """DURATION, REPLICATION and SHARD DURATION of a retention policy keeping `kept_ms` (None:
    for ever), shard groups sized as InfluxDB's own defaults would be."""
    if kept_ms is None:
        return "DURATION INF REPLICATION 1 SHARD DURATION 168h"
    hours = kept_ms // HOUR_MS
    shard = 1 if hours <= 48 else 24 if hours <= 180 * 24 else 168
    return f"DURATION {hours}h REPLICATION 1 SHARD DURATION {shard}h"


def _time_range(start_ms: int | None, end_ms: int | None) -> str:
    """[start, end) in ms; explicit bounds, so points stamped in the future count too."""
    start, end = clamp_range(start_ms, end_ms)
    return f"time >= {start}ms AND time < {end}ms"


def _error_text(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500] or "(empty answer)"
    if isinstance(parsed, dict):
        # 1.x and 3.x say "error"; 2.x says "message" (beside a "code").
        for key in ("error", "message"):
            if isinstance(parsed.get(key), str):
                return str(parsed[key])[:500]
    return json.dumps(parsed)[:500]


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _parse_results(body: bytes, statement_count: int) -> list[list[_Series]]:
    """A (possibly chunked: one JSON object a line) /query answer -> series per statement.
    A chunked answer marks a series it continues in the next chunk "partial"; the pieces
    are joined again."""
    results: list[list[_Series]] = [[] for _ in range(statement_count)]
    continued = [False] * statement_count
    for document in _json_lines(body):
        if "error" in document:
            raise _StatementError(document["error"])
        for result in document.get("results", []):
            if "error" in result:
                raise _StatementError(result["error"])
            statement = int(result.get("statement_id", 0))
            pieces = results[statement]
            for raw in result.get("series", []):
                tags = raw.get("tags") or {}
                values = raw.get("values") or []
                if continued[statement] and pieces[-1].tags == tags:
                    pieces[-1].values.extend(values)
                else:
                    pieces.append(_Series(tags, raw["columns"], values))
                continued[statement] = bool(raw.get("partial"))
    return results


def _json_lines(body: bytes) -> Iterator[dict[str, Any]]:
    for line in body.splitlines():
        if line.strip():
            try:
                document = json.loads(line)
            except ValueError:
                # InfluxDB answers some failures with plain text under a 200 (an aggregate
                # it cannot encode): a refusal the caller can handle, never a raw decode error.
                raise _StatementError(line[:200].decode("utf-8", "replace")) from None
            if isinstance(document, dict):
                yield document


def _partial_failures(
    body: bytes, lines: list[str], chunk: list[Point]
) -> tuple[set[int], int] | None:
    """Which points of a 400-refused chunk failed, and how many were refused; None when the
    answer is no partial write. The failed set may hold more points than were refused, never
    fewer: when the answer does not say which, it holds all of them."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {"error": body.decode("utf-8", "replace")}
    if not isinstance(parsed, dict):
        return None
    text = str(parsed.get("error", ""))
    # 3.x: {"error": "partial write of line protocol occurred", "data": [{"line_number": n}]}
    unparsed = {
        item["line_number"] - 1
        for item in parsed.get("data") or []
        if isinstance(item, dict) and isinstance(item.get("line_number"), int)
    }
    # 1.x and 2.x quote each line they could not parse.
    unparsed.update(i for i, line in enumerate(lines) if f"'{line}'" in text)
    # A field-type conflict names the field; every point carrying it is dropped. 1.x names
    # only the first conflict, so `dropped=` (points refused after parsing) is the check.
    conflicts = set(_CONFLICT_RE.findall(text))
    dropped_at = {i for i, point in enumerate(chunk) if conflicts & point.fields.keys()}
    if conflicts & {"boot", "seq"}:
        dropped_at = set(range(len(chunk)))
    found = _DROPPED_RE.search(text)
    dropped = int(found.group(1)) if found else None
    if not unparsed and not dropped_at and "partial write" not in text:
        return None
    failed = {i for i in unparsed | dropped_at if 0 <= i < len(chunk)}
    refused = len(unparsed) + (len(dropped_at) if dropped is None else dropped)
    if not failed or len(failed) < refused:
        # The answer does not say which points: count them all as failed (retrying a
        # point that was kept is harmless), and all as refused unless it says how many.
        failed = set(range(len(chunk)))
        refused = refused or len(chunk)
    return failed, min(refused, len(chunk))
