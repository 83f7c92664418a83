"""SQLite adapter of the time-series port: one file that the collector process writes and the
dashboard reads, each from several threads.

Schema (chosen by measurement; bench/stores_timeseries.py has the figures):
- `points`: one wide row per (device_id, ts), WITHOUT ROWID, so the primary key is the storage
  order and a device's day is one contiguous range. Each telemetry field has its own REAL
  column `f<n>`, added with ALTER TABLE the first time the name is written; `fields` maps
  names (case-sensitive, which SQLite column names are not) to n. Aggregating a column over
  a range reads each row once; a narrow (series, ts, value) table reads five index entries per
  point and a JSON column parses every row, both several times slower for a 5-field chart.
- `latest`: one row per device, upserted on write with each field's last value `f<n>` and its
  time `t<n>`, so the fleet view reads one row per device and a late, older point never
  hides a newer value.
- `rollup_1m`, `rollup_1h`: one narrow row per (device_id, field column, bucket start) with
  min, max, sum, count and last (rollups.py). Not kept by write(): roll_up() (called by the
  collector's rollup sink once the points are stored, off the write path) recomputes every
  bucket its points fall in from `points` and then `rollup_1m`, so a late point updates its
  old buckets and a point rolled up twice is counted once. Narrow, because five columns a
  field would run into SQLite's 2,000-column limit. Only with rollups on (IOTMETER_ROLLUPS);
  a store opened with them off leaves a row in `rollups_behind`, so the next store opened
  with them on rolls every point up again (once, at open) before it reads rollups.

History (with rollups on) reads the coarsest rollup whose buckets tile the query's exactly
(rollups.readable_resolution), else raw points. It walks a per-connection temp table of
bucket numbers and aggregates each bucket's range through the primary key: no sort of the
rows, and each field's last value is one backward index probe per bucket. Only the
aggregates asked for are computed.

WAL mode lets readers run beside the one writer; writes start with BEGIN IMMEDIATE so they
wait (busy_timeout) for the write lock up front instead of failing half-way;
synchronous=NORMAL is durable across application crashes (the collector's spool covers power
loss). Each thread gets its own connection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

from iotmeter_tui.backend.errors import (
    PartialWriteError,
    StoreError,
    StoreRejected,
    StoreUnavailable,
)
from iotmeter_tui.backend.stores.rollup_fold import RollupBatch
from iotmeter_tui.backend.stores.rollups import (
    ONE_MINUTE,
    RESOLUTIONS,
    Resolution,
    Retention,
    readable_resolution,
    touched_buckets,
)
from iotmeter_tui.backend.stores.sqlite_wal import switch_to_wal
from iotmeter_tui.backend.stores.timeseries import (
    AGGREGATES,
    Bucket,
    Latest,
    Point,
    bucket_width,
    check_aggregates,
    check_field_names,
    clamp_range,
    point_problem,
)

STORE: Final = "sqlite"
SCHEMA_VERSION: Final = 2
# Rows a retention pass deletes per transaction: the collector's writes wait for no longer.
RETENTION_BATCH_ROWS: Final = 5_000
# `latest` carries two columns per field; SQLite allows 2,000 columns a table.
MAX_FIELDS: Final = 900

# Primary result codes that mean "another process holds the file, or the disk is in trouble,
# right now": worth a retry, unlike a constraint or a schema error.
_RETRYABLE_CODES: Final = frozenset({
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
})

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS fields (
    name TEXT PRIMARY KEY,          -- telemetry field name, compared case-sensitively
    col  INTEGER NOT NULL UNIQUE    -- points.f<col>, latest.f<col> and latest.t<col>
);
CREATE TABLE IF NOT EXISTS points (
    device_id   TEXT NOT NULL,
    ts          INTEGER NOT NULL,   -- device clock, ms since the epoch
    device_type TEXT NOT NULL,
    boot        INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (device_id, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latest (
    device_id   TEXT PRIMARY KEY,
    device_type TEXT NOT NULL,      -- of the device's newest point
    ts          INTEGER NOT NULL    -- of the device's newest point
) WITHOUT ROWID;
""" + "".join(f"""
CREATE TABLE IF NOT EXISTS rollup_{r.name} (
    device_id TEXT NOT NULL,
    col       INTEGER NOT NULL,     -- fields.col
    ts        INTEGER NOT NULL,     -- bucket start, a multiple of {r.width_ms} ms
    mn REAL NOT NULL, mx REAL NOT NULL, sm REAL NOT NULL, ct INTEGER NOT NULL,
    la REAL NOT NULL,               -- value of the bucket's newest point with this field
    lt INTEGER NOT NULL,            -- and that point's ts
    PRIMARY KEY (device_id, col, ts)
) WITHOUT ROWID;
""" for r in RESOLUTIONS) + """
CREATE TABLE IF NOT EXISTS rollups_behind (
    since INTEGER NOT NULL          -- a row: a store with rollups off opened this file
);
CREATE TABLE IF NOT EXISTS retention_horizon (
    level  TEXT PRIMARY KEY,        -- 'raw', '1m': what apply_retention() deleted below
    cutoff INTEGER NOT NULL         -- rows with ts < cutoff may be gone
) WITHOUT ROWID;
"""


class SqliteTimeSeries:
    """The time-series port on one SQLite file; safe across threads and processes.

    timeout: seconds a write waits for another writer (busy_timeout) before giving up with
    StoreUnavailable. retention: how long apply_retention() keeps each resolution.
    rollups: keep rollup_1m/rollup_1h (roll_up) and read long windows from them; off,
    roll_up() does nothing and history() reads raw points (IOTMETER_ROLLUPS)."""

    def __init__(
        self, path: str | Path, *, timeout: float = 10.0, retention: Retention | None = None,
        rollups: bool = False,
    ) -> None:
        self._path = Path(path)
        self.rollups = rollups
        self.retention = retention or Retention()
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()  # guards the connection list and replacing _columns
        self._connections: list[sqlite3.Connection] = []
        self._columns: dict[str, int] = {}  # field name -> n, a cache of `fields`
        self._schema_ready = False

    # --- the port -------------------------------------------------------------------------

    def write(self, points: Sequence[Point]) -> None:
        if not points:
            return
        valid: list[Point] = []
        refused: list[tuple[Point, str]] = []
        for point in points:
            problem = point_problem(point)
            if problem is None:
                valid.append(point)
            else:
                refused.append((point, problem))
        if valid:
            with self._errors("write"):
                refused.extend(self._write_valid(valid))
        if refused:
            raise PartialWriteError(
                STORE,
                f"{len(refused)} of {len(points)} points refused: {refused[0][1]}",
                failed=[point for point, _ in refused],
                accepted=len(points) - len(refused),
            )

    def roll_up(self, batch: RollupBatch, *, sole_writer: bool = False) -> None:
        # Recomputing from the raw points is local and quick here: sole_writer changes nothing.
        if not self.rollups or not batch.minutes:
            return
        with self._errors("roll up"):
            connection = self._connection()
            numbers = [n for _, n in self._known_columns(connection, list(batch.names))]
            if not numbers:
                return
            with self._transaction(connection):
                _recompute_rollups(connection, list(batch.minutes), numbers)

    def latest(self, device_ids: Iterable[str] | None = None) -> dict[str, Latest]:
        with self._errors("latest"):
            connection = self._connection()
            if device_ids is None:
                cursor = connection.execute("SELECT * FROM latest")
            else:
                wanted = json.dumps(list(dict.fromkeys(device_ids)))
                cursor = connection.execute(
                    "SELECT * FROM latest WHERE device_id IN (SELECT value FROM json_each(?))",
                    (wanted,),
                )
            field_at = self._field_positions(connection, cursor)
            return {
                row[0]: Latest(
                    row[0], row[1], row[2],
                    {name: row[i] for i, name in field_at if row[i] is not None},
                )
                for row in cursor
            }

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
        if not names or not chosen or end_ms <= start_ms:
            return []
        resolution = readable_resolution(start_ms, end_ms, width) if self.rollups else None
        with self._errors("history"):
            connection = self._connection()
            columns = self._known_columns(connection, names)
            if not columns:
                return []
            if resolution is not None:
                return _rollup_history(
                    connection, resolution, device_id, columns, chosen, start_ms, end_ms, width
                )
            count = -(-(end_ms - start_ms) // width)
            self._ensure_slots(connection, count)
            rows = connection.execute(
                _history_sql([n for _, n in columns], chosen),
                {"d": device_id, "s": start_ms, "w": width, "e": end_ms, "n": count},
            ).fetchall()
        found = [name for name, _ in columns]
        return [
            bucket for row in rows if (bucket := _bucket(row, found, chosen, start_ms, width))
        ]

    def counts(self, start_ms: int | None = None, end_ms: int | None = None) -> dict[str, int]:
        start, end = clamp_range(start_ms, end_ms)
        with self._errors("counts"):
            # Per device through the primary key, not a scan of every point.
            rows = self._connection().execute(
                "SELECT device_id, (SELECT count(*) FROM points p WHERE p.device_id = l.device_id"
                " AND p.ts >= :s AND p.ts < :e) FROM latest l",
                {"s": start, "e": end},
            ).fetchall()
        return {device: n for device, n in rows if n}

    def points(
        self, device_id: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[Point]:
        start, end = clamp_range(start_ms, end_ms)
        with self._errors("points"):
            connection = self._connection()
            cursor = connection.execute(
                "SELECT * FROM points WHERE device_id = ? AND ts >= ? AND ts < ? ORDER BY ts",
                (device_id, start, end),
            )
            field_at = self._field_positions(connection, cursor)
            return [
                Point(
                    row[0], row[2], row[1], row[3], row[4],
                    {name: row[i] for i, name in field_at if row[i] is not None},
                )
                for row in cursor
            ]

    def apply_retention(self, now_ms: int | None = None) -> dict[str, int]:
        """Delete what is older than each resolution's retention, RETENTION_BATCH_ROWS rows a
        transaction so the collector's writes never wait long: rows deleted per level
        ("raw", "1m", "1h"). Run it off the hot path (collector.retention does)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        deleted: dict[str, int] = {}
        with self._errors("retention"):
            connection = self._connection()
            devices = [d for (d,) in connection.execute("SELECT device_id FROM latest")]
            for level in (None, *RESOLUTIONS):
                kept = self.retention.of(level)
                name = "raw" if level is None else level.name
                deleted[name] = 0
                if kept is None:
                    continue
                table, key = ("points", "ts") if level is None else (
                    f"rollup_{level.name}", "col, ts")
                with self._transaction(connection):
                    # First: from now on, buckets that reach below the cutoff are final.
                    connection.execute(
                        "INSERT INTO retention_horizon (level, cutoff) VALUES (?, ?)"
                        " ON CONFLICT (level) DO UPDATE SET"
                        " cutoff = max(cutoff, excluded.cutoff)", (name, now - kept))
                statement = (
                    f"DELETE FROM {table} WHERE device_id = :d AND ({key}) IN"
                    f" (SELECT {key} FROM {table} WHERE device_id = :d AND ts < :c LIMIT :n)"
                )
                for device_id in devices:
                    while True:
                        with self._transaction(connection):
                            cursor = connection.execute(statement, {
                                "d": device_id, "c": now - kept, "n": RETENTION_BATCH_ROWS})
                        deleted[name] += cursor.rowcount
                        if cursor.rowcount < RETENTION_BATCH_ROWS:
                            break
        return deleted

    def check(self) -> None:
        with self._errors("check"):
            self._connection().execute("SELECT count(*) FROM fields").fetchone()

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with suppress(sqlite3.Error):
                connection.close()
        self._local = threading.local()

    # --- writing ----------------------------------------------------------------------------

    def _write_valid(self, points: list[Point]) -> list[tuple[Point, str]]:
        """Store valid points in one transaction; returns those refused for want of a column."""
        connection = self._connection()
        with self._transaction(connection):
            names = dict.fromkeys(name for point in points for name in point.fields)
            columns = self._columns_for(connection, list(names))
            refused = [
                (point, f"no room for another field column (limit {MAX_FIELDS})")
                for point in points
                if not columns.keys() >= point.fields.keys()
            ]
            if refused:
                points = [p for p in points if columns.keys() >= p.fields.keys()]
            _insert_points(connection, points, columns)
            _upsert_latest(connection, points, columns)
        with self._lock:
            # Only once committed (the ALTERs roll back too), and as a new dict: readers
            # iterate the old one without a lock.
            self._columns = {**self._columns, **columns}
        return refused

    def _columns_for(self, connection: sqlite3.Connection, names: list[str]) -> dict[str, int]:
        """Column numbers of `names`, adding columns for new ones. Runs inside the write
        transaction, so two processes never add the same name twice."""
        columns = dict(self._columns)
        if not columns.keys() >= set(names):
            columns = dict(connection.execute("SELECT name, col FROM fields").fetchall())
        for name in names:
            if name in columns or len(columns) >= MAX_FIELDS:
                continue
            n = max(columns.values(), default=0) + 1
            connection.execute("INSERT INTO fields (name, col) VALUES (?, ?)", (name, n))
            connection.execute(f"ALTER TABLE points ADD COLUMN f{n} REAL")
            connection.execute(f"ALTER TABLE latest ADD COLUMN f{n} REAL")
            connection.execute(f"ALTER TABLE latest ADD COLUMN t{n} INTEGER")
            columns[name] = n
        return columns

    # --- reading ----------------------------------------------------------------------------

    def _known_columns(
        self, connection: sqlite3.Connection, names: list[str]
    ) -> list[tuple[str, int]]:
        """(name, n) of the names that have a column; another process may have added some."""
        if not self._columns.keys() >= set(names):
            self._reload_columns(connection)
        known = self._columns
        return [(name, known[name]) for name in names if name in known]

    def _field_positions(
        self, connection: sqlite3.Connection, cursor: sqlite3.Cursor
    ) -> list[tuple[int, str]]:
        """(position, field name) of a result's f<n> columns."""
        numbers = [
            (i, int(column[0][1:]))
            for i, column in enumerate(cursor.description)
            if column[0].startswith("f") and column[0][1:].isdigit()
        ]
        names = {n: name for name, n in self._columns.items()}
        if any(n not in names for _, n in numbers):
            self._reload_columns(connection)
            names = {n: name for name, n in self._columns.items()}
        return [(i, names[n]) for i, n in numbers if n in names]

    def _reload_columns(self, connection: sqlite3.Connection) -> None:
        columns = dict(connection.execute("SELECT name, col FROM fields").fetchall())
        with self._lock:
            self._columns = columns

    def _ensure_slots(self, connection: sqlite3.Connection, count: int) -> None:
        """A temp table holding bucket numbers 0..count-1 (grown on demand): history's outer
        loop, walked in key order so SQLite groups the rows without sorting them."""
        have: int = getattr(self._local, "slots", 0)
        if have >= count:
            return
        connection.execute("CREATE TEMP TABLE IF NOT EXISTS bucket_slots (k INTEGER PRIMARY KEY)")
        connection.execute(
            "WITH RECURSIVE s(k) AS (SELECT ? UNION ALL SELECT k + 1 FROM s WHERE k + 1 < ?) "
            "INSERT OR IGNORE INTO bucket_slots (k) SELECT k FROM s",
            (have, count),
        )
        self._local.slots = count

    # --- connections, transactions, errors -------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        self._path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            self._path,
            timeout=self._timeout,
            isolation_level=None,  # transactions are explicit
            check_same_thread=False,  # each thread has its own; close() may run anywhere
        )
        with self._lock:
            self._connections.append(connection)
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA temp_store = MEMORY")
        connection.execute("PRAGMA cache_size = -32768")  # 32 MiB: a chart's rows stay warm
        if not self._schema_ready:
            self._create_schema(connection)
        self._local.connection = connection
        return connection

    def _create_schema(self, connection: sqlite3.Connection) -> None:
        switch_to_wal(connection, self._timeout)
        with self._transaction(connection):
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreRejected(
                    STORE, f"{self._path} has schema version {version}; this iotmeter knows "
                    f"{SCHEMA_VERSION} (upgrade iotmeter)"
                )
            # One statement at a time: executescript() would commit the open transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            if not self.rollups:
                # Points written from now on are not rolled up: the next store opened with
                # rollups on rolls everything up again rather than read rollups with holes.
                if not connection.execute("SELECT 1 FROM rollups_behind").fetchone():
                    connection.execute("INSERT INTO rollups_behind VALUES (?)",
                                       (int(time.time() * 1000),))
            elif version == 1 or connection.execute(
                    "SELECT 1 FROM rollups_behind").fetchone():
                # Points written before rollups existed or while they were off: roll them
                # all up once.
                columns = dict(connection.execute("SELECT name, col FROM fields").fetchall())
                for level in RESOLUTIONS:
                    for n in columns.values():
                        connection.execute(
                            _ROLLUP_ALL_SQL[level.name].format(n=n), {"r": level.width_ms})
                connection.execute("DELETE FROM rollups_behind")
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._reload_columns(connection)
        self._schema_ready = True

    @contextmanager
    def _transaction(self, connection: sqlite3.Connection) -> Iterator[None]:
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Translate sqlite3 errors at the adapter's edge."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._translate(what, exc) from exc
        except OSError as exc:  # creating the file's directory
            raise StoreRejected(STORE, f"{what} on {self._path} failed: {exc}") from exc

    def _translate(self, what: str, exc: sqlite3.Error) -> StoreError:
        message = f"{what} on {self._path} failed: {exc}"
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _RETRYABLE_CODES:
            return StoreUnavailable(STORE, message)
        return StoreRejected(STORE, message)


def _insert_points(
    connection: sqlite3.Connection, points: list[Point], columns: dict[str, int]
) -> None:
    """Upsert points, one executemany per set of field names. A point written again keeps
    fields it does not name, as InfluxDB merges a rewritten point field by field."""
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for p in points:
        groups.setdefault(tuple(p.fields), []).append(
            (p.device_id, p.ts, p.device_type, p.boot, p.seq, *map(float, p.fields.values()))
        )
    for names, rows in groups.items():
        cols = [f"f{columns[name]}" for name in names]
        listed = "".join(f", {c}" for c in cols)
        updates = "".join(f", {c} = excluded.{c}" for c in cols)
        connection.executemany(
            f"INSERT INTO points (device_id, ts, device_type, boot, seq{listed})"
            f" VALUES (?, ?, ?, ?, ?{', ?' * len(cols)})"
            " ON CONFLICT (device_id, ts) DO UPDATE SET device_type = excluded.device_type,"
            f" boot = excluded.boot, seq = excluded.seq{updates}",
            rows,
        )


def _upsert_latest(
    connection: sqlite3.Connection, points: list[Point], columns: dict[str, int]
) -> None:
    """Fold the batch into one row per device (newest point's type and time, each field's
    newest value), then merge that into `latest` keeping whichever of old and new is newer."""
    newest: dict[str, tuple[int, str, dict[str, tuple[int, float]]]] = {}
    for p in points:
        entry = newest.get(p.device_id)
        if entry is None or p.ts >= entry[0]:
            entry = newest[p.device_id] = (p.ts, p.device_type, entry[2] if entry else {})
        seen = entry[2]
        for name, value in p.fields.items():
            last = seen.get(name)
            if last is None or p.ts >= last[0]:
                seen[name] = (p.ts, float(value))
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for device_id, (ts, device_type, seen) in newest.items():
        row: list[Any] = [device_id, device_type, ts]
        for name_ts, value in seen.values():
            row += (value, name_ts)
        groups.setdefault(tuple(seen), []).append(tuple(row))
    for names, rows in groups.items():
        numbers = [columns[name] for name in names]
        insert = "".join(f", f{n}, t{n}" for n in numbers)
        newer = "(latest.t{n} IS NULL OR excluded.t{n} >= latest.t{n})"
        updates = "".join(
            f", f{n} = CASE WHEN {newer.format(n=n)} THEN excluded.f{n} ELSE latest.f{n} END"
            f", t{n} = CASE WHEN {newer.format(n=n)} THEN excluded.t{n} ELSE latest.t{n} END"
            for n in numbers
        )
        connection.executemany(
            f"INSERT INTO latest (device_id, device_type, ts{insert})"
            f" VALUES (?, ?, ?{', ?, ?' * len(numbers)})"
            " ON CONFLICT (device_id) DO UPDATE SET"
            " device_type = CASE WHEN excluded.ts >= latest.ts"
            " THEN excluded.device_type ELSE latest.device_type END,"
            f" ts = max(latest.ts, excluded.ts){updates}",
            rows,
        )


def _history_sql(numbers: list[int], aggregates: Sequence[str]) -> str:
    """Per non-empty bucket k of [s, e) cut into width w: k, then per field column f<n> each
    of `aggregates` over its values in the bucket (NULL when it has none there)."""
    bounds = "ts >= :s + b.k * :w AND {0}ts < min(:s + (b.k + 1) * :w, :e)"
    in_bucket = "device_id = :d AND " + bounds.format("")
    sql = {
        "mean": "avg(p.f{n})",
        "min": "min(p.f{n})",
        "max": "max(p.f{n})",
        "last": "(SELECT f{n} FROM points WHERE " + in_bucket + " AND f{n} IS NOT NULL"
        " ORDER BY ts DESC LIMIT 1)",
    }
    selected = "".join(f", {sql[a].format(n=n)}" for n in numbers for a in aggregates)
    return (
        f"SELECT b.k{selected} FROM temp.bucket_slots b"
        f" JOIN points p ON p.device_id = :d AND p.{bounds.format('p.')}"
        " WHERE b.k < :n GROUP BY b.k ORDER BY b.k"
    )


def _bucket(
    row: tuple[Any, ...], names: list[str], aggregates: Sequence[str], start_ms: int, width: int
) -> Bucket | None:
    """A _history_sql row as a Bucket of the fields with values in it; None when none has.
    One statement reads one snapshot, so a field's aggregates are all NULL or none is."""
    values: dict[str, dict[str, float]] = {}
    per_field = len(aggregates)
    for i, name in enumerate(names):
        found = row[1 + per_field * i : 1 + per_field * (i + 1)]
        if found[0] is not None:
            values[name] = dict(zip(aggregates, found, strict=True))
    return Bucket(start_ms + row[0] * width, values) if values else None


# --- rollups ----------------------------------------------------------------------------------


def _rollup_sql(level: Resolution, *, touched: bool) -> str:
    """Recompute rollup_<level> rows of field column {n} (formatted in) from the level below:
    the buckets listed in temp.rollup_touched, or (touched=False) every bucket. Parameter :r
    is the level's width. A bucket without a value of the field gets no row."""
    if level is ONE_MINUTE:
        source, value, last, key = "points", "p.f{n}", "f{n}", ""
        aggregates = f"min({value}), max({value}), sum({value}), count({value}), max(p.ts)"
    else:
        source, value, last, key = "rollup_1m", "p.mn", "la", " AND p.col = {n}"
        aggregates = "min(p.mn), max(p.mx), sum(p.sm), sum(p.ct), max(p.lt)"
    if touched:
        rows = (
            f"FROM temp.rollup_touched t JOIN {source} p ON p.device_id = t.d{key}"
            f" AND p.ts >= t.b AND p.ts < t.b + :r WHERE {value} IS NOT NULL GROUP BY t.d, t.b"
        )
        group = "t.d, t.b"
    else:
        rows = f"FROM {source} p WHERE {value} IS NOT NULL{key} GROUP BY 1, 2"
        group = "p.device_id, p.ts - p.ts % :r"
    # The newest row below gives `last`: for points its ts is lt; for rollup_1m rows it is
    # the row with the greatest bucket start (lt grows with it).
    col = " AND col = {n}" if level is not ONE_MINUTE else ""
    return (
        f"WITH g (d, b, mn, mx, sm, ct, lt, k) AS (SELECT {group}, {aggregates}, max(p.ts)"
        f" {rows}) INSERT INTO rollup_{level.name} (device_id, col, ts, mn, mx, sm, ct, la, lt)"
        f" SELECT d, {{n}}, b, mn, mx, sm, ct,"
        f" (SELECT {last} FROM {source} WHERE device_id = g.d{col} AND ts = g.k), lt"
        # A sum of +inf and -inf is NaN, which SQLite stores as NULL: such a bucket (only
        # adversarial readings make one) gets no row rather than failing the whole batch.
        " FROM g WHERE g.sm IS NOT NULL ON CONFLICT (device_id, col, ts) DO UPDATE SET"
        " mn = excluded.mn, mx = excluded.mx, sm = excluded.sm, ct = excluded.ct,"
        " la = excluded.la, lt = excluded.lt"
    )


_ROLLUP_TOUCHED_SQL: Final = {r.name: _rollup_sql(r, touched=True) for r in RESOLUTIONS}
_ROLLUP_ALL_SQL: Final = {r.name: _rollup_sql(r, touched=False) for r in RESOLUTIONS}


def _recompute_rollups(connection: sqlite3.Connection, keys: list[tuple[str, int]],
                       numbers: list[int]) -> None:
    """Recompute every rollup bucket the (device_id, ts) keys fall in, of field columns
    `numbers`, from the level below: 1 min from points, then 1 h from 1 min rows. A bucket
    reaching below what retention has deleted of the level under it is not recomputed: that
    would replace the whole rollup by one of the few rows left (see docs)."""
    horizon = dict(connection.execute("SELECT level, cutoff FROM retention_horizon"))
    connection.execute(
        "CREATE TEMP TABLE IF NOT EXISTS rollup_touched (d TEXT, b INTEGER, PRIMARY KEY (d, b))"
    )
    below = "raw"
    for level in RESOLUTIONS:
        touched = touched_buckets(keys, level.width_ms, horizon.get(below, 0))
        below = level.name
        keys = [(d, b) for d, buckets in touched.items() for b in buckets]
        connection.execute("DELETE FROM temp.rollup_touched")
        if not keys:
            return
        connection.executemany("INSERT INTO temp.rollup_touched (d, b) VALUES (?, ?)", keys)
        statement = _ROLLUP_TOUCHED_SQL[level.name]
        for n in numbers:
            connection.execute(statement.format(n=n), {"r": level.width_ms})


def _rollup_history(
    connection: sqlite3.Connection, level: Resolution, device_id: str,
    columns: list[tuple[str, int]], aggregates: Sequence[str], start_ms: int, end_ms: int,
    width: int,
) -> list[Bucket]:
    """history() from rollup_<level>, whose buckets tile the query's (readable_resolution):
    each chart bucket folds its rollup rows; mean is their sum over their count."""
    name_of = {n: name for name, n in columns}
    listed = ", ".join(str(n) for n in name_of)
    last = (
        f"(SELECT la FROM rollup_{level.name} WHERE device_id = :d AND col = g.col"
        " AND ts = g.lt)" if "last" in aggregates else "NULL"
    )
    rows = connection.execute(
        "WITH g (col, k, mn, mx, sm, ct, lt) AS (SELECT col, (ts - :s) / :w, min(mn), max(mx),"
        f" sum(sm), sum(ct), max(ts) FROM rollup_{level.name} WHERE device_id = :d"
        f" AND col IN ({listed}) AND ts >= :s AND ts < :e GROUP BY 1, 2)"
        f" SELECT col, k, mn, mx, sm, ct, {last} FROM g",
        {"d": device_id, "s": start_ms, "e": end_ms, "w": width},
    ).fetchall()
    per_bucket: dict[int, dict[str, dict[str, float]]] = {}
    for n, k, mn, mx, sm, ct, la in rows:
        found = {"mean": sm / ct, "min": mn, "max": mx, "last": la}
        per_bucket.setdefault(k, {})[name_of[n]] = {a: found[a] for a in aggregates}
    # Fields in the order asked for, as the raw path gives them.
    order = [name for name, _ in columns]
    return [
        Bucket(start_ms + k * width, {f: values[f] for f in order if f in values})
        for k, values in sorted(per_bucket.items())
    ]
