"""The TimeSeriesStore contract: one suite, run against every adapter over real I/O (a real
influxd with a database per test, and SQLite files)."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotmeter_tui.backend.errors import PartialWriteError
from iotmeter_tui.backend.stores.factory import open_timeseries
from iotmeter_tui.backend.stores.timeseries import (
    AGGREGATES,
    Bucket,
    Point,
    TimeSeriesStore,
    bucket_width,
)
from testsupport import InfluxServer

ADAPTERS = ["influxdb", "sqlite"]
REPO = Path(__file__).resolve().parents[2]
T0 = 1_795_740_000_123  # deliberately not a multiple of any bucket width used below


def pt(device_id: str, ts: int, seq: int = 0, *, device_type: str = "power_meter_dc",
       boot: int = 1, **fields: float) -> Point:
    return Point(device_id, device_type, ts, boot, seq, fields)


def influx_url(server: InfluxServer, database: str) -> str:
    return f"influxdb://{server.host}:{server.port}/{database}"


def drop_database(server: InfluxServer, database: str) -> None:
    body = urllib.parse.urlencode({"q": f'DROP DATABASE "{database}"'}).encode()
    with urllib.request.urlopen(f"{server.http_url}/query", body, timeout=10):
        pass


@pytest.fixture(params=ADAPTERS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL naming an empty store of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/timeseries.db"
        return
    server: InfluxServer = request.getfixturevalue("influxdb")
    database = f"ts_{uuid.uuid4().hex[:12]}"
    yield influx_url(server, database)
    drop_database(server, database)


@pytest.fixture
def store(store_url: str) -> Iterator[TimeSeriesStore]:
    opened = open_timeseries(store_url)
    yield opened
    opened.close()


# --- writing and reading back -------------------------------------------------------------


def test_round_trip_keeps_values_as_floats_and_boot_seq(store: TimeSeriesStore) -> None:
    written = [
        pt("dc-0001", T0, 1041, boot=7, voltage_v=750, current_a=-1210.5, power_kw=0),
        pt("dc-0001", T0 + 1000, 1042, boot=7, voltage_v=748.25, current_a=1e-5,
           power_kw=1.5e16),
    ]
    store.write(written)
    read = store.points("dc-0001")
    assert read == written
    assert all(type(v) is float for p in read for v in p.fields.values())
    assert [(p.boot, p.seq) for p in read] == [(7, 1041), (7, 1042)]


def test_same_batch_twice_changes_nothing(store: TimeSeriesStore) -> None:
    batch = [pt(f"dev-{d}", T0 + i * 1000, i, voltage_v=700.0 + i) for d in range(3)
             for i in range(20)]
    store.write(batch)
    counts, points, latest = store.counts(), store.points("dev-1"), store.latest()
    store.write(batch)
    assert store.counts() == counts == {"dev-0": 20, "dev-1": 20, "dev-2": 20}
    assert store.points("dev-1") == points
    assert store.latest() == latest


def test_rewriting_a_point_overwrites_it(store: TimeSeriesStore) -> None:
    store.write([pt("dev", T0, 1, voltage_v=1.0, current_a=2.0)])
    store.write([pt("dev", T0, 2, voltage_v=3.0)])
    # Field by field, like InfluxDB: the rewrite did not name current_a, so it stays.
    assert store.points("dev") == [pt("dev", T0, 2, voltage_v=3.0, current_a=2.0)]
    assert store.counts() == {"dev": 1}
    assert store.latest()["dev"].fields == {"voltage_v": 3.0, "current_a": 2.0}


def test_batches_larger_than_a_chunk_are_written_whole(store: TimeSeriesStore) -> None:
    written = [pt("big", T0 + i, i, v=float(i)) for i in range(12_001)]
    store.write(written)
    assert store.counts() == {"big": 12_001}
    assert store.points("big") == written  # also more rows than one chunk of an answer


# --- latest -------------------------------------------------------------------------------


def test_latest_is_each_fields_last_value(store: TimeSeriesStore) -> None:
    store.write([
        pt("dev", T0 + 1000, 1, voltage_v=1.0, temperature_c=30.0),
        pt("dev", T0 + 2000, 2, voltage_v=2.0),
        pt("other", T0, 1, voltage_v=9.0),
    ])
    # A late, older point fills a field never seen but hides no newer value.
    store.write([pt("dev", T0, 0, voltage_v=-1.0, temperature_c=-1.0, frequency_hz=50.0)])
    latest = store.latest()
    assert set(latest) == {"dev", "other"}
    assert latest["dev"].ts == T0 + 2000
    assert latest["dev"].device_type == "power_meter_dc"
    assert latest["dev"].fields == {"voltage_v": 2.0, "temperature_c": 30.0, "frequency_hz": 50.0}
    assert latest["other"].fields == {"voltage_v": 9.0}


def test_latest_type_is_the_newest_points(store: TimeSeriesStore) -> None:
    store.write([pt("dev", T0, 1, device_type="unknown", v=1.0)])
    store.write([pt("dev", T0 + 1, 2, device_type="power_meter_ac", v=2.0)])
    assert store.latest()["dev"].device_type == "power_meter_ac"


def test_latest_of_given_devices(store: TimeSeriesStore) -> None:
    devices = [f"m-{i:03d}" for i in range(130)]  # more than one tag-scoped statement
    store.write([pt(d, T0 + i, i, v=float(i)) for i, d in enumerate(devices)])
    wanted = [*devices[::3], "never-heard", devices[0]]
    latest = store.latest(wanted)
    assert set(latest) == set(devices[::3])
    assert latest["m-003"].fields == {"v": 3.0}
    assert latest["m-003"].ts == T0 + 3
    assert len(store.latest()) == 130
    assert store.latest([]) == {}


# --- history ------------------------------------------------------------------------------


def test_history_buckets_and_aggregates_by_hand(store: TimeSeriesStore) -> None:
    # [T0, T0 + 10 s) in 4 buckets of 2.5 s; bucket 1 stays empty.
    store.write([
        pt("h", T0 - 1, 0, v=1000.0, w=1000.0),  # before the range
        pt("h", T0, 1, v=1.0, w=5.0),
        pt("h", T0 + 1000, 2, v=2.0),
        pt("h", T0 + 2499, 3, v=3.0),
        pt("h", T0 + 5000, 4, v=10.0),
        pt("h", T0 + 7499, 5, v=-4.0),
        pt("h", T0 + 7500, 6, v=7.0, w=6.0),
        pt("h", T0 + 10_000, 7, v=500.0),  # the end is excluded
        pt("other", T0, 1, v=99.0),
    ])
    buckets = store.history("h", ["v", "w"], T0, T0 + 10_000, max_points=4)
    assert buckets == [
        Bucket(T0, {"v": {"mean": 2.0, "min": 1.0, "max": 3.0, "last": 3.0},
                    "w": {"mean": 5.0, "min": 5.0, "max": 5.0, "last": 5.0}}),
        Bucket(T0 + 5000, {"v": {"mean": 3.0, "min": -4.0, "max": 10.0, "last": -4.0}}),
        Bucket(T0 + 7500, {"v": {"mean": 7.0, "min": 7.0, "max": 7.0, "last": 7.0},
                           "w": {"mean": 6.0, "min": 6.0, "max": 6.0, "last": 6.0}}),
    ]


def test_history_computes_only_the_requested_aggregates(store: TimeSeriesStore) -> None:
    store.write([
        pt("h", T0, 1, v=1.0, w=5.0),
        pt("h", T0 + 1000, 2, v=2.0),
        pt("h", T0 + 5000, 3, v=10.0, w=-1.0),
        pt("h", T0 + 7000, 4, v=-4.0),
    ])
    everything = store.history("h", ["v", "w"], T0, T0 + 10_000, max_points=4)
    assert everything == store.history("h", ["v", "w"], T0, T0 + 10_000, max_points=4,
                                       aggregates=AGGREGATES)
    # Every non-empty subset, in any order and with repeats: the same buckets, each field
    # holding exactly the aggregates asked for, with the values the full answer has.
    for size in range(1, len(AGGREGATES) + 1):
        for subset in itertools.combinations(AGGREGATES, size):
            asked = [*reversed(subset), subset[0]]
            got = store.history("h", ["v", "w"], T0, T0 + 10_000, max_points=4,
                                aggregates=asked)
            assert got == [
                Bucket(b.ts, {name: {a: values[a] for a in subset}
                              for name, values in b.values.items()})
                for b in everything
            ], subset


def test_history_for_a_chart(store: TimeSeriesStore) -> None:
    """What the dashboard's live charts ask: mean alone, or mean with min and max."""
    store.write([pt("c", T0 + i * 100, i, voltage_v=750.0 + i, current_a=-1.0 - i,
                    power_kw=0.5 * i) for i in range(40)])
    fields = ["voltage_v", "current_a", "power_kw"]
    means = store.history("c", fields, T0, T0 + 4000, max_points=2, aggregates=("mean",))
    assert means == [
        Bucket(T0, {"voltage_v": {"mean": 759.5}, "current_a": {"mean": -10.5},
                    "power_kw": {"mean": 4.75}}),
        Bucket(T0 + 2000, {"voltage_v": {"mean": 779.5}, "current_a": {"mean": -30.5},
                           "power_kw": {"mean": 14.75}}),
    ]
    bands = store.history("c", fields, T0, T0 + 4000, max_points=1,
                          aggregates=("mean", "min", "max"))
    assert bands == [Bucket(T0, {
        "voltage_v": {"mean": 769.5, "min": 750.0, "max": 789.0},
        "current_a": {"mean": -20.5, "min": -40.0, "max": -1.0},
        "power_kw": {"mean": 9.75, "min": 0.0, "max": 19.5},
    })]


@pytest.mark.parametrize("aggregates", [
    ("median",), ("mean", "avg"), ("MEAN",), ("last", ""), "mean", ("mean", None),
])
def test_history_refuses_unknown_aggregates(store: TimeSeriesStore, aggregates: object) -> None:
    store.write([pt("h", T0, 1, v=1.0)])
    with pytest.raises(ValueError, match="aggregate"):
        store.history("h", ["v"], T0, T0 + 10, aggregates=aggregates)  # type: ignore[arg-type]
    # Refused before anything else is looked at: an unknown device or field changes nothing.
    with pytest.raises(ValueError, match="aggregate"):
        store.history("nobody", ["nope"], T0, T0, aggregates=aggregates)  # type: ignore[arg-type]


def test_history_of_no_aggregates_is_empty(store: TimeSeriesStore) -> None:
    store.write([pt("h", T0, 1, v=1.0)])
    assert store.history("h", ["v"], T0, T0 + 10, aggregates=()) == []


def test_history_width_rounds_up_so_buckets_never_exceed_max_points(
    store: TimeSeriesStore,
) -> None:
    store.write([pt("h", T0 + i * 100, i, v=float(i)) for i in range(101)])  # T0 .. T0+10 s
    buckets = store.history("h", ["v"], T0, T0 + 10_001, max_points=4)
    assert bucket_width(T0, T0 + 10_001, 4) == 2501
    assert [b.ts for b in buckets] == [T0, T0 + 2501, T0 + 5002, T0 + 7503]
    assert buckets[-1].values["v"]["last"] == 100.0
    whole = store.history("h", ["v"], T0, T0 + 10_001, max_points=1)
    assert whole == [Bucket(T0, {"v": {"mean": 50.0, "min": 0.0, "max": 100.0, "last": 100.0}})]


def test_history_of_unknown_fields_devices_and_empty_ranges(store: TimeSeriesStore) -> None:
    store.write([pt("h", T0, 1, v=1.0)])
    assert store.history("h", ["nope"], T0, T0 + 1000) == []
    assert store.history("nobody", ["v"], T0, T0 + 1000) == []
    assert store.history("h", ["v"], T0 + 1, T0 + 1000) == []
    assert store.history("h", ["v"], T0, T0) == []
    assert store.history("h", [], T0, T0 + 1000) == []
    assert store.history("h", ["nope", "v"], T0, T0 + 1000) == [
        Bucket(T0, {"v": {"mean": 1.0, "min": 1.0, "max": 1.0, "last": 1.0}})
    ]


def test_history_of_a_day_at_one_second_fits_max_points(store: TimeSeriesStore) -> None:
    day = 86_400
    store.write([pt("day", T0 + i * 1000, i, v=float(i % 1000)) for i in range(day)])
    buckets = store.history("day", ["v"], T0, T0 + day * 1000, max_points=500)
    assert len(buckets) == 500
    assert buckets[1].ts - buckets[0].ts == 172_800  # ceil(86,400 s / 500)
    # 172.8 s a bucket: the first holds the points of seconds 0..172.
    assert buckets[0].values["v"] == {"mean": 86.0, "min": 0.0, "max": 172.0, "last": 172.0}


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    samples=st.dictionaries(
        st.integers(0, 20_000),
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
        min_size=1, max_size=60,
    ),
    span=st.integers(1, 20_000),
    max_points=st.integers(1, 25),
)
def test_history_matches_a_model(
    store: TimeSeriesStore, samples: dict[int, float], span: int, max_points: int
) -> None:
    device = f"model-{uuid.uuid4().hex[:8]}"
    store.write([pt(device, T0 + offset, i, v=value)
                 for i, (offset, value) in enumerate(samples.items())])
    width = bucket_width(T0, T0 + span, max_points)
    expected: dict[int, list[tuple[int, float]]] = {}
    for offset, value in sorted(samples.items()):
        if offset < span:
            expected.setdefault(offset // width, []).append((offset, value))
    buckets = store.history(device, ["v"], T0, T0 + span, max_points)
    assert len(buckets) <= max_points
    assert [b.ts for b in buckets] == [T0 + k * width for k in sorted(expected)]
    for bucket in buckets:
        values = [value for _, value in expected[(bucket.ts - T0) // width]]
        got = bucket.values["v"]
        assert got["min"] == min(values)
        assert got["max"] == max(values)
        assert got["last"] == values[-1]
        assert got["mean"] == pytest.approx(math.fsum(values) / len(values), rel=1e-9, abs=1e-6)


# --- counts and points --------------------------------------------------------------------


def test_counts_over_ranges(store: TimeSeriesStore) -> None:
    store.write([pt("a", T0 + i * 10, i, v=1.0) for i in range(10)]  # T0 .. T0+90
                + [pt("b", T0 + 50, 1, v=1.0)]
                + [pt("c", 10**12 * 5, 1, v=1.0)])  # far in the future still counts
    assert store.counts() == {"a": 10, "b": 1, "c": 1}
    assert store.counts(T0 + 50, T0 + 80) == {"a": 3, "b": 1}  # [start, end)
    assert store.counts(start_ms=T0 + 90) == {"a": 1, "c": 1}
    assert store.counts(end_ms=T0 + 10) == {"a": 1}
    assert store.counts(T0 + 1, T0 + 10) == {}


def test_points_in_time_order_within_range(store: TimeSeriesStore) -> None:
    written = [pt("d", T0 + ts, seq, v=float(seq)) for seq, ts in enumerate([30, 10, 20, 0])]
    store.write([*written, pt("e", T0 + 15, 9, v=9.0)])
    assert [p.ts - T0 for p in store.points("d")] == [0, 10, 20, 30]
    assert [p.ts - T0 for p in store.points("d", T0 + 10, T0 + 30)] == [10, 20]
    assert store.points("d", start_ms=T0 + 25) == [written[0]]
    assert store.points("nobody") == []


# --- odd names, injection, refusals -------------------------------------------------------

ODD_DEVICE_IDS = ["dev 1", "a,b", "k=v", "it's", 'say "hi"', "ünïcode✓", "x\u00a0y", "-"]
ODD_FIELDS = ["temp c", "a,b", "x=y", "L1.voltage/V", "thd%", "9lives", "a-b+c:d"]


def test_odd_device_ids_and_field_names_round_trip(store: TimeSeriesStore) -> None:
    fields = {name: float(i) for i, name in enumerate(ODD_FIELDS)}
    written = [Point(d, "type, with = odd 'chars'", T0 + i, 1, i, fields)
               for i, d in enumerate(ODD_DEVICE_IDS)]
    store.write(written)
    assert store.counts() == dict.fromkeys(ODD_DEVICE_IDS, 1)
    for point in written:
        assert store.points(point.device_id) == [point]
        latest = store.latest([point.device_id])[point.device_id]
        assert (latest.device_type, latest.fields) == (point.device_type, fields)
        [bucket] = store.history(point.device_id, ODD_FIELDS, T0, T0 + 100)
        assert {name: v["last"] for name, v in bucket.values.items()} == fields
    assert set(store.latest()) == set(ODD_DEVICE_IDS)


INJECTIONS = [
    "x' OR device_id =~ /.*/ OR 'a'='a",
    "x' OR 1=1 --",
    "'; DROP DATABASE \"iot-metrics\"; --",
    "x\\' OR 'a'='a",
    "x\n' OR 'a'='a",
    "x') OR 1=1; DROP TABLE points; --",
]


@pytest.mark.parametrize("attack", INJECTIONS)
def test_injection_through_device_ids_is_harmless(store: TimeSeriesStore, attack: str) -> None:
    victim = [pt("victim", T0 + i, i, v=float(i)) for i in range(3)]
    store.write(victim)
    assert store.points(attack) == []
    assert store.latest([attack]) == {}
    assert store.history(attack, ["v"], T0, T0 + 10) == []
    assert store.points("victim") == victim
    assert store.counts() == {"victim": 3}


def test_a_device_id_with_quotes_reads_only_its_own_points(store: TimeSeriesStore) -> None:
    sneaky = "victim' OR device_id = 'victim"
    store.write([pt("victim", T0, 1, v=1.0), pt(sneaky, T0 + 1, 1, v=2.0)])
    assert store.points(sneaky) == [pt(sneaky, T0 + 1, 1, v=2.0)]
    assert set(store.latest([sneaky])) == {sneaky}


@pytest.mark.parametrize("field", [
    'v") FROM iot_telemetry; DROP DATABASE "x', "v' OR 1=1", 'a"b', "a\\b", "", "time",
    "seq", "line\nbreak", "_private",
])
def test_unsafe_field_names_are_refused_in_queries(store: TimeSeriesStore, field: str) -> None:
    store.write([pt("victim", T0, 1, v=1.0)])
    with pytest.raises(ValueError):
        store.history("victim", ["v", field], T0, T0 + 10)
    assert store.counts() == {"victim": 1}


def test_points_no_store_can_hold_are_refused_and_the_rest_kept(store: TimeSeriesStore) -> None:
    good = [pt("ok", T0, 1, v=1.0), pt("ok", T0 + 1, 2, v=2.0)]
    bad = [
        pt("bad", T0, 1, v=math.nan),
        pt("bad", T0, 1, v=math.inf),
        pt("bad", T0, 1, v=True),
        pt("bad", T0, 1, v="750"),  # type: ignore[arg-type]
        Point("bad", "power_meter_dc", T0, 1, 2.0, {"v": 1.0}),  # type: ignore[arg-type]
        Point("bad", "power_meter_dc", T0, 1, 1, {'quo"te': 1.0}),
        pt("", T0, 1, v=1.0),
        pt("back\\slash", T0, 1, v=1.0),
        pt("bad", T0, 1, device_type="new\nline", v=1.0),
        pt("bad", -1, 1, v=1.0),
        pt("bad", T0, -1, v=1.0),
    ]
    with pytest.raises(PartialWriteError) as caught:
        store.write([good[0], *bad, good[1]])
    assert caught.value.failed == bad
    assert caught.value.accepted == 2
    assert store.counts() == {"ok": 2}


def test_an_empty_store_answers_empty(store: TimeSeriesStore) -> None:
    store.check()
    store.write([])
    assert store.latest() == {}
    assert store.latest(["x"]) == {}
    assert store.history("x", ["v"], 0, T0) == []
    assert store.counts() == {}
    assert store.counts(T0, T0 + 1) == {}
    assert store.points("x") == []


# --- threads and processes ----------------------------------------------------------------


def test_several_threads_share_one_store(store: TimeSeriesStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for batch in range(10):
                store.write([pt(f"t-{n}", T0 + batch * 100 + i, i, v=float(i))
                             for i in range(100)])
                store.latest()
                store.history(f"t-{n}", ["v"], T0, T0 + 1000, 10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.counts() == {f"t-{n}": 1000 for n in range(4)}


CHILD_WRITER = """
import sys
from iotmeter_tui.backend.stores.timeseries import Point
from iotmeter_tui.backend.stores.factory import open_timeseries
store = open_timeseries(sys.argv[1])
for batch in range(20):
    # A field the parent has never seen: the child adds it while the parent reads.
    store.write([Point("child", "power_meter_dc", {t0} + batch * 500 + i, 1, i,
                       {{"v": 1.0, "child_only": float(i)}}) for i in range(500)])
store.close()
"""


def test_another_process_writes_while_this_one_reads(store_url: str) -> None:
    reader = open_timeseries(store_url)
    reader.write([pt("parent", T0, 1, v=1.0)])  # prepares the store first
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_WRITER.format(t0=T0), store_url],
        cwd=REPO, stderr=subprocess.PIPE,
    )
    while child.poll() is None:
        reader.counts()
        reader.latest()
        reader.history("child", ["v"], T0, T0 + 10_000, 50)
    assert child.wait() == 0, child.stderr.read().decode() if child.stderr else ""
    assert reader.counts() == {"parent": 1, "child": 10_000}
    latest = reader.latest(["child"])["child"]
    assert (latest.ts, latest.fields) == (T0 + 9_999, {"v": 1.0, "child_only": 499.0})
    assert reader.points("child", T0 + 9_999) == [
        pt("child", T0 + 9_999, 499, v=1.0, child_only=499.0)]
    reader.close()


def test_influx_line_caches_are_bounded_by_bytes(influxdb: InfluxServer) -> None:
    """Issue 15 item 6: the line-protocol caches were bounded by entries only (100,000), and a
    template holds every field name of a message: with long names that was gigabytes. They are
    bounded by their text too."""
    from iotmeter_tui.backend.stores import timeseries_influx

    database = f"ts_{uuid.uuid4().hex[:12]}"
    store = open_timeseries(influx_url(influxdb, database))
    assert isinstance(store, timeseries_influx.InfluxTimeSeries)
    try:
        names = [f"field_{'x' * 110}_{i:05d}" for i in range(64)]
        for i in range(3_000):  # 3,000 distinct 64-name templates of ~8 KiB each: ~47 MiB
            fields = dict.fromkeys(names[:63], 1.0) | {f"f{i}": 2.0}
            store._line(Point(f"dev-{i}", "power_meter_dc", T0 + i, 1, i, fields))
            assert store._cached_chars <= timeseries_influx._CACHE_BYTES + 2 * 9_000
        assert len(store._templates) < 3_000
    finally:
        store.close()
        drop_database(influxdb, database)
