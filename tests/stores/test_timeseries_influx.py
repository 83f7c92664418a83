"""InfluxDB adapter specifics: database creation, the wire format, retries and back-off,
outages, partial writes. Real influxd where the behaviour is the server's; a scripted HTTP
server where the test needs an answer influxd 1.6 will not give (429, 503, 3.x errors)."""

from __future__ import annotations

import gzip
import http.client
import json
import re
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotmeter_tui.backend.errors import PartialWriteError, StoreRejected, StoreUnavailable
from iotmeter_tui.backend.stores.rollup_fold import RollupBatch
from iotmeter_tui.backend.stores.timeseries import Point
from iotmeter_tui.backend.stores.timeseries_influx import InfluxTimeSeries
from testsupport import InfluxServer

T0 = 1_795_740_001_250
TOKEN = "s3cr3t-token-value"


def pt(device_id: str, ts: int, seq: int = 1, **fields: float) -> Point:
    return Point(device_id, "power_meter_dc", ts, 7, seq, fields)


def raw_query(server: InfluxServer, q: str, database: str | None = None) -> Any:
    params = {"q": q, **({"db": database} if database else {})}
    body = urllib.parse.urlencode(params).encode()
    with urllib.request.urlopen(f"{server.http_url}/query", body, timeout=10) as response:
        return json.loads(response.read())


def databases(server: InfluxServer) -> set[str]:
    result = raw_query(server, "SHOW DATABASES")["results"][0]
    return {row[0] for series in result.get("series", []) for row in series.get("values", [])}


@pytest.fixture
def database(influxdb: InfluxServer) -> Iterator[str]:
    name = f"ts_{uuid.uuid4().hex[:12]}"
    yield name
    raw_query(influxdb, f'DROP DATABASE "{name}"')


def real_store(server: InfluxServer, database: str) -> InfluxTimeSeries:
    return InfluxTimeSeries(f"influxdb://{server.host}:{server.port}/{database}")


# --- against a real influxd -------------------------------------------------------------------


def test_the_database_is_created_on_first_use(influxdb: InfluxServer, database: str) -> None:
    store = real_store(influxdb, database)
    assert database not in databases(influxdb)
    store.write([pt("dev", T0, voltage_v=750.0)])
    assert database in databases(influxdb)
    store.close()


def test_a_first_query_creates_the_database_too(influxdb: InfluxServer, database: str) -> None:
    store = real_store(influxdb, database)
    assert store.latest() == {}
    assert database in databases(influxdb)
    store.close()


def test_values_are_stored_as_float_fields_and_boot_seq_as_integers(
    influxdb: InfluxServer, database: str
) -> None:
    store = real_store(influxdb, database)
    store.write([pt("dev", T0, 12, voltage_v=750)])
    answer = raw_query(influxdb, "SHOW FIELD KEYS FROM iot_telemetry", database)
    series = answer["results"][0]["series"][0]
    assert dict(map(tuple, series["values"])) == {
        "boot": "integer", "seq": "integer", "voltage_v": "float"}
    store.close()


def test_an_outage_raises_store_unavailable_then_the_same_store_recovers(
    private_influxdb: InfluxServer,
) -> None:
    store = InfluxTimeSeries(private_influxdb.url, TOKEN, retries=2, backoff_s=0.05, timeout=2)
    store.write([pt("dev", T0, 1, voltage_v=1.0)])
    private_influxdb.stop()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        store.write([pt("dev", T0 + 1000, 2, voltage_v=2.0)])
    assert time.monotonic() - started < 5
    assert str(caught.value).startswith("influxdb: cannot reach")
    assert "after 3 attempts" in str(caught.value)
    assert TOKEN not in str(caught.value)
    with pytest.raises(StoreUnavailable):
        store.latest()
    private_influxdb.start()
    store.write([pt("dev", T0 + 1000, 2, voltage_v=2.0)])
    assert store.counts() == {"dev": 2}
    store.close()


def test_a_field_type_conflict_is_a_partial_write_naming_the_points(
    influxdb: InfluxServer, database: str
) -> None:
    store = real_store(influxdb, database)
    store.check()  # creates the database
    line = f'iot_telemetry,device_id=old,device_type=x voltage_v="text",boot=1i,seq=1i {T0}'
    urllib.request.urlopen(
        f"{influxdb.http_url}/write?db={database}&precision=ms", line.encode(), timeout=10
    ).close()
    conflicting = [pt("a", T0 + 1, voltage_v=750.0), pt("b", T0 + 2, voltage_v=751.0)]
    fine = pt("c", T0 + 3, current_a=5.0)
    with pytest.raises(PartialWriteError) as caught:
        store.write([conflicting[0], fine, conflicting[1]])
    assert caught.value.failed == conflicting
    assert caught.value.accepted == 1
    assert "field type conflict" in str(caught.value)
    assert store.counts() == {"old": 1, "c": 1}
    store.close()


def test_points_leave_out_rows_without_boot_and_seq(influxdb: InfluxServer,
                                                    database: str) -> None:
    """Such a row is another writer's, or a point caught half-written (InfluxDB 1.x adds a
    point to its cache field by field): an audit reading at that moment must not crash."""
    store = real_store(influxdb, database)
    store.write([pt("dev", T0, 1, voltage_v=750.0)])
    line = f"iot_telemetry,device_id=dev,device_type=x voltage_v=1.0 {T0 + 1}"
    urllib.request.urlopen(
        f"{influxdb.http_url}/write?db={database}&precision=ms", line.encode(), timeout=10
    ).close()
    assert [(p.ts, p.seq) for p in store.points("dev")] == [(T0, 1)]
    store.close()


# --- against a scripted server ------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client: tuple[str, int]


@dataclass
class ScriptedInflux:
    """An HTTP/1.1 keep-alive server answering with `answer(request)`; records requests."""

    answer: Callable[[Seen], tuple[int, dict[str, str], bytes]]
    seen: list[Seen] = field(default_factory=list)
    close_after_each: bool = False

    def __post_init__(self) -> None:
        script = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                request = Seen(self.command, self.path, dict(self.headers.items()),
                               self.rfile.read(length), self.client_address)
                script.seen.append(request)
                status, headers, body = script.answer(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                # Hang up without saying so, as a server dropping an idle connection does.
                self.close_connection = script.close_after_each

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, database: str = "iot-metrics") -> str:
        return f"influxdb://127.0.0.1:{self.server.server_address[1]}/{database}"

    def writes(self) -> list[Seen]:
        """Writes of raw points; rollup writes (to a retention policy, `rp=`) are
        test_timeseries_rollups.py's subject."""
        return [s for s in self.seen if s.path.startswith("/write") and "rp=" not in s.path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ok(request: Seen) -> tuple[int, dict[str, str], bytes]:
    if request.path.startswith("/write"):
        return 204, {}, b""
    return 200, {"Content-Type": "application/json"}, b'{"results":[{"statement_id":0}]}\n'


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedInflux]]:
    servers: list[ScriptedInflux] = []

    def start(answer: Callable[[Seen], tuple[int, dict[str, str], bytes]] = ok,
              close_after_each: bool = False) -> ScriptedInflux:
        servers.append(ScriptedInflux(answer, close_after_each=close_after_each))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def stored(device_id: str, ts: int, **fields: float) -> Callable[[Seen], tuple[
        int, dict[str, str], bytes]]:
    """Answer as a server holding one point: a rollup's aggregate (of raw points, or of 1 min
    rows for the hour) finds it in its bucket, a SELECT of 1 min rows finds that point's
    minute; everything else ok."""
    def answer(request: Seen) -> tuple[int, dict[str, str], bytes]:
        if request.path != "/query":
            return ok(request)
        query = urllib.parse.parse_qs(request.body.decode()).get("q", [""])[0]
        if not query.startswith("SELECT"):
            return ok(request)
        width = re.search(r"GROUP BY time\((\d+)ms\)", query)
        if width:  # a bucket aggregated from the level below
            from_minutes = '"iot_telemetry_1m"' in query  # an hour also takes max(lt)
            row = [v for value in fields.values()
                   for v in (value, value, value, 1, value, *([ts] if from_minutes else []))]
            series = {"name": "x", "tags": {"device_id": device_id},
                      "columns": ["time", *(f"c{i}" for i in range(len(row)))],
                      "values": [[ts - ts % int(width.group(1)), *row]]}
            body = json.dumps({"results": [{"statement_id": 0, "series": [series]}]})
            return 200, {"Content-Type": "application/json"}, body.encode() + b"\n"
        if '"iot_telemetry_1m"' in query:
            columns = [f"{name}_{part}" for name in fields
                       for part in ("min", "max", "sum", "count", "last", "lt")]
            row = [v for value in fields.values() for v in (value, value, value, 1, value, ts)]
            at = ts - ts % 60_000
        else:
            columns, row, at = list(fields), list(fields.values()), ts
        series = {"name": "x", "columns": ["time", *columns, "device_id"],
                  "values": [[at, *row, device_id]]}
        body = json.dumps({"results": [{"statement_id": 0, "series": [series]}]})
        return 200, {"Content-Type": "application/json"}, body.encode() + b"\n"

    return answer


def on_write(*answers: tuple[int, dict[str, str], bytes]) -> Callable[[Seen], tuple[
        int, dict[str, str], bytes]]:
    """Answer raw writes from `answers` in turn (the last one repeats), everything else ok."""
    remaining = list(answers)

    def answer(request: Seen) -> tuple[int, dict[str, str], bytes]:
        if not request.path.startswith("/write") or "rp=" in request.path:
            return ok(request)
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return answer


@pytest.mark.parametrize("rollups", [False, True])
def test_the_wire_format(scripted: Callable[..., ScriptedInflux], rollups: bool) -> None:
    server = scripted(stored("dev 1,x=y", T0, **{"a b,c=d": -1.5, "tiny": 1e-5,
                                                  "voltage_v": 750.0}))
    store = InfluxTimeSeries(server.url(), TOKEN, rollups=rollups)
    point = Point("dev 1,x=y", "power_meter_dc", T0, 7, 12,
                  {"voltage_v": 750, "a b,c=d": -1.5, "tiny": 1e-5})
    store.write([point])
    # The write is the raw line protocol alone, with rollups on or off: rollups are off the
    # write path. roll_up() (the collector's rollup sink) then writes the 1 min and 1 h
    # rollups, in their retention policies (test_timeseries_rollups.py).
    assert [s for s in server.seen if "rp=" in s.path] == []
    store.roll_up(RollupBatch.of([point]))
    create = server.seen[0]
    assert urllib.parse.parse_qs(create.body.decode()) == {"q": ['CREATE DATABASE "iot-metrics"']}
    [write] = server.writes()
    rollup_writes = [s for s in server.seen if "rp=" in s.path]
    statements = [urllib.parse.parse_qs(s.body.decode())["q"][0]
                  for s in server.seen if s.path == "/query"]
    if rollups:
        minute, hour = rollup_writes
        assert minute.path == "/write?db=iot-metrics&precision=ms&rp=rollup_1m"
        assert hour.path == "/write?db=iot-metrics&precision=ms&rp=rollup_1h"
        assert any(q.startswith("CREATE RETENTION POLICY") for q in statements)
    else:
        # Rollups off: roll_up() does nothing, no rollup policy; only the database and its
        # retention are prepared.
        assert rollup_writes == []
        assert not any(q.startswith(("SELECT", "CREATE RETENTION")) for q in statements)
    assert write.path == "/write?db=iot-metrics&precision=ms"
    assert write.headers["Content-Encoding"] == "gzip"
    assert write.headers["Authorization"] == f"Token {TOKEN}"
    assert gzip.decompress(write.body).decode() == (
        r"iot_telemetry,device_id=dev\ 1\,x\=y,device_type=power_meter_dc "
        rf"voltage_v=750.0,a\ b\,c\=d=-1.5,tiny=1e-05,boot=7i,seq=12i {T0}"
    )


def test_history_selects_only_the_requested_aggregates(
    scripted: Callable[..., ScriptedInflux],
) -> None:
    """Each aggregate call is a pass over the range on the server: none is sent unasked."""
    server = scripted()
    store = InfluxTimeSeries(server.url())
    store.history("dev", ["voltage_v", "current_a"], T0, T0 + 10_000, 10,
                  aggregates=("max", "mean", "max"))
    [query] = [s for s in server.seen if s.path == "/query" and b"SELECT" in s.body]
    statement = urllib.parse.parse_qs(query.body.decode())["q"][0]
    assert statement.startswith(
        'SELECT mean("voltage_v") AS "mean0", max("voltage_v") AS "max0", '
        'mean("current_a") AS "mean1", max("current_a") AS "max1" FROM "iot_telemetry" '
    )
    assert "min(" not in statement and "last(" not in statement
    store.close()


def test_a_user_password_token_goes_as_basic_auth(
    scripted: Callable[..., ScriptedInflux],
) -> None:
    server = scripted()
    InfluxTimeSeries(server.url(), "admin:pa:ss").write([pt("d", T0, v=1.0)])
    assert {s.headers["Authorization"] for s in server.seen} == {"Basic YWRtaW46cGE6c3M="}


def test_one_keep_alive_connection_per_thread(scripted: Callable[..., ScriptedInflux]) -> None:
    server = scripted()
    store = InfluxTimeSeries(server.url())

    def write_five() -> None:
        for i in range(5):
            store.write([pt("d", T0 + i, v=1.0)])

    threads = [threading.Thread(target=write_five) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    write_five()
    assert len(server.writes()) == 20
    assert len({s.client for s in server.seen}) == 4
    store.close()


def test_a_connection_the_server_dropped_is_replaced_without_a_retry(
    scripted: Callable[..., ScriptedInflux],
) -> None:
    server = scripted(close_after_each=True)
    store = InfluxTimeSeries(server.url(), retries=0)
    for i in range(3):
        store.write([pt("d", T0 + i, v=1.0)])
    assert len(server.writes()) == 3


def test_5xx_is_retried_honouring_retry_after(scripted: Callable[..., ScriptedInflux]) -> None:
    server = scripted(on_write(
        (503, {"Retry-After": "0.2"}, b'{"error":"busy"}'),
        (500, {}, b'{"error":"engine hiccup"}'),
        (204, {}, b""),
    ))
    store = InfluxTimeSeries(server.url(), retries=3, backoff_s=0.01)
    started = time.monotonic()
    store.write([pt("d", T0, v=1.0)])
    assert len(server.writes()) == 3
    assert time.monotonic() - started >= 0.2


def test_retries_are_bounded(scripted: Callable[..., ScriptedInflux]) -> None:
    server = scripted(on_write((503, {}, b'{"error":"overloaded"}')))
    store = InfluxTimeSeries(server.url(), TOKEN, retries=2, backoff_s=0.01)
    with pytest.raises(StoreUnavailable) as caught:
        store.write([pt("d", T0, v=1.0)])
    assert len(server.writes()) == 3
    assert "answered 503: overloaded (after 3 attempts)" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_a_long_retry_after_is_handed_to_the_caller(
    scripted: Callable[..., ScriptedInflux],
) -> None:
    server = scripted(on_write((429, {"Retry-After": "120"}, b'{"error":"rate limited"}')))
    store = InfluxTimeSeries(server.url(), retries=5, backoff_s=0.01, max_backoff_s=1.0)
    with pytest.raises(StoreUnavailable) as caught:
        store.write([pt("d", T0, v=1.0)])
    assert caught.value.retry_after == 120
    assert len(server.writes()) == 1


@pytest.mark.parametrize("status", [401, 403, 413, 422])
def test_other_4xx_is_rejected_at_once(
    scripted: Callable[..., ScriptedInflux], status: int
) -> None:
    server = scripted(on_write((status, {}, b'{"error":"authorization failed"}')))
    store = InfluxTimeSeries(server.url(), TOKEN, retries=3)
    with pytest.raises(StoreRejected) as caught:
        store.write([pt("d", T0, v=1.0)])
    assert not isinstance(caught.value, PartialWriteError)
    assert len(server.writes()) == 1
    assert "authorization failed" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_a_rollup_write_that_keeps_failing_fails_the_batch(
    scripted: Callable[..., ScriptedInflux],
) -> None:
    """roll_up() raises, so the rollup sink keeps the batch and rolls it up again
    (test_timeseries_rollups.py shows rolling up again repairs the rollups)."""
    holding = stored("d", T0, v=1.0)

    def answer(request: Seen) -> tuple[int, dict[str, str], bytes]:
        if "rp=rollup_1m" in request.path:
            return 503, {}, b'{"error":"overloaded"}'
        return holding(request)

    server = scripted(answer)
    store = InfluxTimeSeries(server.url(), retries=1, backoff_s=0.01, rollups=True)
    store.write([pt("d", T0, v=1.0)])  # the raw write does not wait for rollups
    with pytest.raises(StoreUnavailable, match="overloaded"):
        store.roll_up(RollupBatch.of([pt("d", T0, v=1.0)]))
    assert len(server.writes()) == 1
    assert len([s for s in server.seen if "rp=rollup_1m" in s.path]) == 2


def forwarded(server: InfluxServer, request: Seen) -> tuple[int, dict[str, str], bytes]:
    """The request as the real influxd answers it."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "content-encoding", "accept")}
        connection.request(request.method, request.path, request.body, headers)
        reply = connection.getresponse()
        return reply.status, {"Content-Type": reply.getheader("Content-Type") or ""}, \
            reply.read()
    finally:
        connection.close()


def test_a_sole_writers_batch_whose_hour_write_failed_is_exact_once_retried(
        scripted: Callable[..., ScriptedInflux], influxdb: InfluxServer) -> None:
    """One collector folding rollups (roll_up(sole_writer=True)) into a real influxd behind a
    proxy that refuses the 1 h write once: the minute rows were written and the hour rows
    folded in memory, not stored. The sink's retry of the same batch leaves every bucket as
    the raw points say, nothing counted twice."""
    refuse = threading.Event()

    def answer(request: Seen) -> tuple[int, dict[str, str], bytes]:
        if refuse.is_set() and "rp=rollup_1h" in request.path:
            refuse.clear()
            return 503, {}, b'{"error":"overloaded"}'
        return forwarded(influxdb, request)

    proxy = scripted(answer)
    database = f"sole_{uuid.uuid4().hex[:12]}"
    store = InfluxTimeSeries(proxy.url(database), retries=0, rollups=True)
    now = int(time.time() * 1000)
    start = now - now % 60_000  # live data: the rows stay in memory between batches
    points = [pt("d", start + i * 1_000, i, v=float(i % 7)) for i in range(90)]
    try:
        for batch in (points[:40], points[40:]):
            store.write(batch)
            if batch[0].seq == 40:
                refuse.set()
                with pytest.raises(StoreUnavailable, match="overloaded"):
                    store.roll_up(RollupBatch.of(batch), sole_writer=True)
            store.roll_up(RollupBatch.of(batch), sole_writer=True)
        hour = start - start % 3_600_000
        for buckets in (2, 120):  # 1 h buckets, then 1 min
            width = 2 * 3_600_000 // buckets
            for bucket in store.history("d", ["v"], hour, hour + 2 * 3_600_000, buckets):
                values = [p.fields["v"] for p in points
                          if bucket.ts <= p.ts < bucket.ts + width]
                got = bucket.values["v"]
                assert (got["min"], got["max"], got["last"]) == (
                    min(values), max(values), values[-1])
                assert got["mean"] == pytest.approx(sum(values) / len(values))
    finally:
        store.close()
        forwarded(influxdb, Seen("POST", "/query", {}, urllib.parse.urlencode(
            {"q": f'DROP DATABASE "{database}"'}).encode(), ("", 0)))


def test_refusal_to_create_the_database_is_ignored(
    scripted: Callable[..., ScriptedInflux],
) -> None:
    def answer(request: Seen) -> tuple[int, dict[str, str], bytes]:
        if b"CREATE+DATABASE" in request.body:
            return 403, {}, b'{"error":"insufficient permissions"}'
        return ok(request)

    server = scripted(answer)
    InfluxTimeSeries(server.url()).write([pt("d", T0, v=1.0)])
    assert len(server.writes()) == 1


def test_unparsed_lines_quoted_by_1x_are_the_failed_points(
    scripted: Callable[..., ScriptedInflux],
) -> None:
    line = rf"iot_telemetry,device_id=b,device_type=power_meter_dc v=2.0,boot=7i,seq=1i {T0}"
    body = json.dumps({"error": f"partial write: unable to parse '{line}': bad dropped=0"})
    server = scripted(on_write((400, {}, body.encode())))
    points = [pt("a", T0, v=1.0), pt("b", T0, v=2.0), pt("c", T0, v=3.0)]
    with pytest.raises(PartialWriteError) as caught:
        InfluxTimeSeries(server.url()).write(points)
    assert caught.value.failed == [points[1]]
    assert caught.value.accepted == 2


def test_3x_partial_write_line_numbers_name_the_failed_points(
    scripted: Callable[..., ScriptedInflux],
) -> None:
    body = json.dumps({"error": "partial write of line protocol occurred", "data": [
        {"original_line": "...", "line_number": 3, "error_message": "invalid column type"}]})
    server = scripted(on_write((400, {}, body.encode())))
    points = [pt("a", T0, v=1.0), pt("b", T0, v=2.0), pt("c", T0, v=3.0)]
    with pytest.raises(PartialWriteError) as caught:
        InfluxTimeSeries(server.url()).write(points)
    assert caught.value.failed == [points[2]]
    assert caught.value.accepted == 2


def test_an_unexplained_partial_write_fails_the_whole_chunk(
    scripted: Callable[..., ScriptedInflux],
) -> None:
    body = b'{"error":"partial write: max-values-per-tag limit exceeded dropped=1"}'
    server = scripted(on_write((400, {}, body)))
    points = [pt("a", T0, v=1.0), pt("b", T0, v=2.0)]
    with pytest.raises(PartialWriteError) as caught:
        InfluxTimeSeries(server.url()).write(points)
    assert caught.value.failed == points  # a superset is safe: a rewrite is harmless
    assert caught.value.accepted == 1


def test_a_malformed_url_or_database_name_is_refused() -> None:
    with pytest.raises(ValueError):
        InfluxTimeSeries("http://127.0.0.1:8086/db")
    with pytest.raises(ValueError):
        InfluxTimeSeries('influxdb://127.0.0.1:8086/bad"name')


# --- line building -----------------------------------------------------------------------------

_plain_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:/%+-]{0,20}", fullmatch=True)
_values = (st.floats(allow_nan=False, allow_infinity=False)
           | st.integers(-(2**63), 2**64 - 1) | st.integers())


def _field_values(line: str) -> tuple[str, dict[str, float], str]:
    """(head, each field read back as line protocol reads it, the rest)."""
    head, fields, ts = line.rsplit(" ", 2)
    values = {}
    for item in fields.split(","):
        name, _, text = item.rpartition("=")
        values[name] = int(text[:-1]) if text.endswith("i") else float(text)
    return head, values, ts


@settings(max_examples=300)
@given(fields=st.dictionaries(_plain_names, _values, min_size=1, max_size=12))
def test_a_line_copied_from_the_fields_json_stores_what_per_field_formatting_did(
        fields: dict[str, float]) -> None:
    """Plain field names take the fast way (the fields' JSON text); every value must read
    back as the same float the per-field format (%r of float(value)) wrote, boot and seq as
    integers."""
    fast, slow = InfluxTimeSeries("influxdb://127.0.0.1:1/db"), InfluxTimeSeries(
        "influxdb://127.0.0.1:1/db")
    point = Point("dc-0001", "power_meter_dc", T0, 7, 12, fields)
    slow._templates[tuple(fields)] = slow._template(tuple(fields), plain=False)
    fast_line, slow_line = fast._line(point), slow._line(point)
    assert _field_values(fast_line) == _field_values(slow_line)
    assert "boot=7i,seq=12i" in fast_line
