"""Rollups and retention: one suite against both adapters over real I/O (a real influxd with a
database per test, SQLite files). Rollups must equal aggregates of the raw points, follow late
data, ignore repeats, and retention must remove what is older than each level keeps."""

from __future__ import annotations

import json
import math
import random
import sqlite3
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotmeter_tui.backend.config import load_settings
from iotmeter_tui.backend.errors import PartialWriteError
from iotmeter_tui.backend.stores import open_stores
from iotmeter_tui.backend.stores.factory import open_timeseries
from iotmeter_tui.backend.stores.rollup_fold import RollupBatch
from iotmeter_tui.backend.stores.rollups import (
    HOUR_MS,
    MINUTE_MS,
    Retention,
    aligned_range,
)
from iotmeter_tui.backend.stores.timeseries import Bucket, Point, TimeSeriesStore, bucket_width
from iotmeter_tui.backend.stores.timeseries_sqlite import SqliteTimeSeries
from testsupport import InfluxServer

# "influxdb-sole": InfluxDB rolled up as a one-worker collector does it, folding each batch
# into the rows it wrote last (stores/rollup_fold.py); every test holds for it too.
ADAPTERS = ["influxdb", "influxdb-sole", "sqlite"]
H0 = 1_795_737_600_000  # a whole hour (2026-11-29T08:00Z)


def pt(device_id: str, ts: int, seq: int = 0, **fields: float) -> Point:
    return Point(device_id, "power_meter_dc", ts, 1, seq, fields)


def write(store: TimeSeriesStore, points: list[Point]) -> None:
    """What the collector does: the time-series sink writes, the rollup sink then rolls the
    stored points up (collector/rollup_sink.py)."""
    store.write(points)
    store.roll_up(RollupBatch.of(points), sole_writer=getattr(store, "sole_writer", False))


class SoleWriter:
    """A store rolled up as the only writer: what the rollup sink of a one-worker collector
    asks for (roll_up(sole_writer=True))."""

    sole_writer = True

    def __init__(self, store: TimeSeriesStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def roll_up(self, batch: RollupBatch, *, sole_writer: bool = True) -> None:
        self._store.roll_up(batch, sole_writer=True)


def influx_query(server: InfluxServer, database: str, q: str) -> dict:  # type: ignore[type-arg]
    body = urllib.parse.urlencode({"db": database, "q": q, "epoch": "ms"}).encode()
    with urllib.request.urlopen(f"{server.http_url}/query", body, timeout=10) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


@pytest.fixture(params=ADAPTERS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(kind, URL) of an empty store of each kind."""
    if request.param == "sqlite":
        yield "sqlite", f"sqlite:///{tmp_path}/timeseries.db"
        return
    server: InfluxServer = request.getfixturevalue("influxdb")
    database = f"ru_{uuid.uuid4().hex[:12]}"
    yield request.param, f"influxdb://{server.host}:{server.port}/{database}"
    influx_query(server, database, f'DROP DATABASE "{database}"')


@pytest.fixture
def store(backend: tuple[str, str]) -> Iterator[TimeSeriesStore]:
    opened = open_timeseries(backend[1], rollups=True)
    yield SoleWriter(opened) if backend[0] == "influxdb-sole" else opened  # type: ignore[misc]
    opened.close()


def model(points: list[Point], field: str, start: int, width: int) -> dict[int, dict[str, float]]:
    """What history must answer, from the raw points, per bucket start."""
    groups: dict[int, list[tuple[int, float]]] = {}
    for p in points:
        if field in p.fields:
            groups.setdefault(start + (p.ts - start) // width * width, []).append(
                (p.ts, p.fields[field]))
    expected = {}
    for bucket, found in groups.items():
        found.sort()
        values = [v for _, v in found]
        expected[bucket] = {"min": min(values), "max": max(values), "last": values[-1],
                            "mean": math.fsum(values) / len(values)}
    return expected


def assert_matches(buckets: list[Bucket], expected: dict[int, dict[str, float]],
                   field: str) -> None:
    assert [b.ts for b in buckets] == sorted(expected)
    for bucket in buckets:
        got, want = bucket.values[field], expected[bucket.ts]
        assert (got["min"], got["max"], got["last"]) == (want["min"], want["max"], want["last"])
        assert got["mean"] == pytest.approx(want["mean"], rel=1e-9)


def three_hours(device: str, every_s: int = 20) -> list[Point]:
    rng = random.Random(device)
    return [
        pt(device, H0 + i * every_s * 1000 + rng.randrange(1000), i,
           v=round(rng.uniform(-900, 900), 3), w=float(i))
        for i in range(3 * 3600 // every_s)
    ]


def test_rollups_equal_aggregates_of_the_raw_points(store: TimeSeriesStore) -> None:
    points = three_hours("r1")
    for i in range(0, len(points), 97):  # batches that cut minutes and hours in two
        write(store, points[i : i + 97])
    write(store, [pt("other", p.ts, p.seq, v=1e6) for p in points[:50]])  # not r1's
    start, end = H0, H0 + 3 * HOUR_MS
    for max_points in (3, 36, 180):  # 1 h, 5 min and 1 min buckets: read from rollups
        width = bucket_width(start, end, max_points)
        assert width % MINUTE_MS == 0
        buckets = store.history("r1", ["v", "w"], start, end, max_points)
        assert_matches(buckets, model(points, "v", start, width), "v")
        assert_matches(buckets, model(points, "w", start, width), "w")


def test_an_aligned_chart_reads_what_the_raw_chart_shows(store: TimeSeriesStore) -> None:
    points = three_hours("r2", every_s=7)
    write(store, points)
    start, end = aligned_range(H0 + 1234, H0 + 3 * HOUR_MS - 999, 100)
    assert start == H0 and (end - start) % 100 == 0
    width = bucket_width(start, end, 100)
    assert width % MINUTE_MS == 0
    buckets = store.history("r2", ["v"], start, end, 100, aggregates=("mean", "last"))
    expected = model(points, "v", start, width)
    assert [b.ts for b in buckets] == sorted(expected)
    for bucket in buckets:
        assert set(bucket.values["v"]) == {"mean", "last"}
        assert bucket.values["v"]["last"] == expected[bucket.ts]["last"]
        assert bucket.values["v"]["mean"] == pytest.approx(expected[bucket.ts]["mean"])


def test_late_data_updates_its_minute_and_its_hour(store: TimeSeriesStore) -> None:
    points = three_hours("late")
    write(store, points)
    # Long after: a point for the first minute arrives, lower and later than any there.
    late = pt("late", H0 + 59_999, 10_000, v=-5000.0)
    write(store, [late])
    both = [*points, late]
    for max_points in (3, 180):
        width = bucket_width(H0, H0 + 3 * HOUR_MS, max_points)
        buckets = store.history("late", ["v"], H0, H0 + 3 * HOUR_MS, max_points)
        assert_matches(buckets, model(both, "v", H0, width), "v")
        assert buckets[0].values["v"]["min"] == -5000.0


def test_points_written_twice_are_counted_once(store: TimeSeriesStore) -> None:
    points = three_hours("dup")
    write(store, points)
    write(store, points[:200])  # a redelivered batch
    write(store, points[100:300])  # another overlapping one, in a new batch shape
    write(store, points[::-1][:50])  # newest points again, in reverse
    for max_points in (3, 180):
        width = bucket_width(H0, H0 + 3 * HOUR_MS, max_points)
        buckets = store.history("dup", ["v"], H0, H0 + 3 * HOUR_MS, max_points)
        assert_matches(buckets, model(points, "v", H0, width), "v")


def test_a_rewritten_point_replaces_its_old_value_in_the_rollups(
        store: TimeSeriesStore) -> None:
    write(store, [pt("re", H0 + 1000, 1, v=1.0), pt("re", H0 + 2000, 2, v=2.0)])
    write(store, [pt("re", H0 + 1000, 1, v=10.0)])
    [bucket] = store.history("re", ["v"], H0, H0 + HOUR_MS, 1)
    assert bucket.values["v"] == {"min": 2.0, "max": 10.0, "mean": 6.0, "last": 2.0}


def test_rollups_keep_fields_apart_and_devices_apart(store: TimeSeriesStore) -> None:
    write(store, [pt("a", H0 + 1000, 1, v=1.0), pt("a", H0 + 2000, 2, w=5.0),
                 pt("b", H0 + 1500, 1, v=100.0)])
    [bucket] = store.history("a", ["v", "w", "nope"], H0, H0 + HOUR_MS, 1)
    assert bucket.values == {"v": {"min": 1.0, "max": 1.0, "mean": 1.0, "last": 1.0},
                             "w": {"min": 5.0, "max": 5.0, "mean": 5.0, "last": 5.0}}
    assert store.history("nobody", ["v"], H0, H0 + HOUR_MS, 1) == []


# --- retention ----------------------------------------------------------------------------


def test_sqlite_retention_deletes_what_each_level_no_longer_keeps(tmp_path: Path) -> None:
    day = 24 * HOUR_MS
    retention = Retention(raw_ms=2 * day, minute_ms=10 * day, hour_ms=None)
    store = SqliteTimeSeries(tmp_path / "ts.db", retention=retention, rollups=True)
    now = H0 + 30 * day
    ages = (1, 5, 20)  # days
    # 6,000 points at the oldest age: more than one delete batch.
    write(store, [pt("old", now - 20 * day + i * 100, i, v=float(i)) for i in range(6000)])
    write(store, [pt("old", now - age * day, 9000 + age, v=float(age)) for age in ages[:2]])
    deleted = store.apply_retention(now_ms=now)
    assert deleted["raw"] == 6001  # 20 and 5 days old
    assert [p.ts for p in store.points("old")] == [now - day]
    assert deleted["1m"] == 10  # the 20-day-old minutes (6,000 points at 100 ms)
    assert deleted["1h"] == 0
    # What each level still holds, read through history:
    hourly = store.history("old", ["v"], now - 21 * day, now - 21 * day + 21 * HOUR_MS * 24, 21)
    assert [b.ts for b in hourly] == [now - 20 * day, now - 5 * day, now - day]
    minutes = store.history("old", ["v"], now - 6 * day, now, 6 * 24 * 60)
    assert [b.ts for b in minutes] == [now - 5 * day, now - day]
    assert store.apply_retention(now_ms=now) == {"raw": 0, "1m": 0, "1h": 0}
    store.close()


def test_sqlite_a_point_later_than_raw_retention_leaves_its_rollups_whole(
        tmp_path: Path) -> None:
    """Rollups are recomputed from the raw points, and this bucket's are gone: recomputing it
    from the one late point would throw away the minute it summarises, so it stays as it
    was (docs/stores-timeseries.md: backfill reaches back as far as raw retention)."""
    now_ms = int(time.time() * 1000)
    old = now_ms - now_ms % HOUR_MS - 72 * HOUR_MS
    store = SqliteTimeSeries(tmp_path / "ts.db", retention=Retention(raw_ms=24 * HOUR_MS),
                             rollups=True)
    write(store, [pt("x", old + i * 1000, i, v=float(i)) for i in range(60)])
    store.apply_retention()
    assert store.points("x") == []
    write(store, [pt("x", old + 500, 99, v=-1.0)])  # three days late
    [bucket] = store.history("x", ["v"], old, old + MINUTE_MS, 1)
    assert bucket.values["v"] == {"min": 0.0, "max": 59.0, "mean": 29.5, "last": 59.0}
    store.close()


def test_a_write_alone_keeps_rollups_as_they_were(store: TimeSeriesStore) -> None:
    """Rollups are off the write path: only roll_up() (the collector's rollup sink) moves
    them, and rolling the same points up again changes nothing."""
    first = [pt("hot", H0 + i * 1000, i, v=float(i)) for i in range(30)]
    write(store, first)
    store.write([pt("hot", H0 + 40_000, 40, v=100.0)])
    [bucket] = store.history("hot", ["v"], H0, H0 + HOUR_MS, 1)
    assert bucket.values["v"] == {"min": 0.0, "max": 29.0, "mean": 14.5, "last": 29.0}
    late = [pt("hot", H0 + 40_000, 40, v=100.0)]
    store.roll_up(RollupBatch.of(late))
    store.roll_up(RollupBatch.of(late))
    [bucket] = store.history("hot", ["v"], H0, H0 + HOUR_MS, 1)
    assert bucket.values["v"] == {"min": 0.0, "max": 100.0, "mean": 535 / 31, "last": 100.0}


def test_sqlite_a_bucket_cut_by_retention_is_not_recomputed(tmp_path: Path) -> None:
    """A point written again must recompute its bucket, but when retention has deleted part
    of the bucket's raw points a recompute would replace the whole rollup by one of the few
    points left: the rollup keeps its complete, older value instead."""
    minute = H0 + 40 * 24 * HOUR_MS
    store = SqliteTimeSeries(tmp_path / "ts.db", retention=Retention(raw_ms=24 * HOUR_MS),
                             rollups=True)
    write(store, [pt("x", minute + i * 1000, i, v=float(i)) for i in range(60)])
    assert store.apply_retention(now_ms=minute + 30_000 + 24 * HOUR_MS)["raw"] == 30
    write(store, [pt("x", minute + 45_000, 45, v=1000.0)])  # stored before: a rewrite
    [bucket] = store.history("x", ["v"], minute, minute + MINUTE_MS, 1)
    assert bucket.values["v"] == {"min": 0.0, "max": 59.0, "mean": 29.5, "last": 59.0}
    assert [p.fields["v"] for p in store.points("x")][15] == 1000.0  # raw has the new value
    store.close()


def test_influx_retention_policies_follow_the_settings(influxdb: InfluxServer) -> None:
    database = f"rp_{uuid.uuid4().hex[:12]}"
    url = f"influxdb://{influxdb.host}:{influxdb.port}/{database}"
    retention = Retention(raw_ms=48 * HOUR_MS, minute_ms=365 * 24 * HOUR_MS, hour_ms=None)
    try:
        store = open_timeseries(url, retention=retention, rollups=True)
        now_ms = int(time.time() * 1000)
        recent, old = now_ms - HOUR_MS, now_ms - 100 * 24 * HOUR_MS
        # Older than the raw retention: InfluxDB refuses the point (its shard is gone).
        with pytest.raises(PartialWriteError) as refused:
            write(store, [pt("p", recent, 1, v=1.0), pt("p", old, 2, v=2.0)])
        # 1.x does not say which point it dropped, only how many: all count as failed.
        assert old in [p.ts for p in refused.value.failed]
        assert refused.value.accepted == 1
        assert [p.ts for p in store.points("p")] == [recent]
        store.close()
        rows = influx_query(influxdb, database, f'SHOW RETENTION POLICIES ON "{database}"')
        [series] = rows["results"][0]["series"]
        at = {c: i for i, c in enumerate(series["columns"])}
        durations = {r[at["name"]]: (r[at["duration"]], r[at["default"]])
                     for r in series["values"]}
        assert durations == {"autogen": ("48h0m0s", True), "rollup_1m": ("8760h0m0s", False),
                             "rollup_1h": ("0s", False)}
        # Opening again with other settings alters the policies that exist.
        again = open_timeseries(url, retention=Retention(minute_ms=30 * 24 * HOUR_MS),
                                rollups=True)
        again.check()
        again.close()
        rows = influx_query(influxdb, database, f'SHOW RETENTION POLICIES ON "{database}"')
        values = rows["results"][0]["series"][0]["values"]
        assert {r[at["name"]]: r[at["duration"]] for r in values} == {
            "autogen": "0s", "rollup_1m": "720h0m0s", "rollup_1h": "0s"}
    finally:
        influx_query(influxdb, database, f'DROP DATABASE "{database}"')


def test_influx_rollups_land_in_their_retention_policies(influxdb: InfluxServer) -> None:
    database = f"rp_{uuid.uuid4().hex[:12]}"
    url = f"influxdb://{influxdb.host}:{influxdb.port}/{database}"
    try:
        store = open_timeseries(url, rollups=True)
        write(store, [pt("q", H0 + 1000, 1, v=3.0), pt("q", H0 + 61_000, 2, v=4.0)])
        store.close()
        minute = influx_query(influxdb, database,
                              'SELECT * FROM "rollup_1m"."iot_telemetry_1m" WHERE device_id=\'q\'')
        [series] = minute["results"][0]["series"]
        rows = [dict(zip(series["columns"], r, strict=True)) for r in series["values"]]
        assert [(r["time"], r["v_min"], r["v_count"], r["v_sum"]) for r in rows] == [
            (H0, 3.0, 1.0, 3.0), (H0 + MINUTE_MS, 4.0, 1.0, 4.0)]
        hour = influx_query(influxdb, database,
                            'SELECT * FROM "rollup_1h"."iot_telemetry_1h" WHERE device_id=\'q\'')
        [series] = hour["results"][0]["series"]
        [row] = [dict(zip(series["columns"], r, strict=True)) for r in series["values"]]
        assert (row["time"], row["v_count"], row["v_sum"], row["v_last"]) == (H0, 2.0, 7.0, 4.0)
    finally:
        influx_query(influxdb, database, f'DROP DATABASE "{database}"')


# --- InfluxDB, the only writer: rows folded in memory ----------------------------------------


def test_influx_sole_writer_folds_in_order_batches_without_asking_the_server(
        influxdb: InfluxServer) -> None:
    """The common batch of a one-worker collector: the rows of the current buckets are in
    memory, so rolling up recomputes nothing and reads only a bucket new to it; a new
    process reads the rows it lacks, and a replayed batch or a late point is recomputed.
    The rollups equal the raw points' aggregates throughout."""
    database = f"fold_{uuid.uuid4().hex[:12]}"
    url = f"influxdb://{influxdb.host}:{influxdb.port}/{database}"
    now = int(time.time() * 1000)
    start = now - now % MINUTE_MS  # this minute and the next: buckets the rows are kept for
    rng = random.Random(5)
    points = [pt(d, start + i * 1000 + k, i, v=round(rng.uniform(-5, 5), 3), w=float(i))
              for i in range(120) for k, d in enumerate(("f1", "f2"))]
    try:
        store = open_timeseries(url, rollups=True)
        queries: list[str] = []
        real_query = store._query  # type: ignore[attr-defined]

        def counted(statements: list[str], **kwargs: object) -> object:
            queries.extend(statements)
            return real_query(statements, **kwargs)

        store._query = counted  # type: ignore[attr-defined]
        sole = SoleWriter(store)
        write(sole, points[:40])
        assert any("iot_telemetry_1m" in q for q in queries)  # the first batch reads its rows
        queries.clear()
        for i in range(40, 200, 40):
            write(sole, points[i : i + 40])
        # In order, the rows in memory: no recompute, and only the next minute (and maybe
        # hour), new to this process, is looked for in the store, once.
        assert not any("GROUP BY" in q for q in queries)
        assert len(queries) <= 2 and all(f"time >= {start + MINUTE_MS}ms" in q or "_1h" in q
                                         for q in queries)

        def check(upto: list[Point]) -> None:
            hour = start - start % HOUR_MS
            for device in ("f1", "f2"):
                mine = [p for p in upto if p.device_id == device]
                for max_points in (2, 120):  # 1 h and 1 min buckets
                    width = bucket_width(hour, hour + 2 * HOUR_MS, max_points)
                    buckets = store.history(device, ["v", "w"], hour, hour + 2 * HOUR_MS,
                                            max_points)
                    assert_matches(buckets, model(mine, "v", hour, width), "v")
                    assert_matches(buckets, model(mine, "w", hour, width), "w")

        check(points[:200])
        # The last batch again (a crash before the sink saved its cursor): recomputed, once.
        write(sole, points[160:200])
        assert any("GROUP BY" in q for q in queries)
        check(points[:200])
        # A new process carries on: it reads the rows it does not hold, then folds.
        store.close()
        again = SoleWriter(open_timeseries(url, rollups=True))
        write(again, points[200:])
        check(points)
        # A late point, older than the newest of its minute and lower than any: recomputed.
        late = pt("f1", start + 500, 10_000, v=-50.0)
        write(again, [late])
        check([*points, late])
        again.close()
    finally:
        influx_query(influxdb, database, f'DROP DATABASE "{database}"')


# --- SQLite: files written before rollups existed --------------------------------------------


def version_1_file(path: Path) -> list[Point]:
    """A SQLite file as iotmeter wrote it before rollups existed; returns its points."""
    connection = sqlite3.connect(path)
    connection.executescript("""
        CREATE TABLE fields (name TEXT PRIMARY KEY, col INTEGER NOT NULL UNIQUE);
        CREATE TABLE points (device_id TEXT NOT NULL, ts INTEGER NOT NULL,
            device_type TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
            f1 REAL, PRIMARY KEY (device_id, ts)) WITHOUT ROWID;
        CREATE TABLE latest (device_id TEXT PRIMARY KEY, device_type TEXT NOT NULL,
            ts INTEGER NOT NULL, f1 REAL, t1 INTEGER) WITHOUT ROWID;
        INSERT INTO fields VALUES ('v', 1);
        PRAGMA user_version = 1;
    """)
    points = three_hours("legacy")
    connection.executemany(
        "INSERT INTO points VALUES (?, ?, 'power_meter_dc', 1, ?, ?)",
        [(p.device_id, p.ts, p.seq, p.fields["v"]) for p in points])
    connection.execute("INSERT INTO latest VALUES ('legacy', 'power_meter_dc', ?, 0, ?)",
                       (points[-1].ts, points[-1].ts))
    connection.commit()
    connection.close()
    return points


def test_a_version_1_file_gets_its_rollups_on_first_open(tmp_path: Path) -> None:
    path = tmp_path / "ts.db"
    points = version_1_file(path)
    store = SqliteTimeSeries(path, rollups=True)
    for max_points in (3, 180):
        width = bucket_width(H0, H0 + 3 * HOUR_MS, max_points)
        buckets = store.history("legacy", ["v"], H0, H0 + 3 * HOUR_MS, max_points)
        assert_matches(buckets, model(points, "v", H0, width), "v")
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (2,)


# --- failure paths ------------------------------------------------------------------------


def test_a_batch_whose_rollups_were_lost_is_repaired_by_its_redelivery(
        backend: tuple[str, str], influxdb: InfluxServer) -> None:
    """The raw write succeeded, then the process died before the rollups were written (or
    their write failed and the sink retries): the redelivered batch finds its points stored
    and recomputes their buckets from them."""
    kind, url = backend
    points = three_hours("crash")[:150]  # within the first hour
    if kind == "sqlite":
        # Raw points only, as a writer without rollups would leave them.
        store = SqliteTimeSeries(url.removeprefix("sqlite://"), rollups=True)
        write(store, points)
        connection = sqlite3.connect(url.removeprefix("sqlite://"))
        with connection:
            connection.execute("DELETE FROM rollup_1m")
            connection.execute("DELETE FROM rollup_1h")
        connection.close()
    else:
        database = urllib.parse.urlsplit(url).path.strip("/")
        influx_query(influxdb, database, f'CREATE DATABASE "{database}"')
        body = "\n".join(
            f"iot_telemetry,device_id=crash,device_type=power_meter_dc "
            f"v={p.fields['v']!r},w={p.fields['w']!r},boot=1i,seq={p.seq}i {p.ts}"
            for p in points).encode()
        target = f"{influxdb.http_url}/write?db={database}&precision=ms"
        with urllib.request.urlopen(target, body, timeout=10):
            pass
        store = open_timeseries(url, rollups=True)  # type: ignore[assignment]
    assert store.history("crash", ["v"], H0, H0 + HOUR_MS, 1) == []  # no rollups yet
    write(store, points)  # the redelivery
    for max_points in (1, 60):
        width = bucket_width(H0, H0 + HOUR_MS, max_points)
        buckets = store.history("crash", ["v"], H0, H0 + HOUR_MS, max_points)
        assert_matches(buckets, model(points, "v", H0, width), "v")
    store.close()


def test_threads_writing_the_same_points_at_once_count_them_once(
        store: TimeSeriesStore) -> None:
    points = three_hours("race")[:150]
    threads = [threading.Thread(target=write, args=(store, points)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    buckets = store.history("race", ["v"], H0, H0 + HOUR_MS, 1)
    assert_matches(buckets, model(points, "v", H0, HOUR_MS), "v")


def test_a_later_batch_with_other_fields_keeps_the_first_ones(store: TimeSeriesStore) -> None:
    write(store, [pt("mix", H0 + 1000, 1, v=1.0)])
    write(store, [pt("mix", H0 + 2000, 2, w=7.0)])
    write(store, [pt("mix", H0 + 3000, 3, v=3.0)])
    [bucket] = store.history("mix", ["v", "w"], H0, H0 + HOUR_MS, 1)
    assert bucket.values == {"v": {"min": 1.0, "max": 3.0, "mean": 2.0, "last": 3.0},
                             "w": {"min": 7.0, "max": 7.0, "mean": 7.0, "last": 7.0}}


# --- rollups off (IOTMETER_ROLLUPS=false) ----------------------------------------------------


def test_with_rollups_off_a_write_keeps_raw_points_only(
        backend: tuple[str, str], influxdb: InfluxServer) -> None:
    kind, url = backend
    points = three_hours("off")
    store = open_timeseries(url, retention=Retention(raw_ms=365 * 24 * HOUR_MS))
    try:
        for i in range(0, len(points), 97):
            write(store, points[i : i + 97])
        write(store, points[:50])  # a redelivery changes nothing
        assert store.points("off") == points
        # Windows that rollups would answer are read from the raw points, and agree.
        for max_points in (3, 36, 180):
            width = bucket_width(H0, H0 + 3 * HOUR_MS, max_points)
            buckets = store.history("off", ["v", "w"], H0, H0 + 3 * HOUR_MS, max_points)
            assert_matches(buckets, model(points, "v", H0, width), "v")
            assert_matches(buckets, model(points, "w", H0, width), "w")
    finally:
        store.close()
    if kind == "sqlite":
        connection = sqlite3.connect(url.removeprefix("sqlite://"))
        assert [connection.execute(f"SELECT count(*) FROM rollup_{r}").fetchone()[0]
                for r in ("1m", "1h")] == [0, 0]
        connection.close()
        return
    database = urllib.parse.urlsplit(url).path.strip("/")
    found = influx_query(influxdb, database, "SHOW MEASUREMENTS")["results"][0]["series"]
    assert [name for [name] in found[0]["values"]] == ["iot_telemetry"]
    rows = influx_query(influxdb, database, f'SHOW RETENTION POLICIES ON "{database}"')
    [series] = rows["results"][0]["series"]
    at = {c: i for i, c in enumerate(series["columns"])}
    # Raw retention still applies; no policy for rollups that are not kept.
    assert {r[at["name"]]: r[at["duration"]] for r in series["values"]} == {
        "autogen": "8760h0m0s"}


def test_sqlite_rollups_turned_on_roll_up_what_was_written_while_off(tmp_path: Path) -> None:
    path = tmp_path / "ts.db"
    before = three_hours("switch")
    off = SqliteTimeSeries(path)
    write(off, before[:300])
    off.close()
    on = SqliteTimeSeries(path, rollups=True)
    write(on, before[300:])  # folded into rollups that hold the first 300 points too
    on.close()
    later = SqliteTimeSeries(path)  # off again, then on again: rolled up once more
    late = pt("switch", H0 + 59_999, 10_000, v=-5000.0)
    write(later, [late])
    later.close()
    again = SqliteTimeSeries(path, rollups=True)
    for max_points in (3, 180):
        width = bucket_width(H0, H0 + 3 * HOUR_MS, max_points)
        buckets = again.history("switch", ["v"], H0, H0 + 3 * HOUR_MS, max_points)
        assert_matches(buckets, model([*before, late], "v", H0, width), "v")
    again.close()
    assert sqlite3.connect(path).execute("SELECT count(*) FROM rollups_behind").fetchone() == (0,)


def test_sqlite_a_version_1_file_opened_with_rollups_off_is_not_rolled_up(
        tmp_path: Path) -> None:
    path = tmp_path / "ts.db"
    points = version_1_file(path)
    store = SqliteTimeSeries(path)
    buckets = store.history("legacy", ["v"], H0, H0 + 3 * HOUR_MS, 3)  # from raw points
    assert_matches(buckets, model(points, "v", H0, HOUR_MS), "v")
    store.close()
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA user_version").fetchone() == (2,)
    assert [connection.execute(f"SELECT count(*) FROM rollup_{r}").fetchone()[0]
            for r in ("1m", "1h")] == [0, 0]
    connection.close()


@pytest.mark.parametrize(("setting", "kept"), [(None, True), ("false", False), ("true", True)])
def test_open_stores_keeps_rollups_only_when_the_setting_says_so(
        tmp_path: Path, setting: str | None, kept: bool) -> None:
    env = {"IOTMETER_HOME": str(tmp_path)}
    if setting is not None:
        env["IOTMETER_ROLLUPS"] = setting
    stores = open_stores(load_settings(env=env))
    try:
        write(stores.timeseries, [pt("cfg", H0 + 1000, 1, v=2.0)])
        [bucket] = stores.timeseries.history("cfg", ["v"], H0, H0 + HOUR_MS, 1)
        assert bucket.values["v"]["last"] == 2.0
    finally:
        stores.close()
    connection = sqlite3.connect(tmp_path / "timeseries.db")
    assert connection.execute("SELECT count(*) FROM rollup_1h").fetchone() == (int(kept),)
    connection.close()
