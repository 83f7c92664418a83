"""The chaos suite: the collector's delivery guarantee under the failures
production will meet, on real servers.

Each test runs a fleet publishing telemetry at QoS 1, breaks something while it runs, lets it
recover, and then counts: every (device, boot, seq) the broker acknowledged to the fleet must be
in the time-series store exactly once and in the archive exactly once — nothing lost, nothing
duplicated. What breaks:

- the collector, SIGKILLed five times under 1,000 msg/s, once with a sink far behind;
- the collector, SIGKILLed while InfluxDB is down and the spool holds the backlog;
- InfluxDB, the S3 endpoint and PostgreSQL, each stopped for 30 s;
- the broker, restarted;
- the spool's disk, filled by another writer (a tmpfs of the test's own);
- the spool's bound (IOTMETER_SPOOL_MAX_BYTES), reached while InfluxDB is down, and reached
  within one segment while every store is up.

A full spool must cause back-pressure, not loss: the collector stays up and stops
acknowledging, the broker keeps taking the fleet's messages and holds them, and once there is
room again everything arrives, once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from iotmeter_tui.backend.broker import free_port
from iotmeter_tui.backend.collector.service import Collector, Tuning
from iotmeter_tui.backend.config import Settings
from testsupport import InfluxServer, MosquittoServer, PrivatePostgres, S3Server
from testsupport.disk import DiskFiller, free_bytes, tmpfs
from testsupport.fleet import Publisher, SteadyLoad, telemetry, wait_for
from testsupport.harness import StoreAudit, env_for, running_collector, settings_for

OUTAGE_S = 30.0
DEVICES = [f"dc-{i:04d}" for i in range(10)]
FLEET = [f"dc-{i:04d}" for i in range(20)]  # the heavier load: 1,000 msg/s over 20 meters

Sent = list[tuple[str, int, int]]
T = TypeVar("T")


# --- counting what was stored ----------------------------------------------------------------


def _expected(sent: Sent) -> dict[str, Counter[tuple[int, int]]]:
    expected: dict[str, Counter[tuple[int, int]]] = {}
    for device_id, boot, seq in sent:
        expected.setdefault(device_id, Counter())[(boot, seq)] += 1
    return expected


def _difference(want: Counter[tuple[int, int]], got: Counter[tuple[int, int]]) -> str:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    twice = sorted(k for k, n in got.items() if n > 1)
    return (f"{len(want)} sent, {sum(got.values())} stored: {len(missing)} missing "
            f"{missing[:5]}, {len(twice)} stored more than once {twice[:5]}, "
            f"{len(extra)} never sent {extra[:5]}")


def assert_exactly_once(settings: Settings, sent: Sent, timeout_s: float = 90.0) -> None:
    """Every (device, boot, seq) in `sent` is in the time series and the archive exactly once,
    and nothing else is; waits up to `timeout_s` for the sinks to catch up."""
    assert len(sent) > 100, "the load did not run"
    assert len(set(sent)) == len(sent), "the fleet sent a (device, boot, seq) twice"
    audit = StoreAudit(settings)
    try:
        deadline = time.monotonic() + timeout_s
        for device_id, want in _expected(sent).items():
            for store, read in (("time series", audit.timeseries_keys),
                                ("archive", audit.archive_keys)):
                got: Counter[tuple[int, int]] = Counter()
                while time.monotonic() < deadline:
                    got = read(device_id)
                    if got == want:
                        break
                    time.sleep(0.2)
                if got != want:
                    raise AssertionError(f"{store} of {device_id}: {_difference(want, got)}")
    finally:
        audit.close()


def assert_nothing_stored_twice(settings: Settings, devices: list[str]) -> None:
    audit = StoreAudit(settings)
    try:
        for device_id in devices:
            for store, keys in (("time series", audit.timeseries_keys(device_id)),
                                ("archive", audit.archive_keys(device_id))):
                twice = [k for k, n in keys.items() if n > 1]
                assert not twice, f"{store} of {device_id} holds {twice[:5]} more than once"
    finally:
        audit.close()


# --- watching a metric -----------------------------------------------------------------------


def wait_until_steady(read: Callable[[], T | None], *, steady_s: float = 2.0,
                      timeout_s: float = 60.0, what: str) -> T:
    """Poll `read()` until it has kept one value other than None for `steady_s`; return it."""
    deadline = time.monotonic() + timeout_s
    value, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now != value or now is None:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= steady_s:
            return now
    raise AssertionError(f"{what} still changing after {timeout_s}s (last: {value})")


def assert_holds(seconds: float, check: Callable[[], object], what: str) -> None:
    """`check()` is truthy at every look for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), f"{what} no longer holds"
        time.sleep(0.1)


# --- the collector as a process, for SIGKILL -------------------------------------------------


class CollectorProcess:
    """`iotmeter --collector-only` on the test's settings, read through its /metrics."""

    def __init__(self, settings: Settings, mqtt_url: str) -> None:
        self.env = {**os.environ, **env_for(settings, mqtt_url)}
        self.log_path = settings.home / "collector.log"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "iotmeter_tui", "--collector-only",
                 "--metrics-port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.sample("iotmeter_broker_connected") == 1, timeout_s=60,
                 what="collector process connected to the broker")

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise AssertionError(f"collector exited with {self.process.returncode}:\n{tail}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(10)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class Burst(threading.Thread):
    """`count` messages at once, as fast as the broker takes them, from meters of their own."""

    def __init__(self, url: str, count: int, devices: int = 10) -> None:
        super().__init__(daemon=True, name="burst")
        self.url = url
        self.sent: Sent = [(f"burst-{i % devices:02d}", 1, i // devices) for i in range(count)]
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            publisher = Publisher(self.url, "iotmeter-test-burst")
            publisher.publish([telemetry(*key) for key in self.sent], timeout_s=120)
            publisher.close()
        except BaseException as exc:
            self.error = exc

    def result(self) -> Sent:
        self.join(150)
        if self.error is not None:
            raise self.error
        return self.sent


# --- SIGKILL ---------------------------------------------------------------------------------

KILLS = 5
KILL_SEED = 1042  # the kill moments are random, and the same on every run
BEHIND_KILL = 2  # this kill waits for a burst to put a sink far behind
BEHIND_BYTES = 128 << 10  # acknowledged, in the spool, not yet archived: ~400 messages


def test_repeated_sigkill_under_load_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, private_mosquitto: MosquittoServer, store_env: dict[str, str]
) -> None:
    rng = random.Random(KILL_SEED)
    settings = settings_for(tmp_path, store_env, archive_window_s=1, client_id="kill-test")
    collector = CollectorProcess(settings, private_mosquitto.url)
    collector.start()
    load = SteadyLoad(private_mosquitto.url, FLEET, rate=1000)
    load.start()
    burst: Burst | None = None
    try:
        for kill in range(KILLS):
            time.sleep(rng.uniform(0.0, 2.0))
            if kill == BEHIND_KILL:
                # A burst on top of the load, and the kill while the collector has
                # acknowledged far more than the archive sink has taken: recovery must replay
                # the spool into the sink and drop what the broker sends again.
                burst = Burst(private_mosquitto.url, 10_000)
                burst.start()
                wait_for(lambda: collector.sample("iotmeter_sink_backlog_bytes",
                                                  sink="archive") >= BEHIND_BYTES,
                         timeout_s=30, interval_s=0.02, what="the archive sink behind")
            collector.kill()
            time.sleep(rng.uniform(0.0, 1.0))  # the broker holds what arrives meanwhile
            collector.start()
        time.sleep(1.5)
        assert burst is not None
        sent = load.stop() + burst.result()
        assert_exactly_once(settings, sent)
        # And a clean stop drains and exits 0 within the 10 s a service manager allows.
        started = time.monotonic()
        assert collector.terminate() == 0
        assert time.monotonic() - started < 10
    finally:
        load.stopping.set()
        collector.close()


def test_sigkill_with_influxdb_down_keeps_the_backlog_and_stores_it_once(
    tmp_path: Path, private_mosquitto: MosquittoServer, private_influxdb: InfluxServer
) -> None:
    settings = settings_for(tmp_path, {"IOTMETER_TSDB_URL": private_influxdb.url},
                            archive_window_s=1, client_id="kill-backlog")
    collector = CollectorProcess(settings, private_mosquitto.url)
    collector.start()
    load = SteadyLoad(private_mosquitto.url, DEVICES, rate=500)
    load.start()
    try:
        time.sleep(1.5)
        private_influxdb.stop()

        def backlog_while_down() -> float:
            # Both gauges are set by the sink's first failed write; 0 until then.
            down = collector.sample("iotmeter_sink_up", sink="timeseries") == 0
            backlog = collector.sample("iotmeter_sink_backlog_bytes", sink="timeseries")
            return backlog if down and backlog >= 64 << 10 else 0.0

        for _ in range(2):  # the second kill lands on a collector that replays the backlog
            # The time-series sink fails and falls behind; the spool keeps what it has not
            # taken, and must keep it through SIGKILL.
            backlog = wait_for(backlog_while_down, timeout_s=60,
                               what="the time-series sink down, with a backlog")
            collector.kill()
            collector.start()  # with InfluxDB still down
            wait_for(lambda b=backlog: collector.sample("iotmeter_spool_bytes") >= b,
                     timeout_s=30, what="the backlog still in the spool after SIGKILL")
        private_influxdb.start()
        wait_for(lambda: collector.sample("iotmeter_sink_up", sink="timeseries") == 1,
                 timeout_s=60, what="time-series sink up again")
        time.sleep(1.0)
        sent = load.stop()
        assert_exactly_once(settings, sent)
    finally:
        load.stopping.set()
        collector.close()


# --- stores and broker away ------------------------------------------------------------------


def _outage(settings: Settings, broker: MosquittoServer, server_stop: Callable[[], None],
            server_start: Callable[[], None]) -> None:
    with running_collector(settings, broker.url) as collector:
        load = SteadyLoad(broker.url, DEVICES, rate=200)
        load.start()
        time.sleep(2)
        server_stop()
        time.sleep(OUTAGE_S)
        server_start()
        time.sleep(2)
        sent = load.stop()
        # The sink that failed says so, and recovers on its own.
        wait_for(lambda: all(r.healthy for r in collector.runners), timeout_s=60,
                 what="every sink healthy again")
        assert_exactly_once(settings, sent)
        # Stored means spooled first, and spooled means acknowledged.
        assert collector.metrics.sample("iotmeter_messages_acked_total") >= len(sent)


def test_influxdb_down_for_30s_loses_nothing(
    tmp_path: Path, private_mosquitto: MosquittoServer, private_influxdb: InfluxServer
) -> None:
    settings = settings_for(tmp_path, {"IOTMETER_TSDB_URL": private_influxdb.url})
    _outage(settings, private_mosquitto, private_influxdb.stop, private_influxdb.start)


def test_s3_down_for_30s_loses_nothing(
    tmp_path: Path, private_mosquitto: MosquittoServer, private_s3: S3Server
) -> None:
    settings = settings_for(tmp_path, {
        "IOTMETER_ARCHIVE_URL": "s3://iot-data",
        "IOTMETER_S3_ENDPOINT": private_s3.endpoint,
        "IOTMETER_S3_ACCESS_KEY": private_s3.access_key,
        "IOTMETER_S3_SECRET_KEY": private_s3.secret_key,
    })
    _outage(settings, private_mosquitto, private_s3.stop, private_s3.start)


def test_postgresql_down_for_30s_loses_nothing(
    tmp_path: Path, private_mosquitto: MosquittoServer, private_postgres: PrivatePostgres
) -> None:
    settings = settings_for(tmp_path, {"IOTMETER_DB_URL": private_postgres.url})
    _outage(settings, private_mosquitto, private_postgres.stop, private_postgres.start)


def test_broker_restart_loses_nothing(tmp_path: Path,
                                      private_mosquitto: MosquittoServer) -> None:
    settings = settings_for(tmp_path, {})
    with running_collector(settings, private_mosquitto.url) as collector:
        load = SteadyLoad(private_mosquitto.url, DEVICES, rate=200)
        load.start()
        time.sleep(2)
        private_mosquitto.restart()
        time.sleep(3)
        sent = load.stop()
        wait_for(lambda: collector.intake is not None and collector.intake.connected.is_set(),
                 what="collector reconnected")
        assert_exactly_once(settings, sent)


# --- a full spool ----------------------------------------------------------------------------


def _alive(collector: Collector) -> bool:
    """Every thread of the collector still running: a crash in one would not end the test
    process, so "stays up" is checked thread by thread."""
    threads = [collector.pipeline, *collector.runners]
    return all(t is not None and t.is_alive() for t in threads) and bool(
        collector.intake and collector.intake.connected.is_set())


def _assert_back_pressure(collector: Collector, load: SteadyLoad, *, stuck: str | None = None,
                          hold_s: float = 3.0) -> None:
    """The collector holds its acknowledgements while the broker keeps taking the fleet's
    messages, and nothing crashes.

    With `stuck` (a sink that cannot write), the other sinks first finish what they took in
    before the spool filled: each segment they finish that `stuck` had taken already is
    released and makes room for one more turn, so the hold starts only once they are done."""
    metric = collector.metrics.sample
    # The rollup sink takes only what the time-series sink has stored: stuck with it.
    with_it = {stuck, "rollups"} if stuck == "timeseries" else {stuck}
    others = [r.sink.name for r in collector.runners if r.sink.name not in with_it] \
        if stuck else []

    def state() -> tuple[float, float] | None:
        """(spool_full, acked) once the other sinks have caught up, else None."""
        if any(metric("iotmeter_sink_backlog_bytes", {"sink": name}) for name in others):
            return None
        return metric("iotmeter_spool_full"), metric("iotmeter_messages_acked_total")

    wait_for(lambda: metric("iotmeter_spool_full") == 1, timeout_s=60, what="spool_full = 1")
    # Turns that had room before the spool filled up may still complete, and segments the
    # others finish are released by the next housekeeping (each second) and filled by the
    # next retry (each second): steady for longer than both, then nothing more.
    full, held = wait_until_steady(state, steady_s=3.0, what="acknowledgements")
    assert full == 1, "the spool made room for good while a sink could not write"
    taken_by_broker = len(load.sent)
    assert_holds(hold_s, lambda: metric("iotmeter_spool_full") == 1
                 and metric("iotmeter_messages_acked_total") == held and _alive(collector),
                 "spool full, acknowledgements held, collector up")
    assert len(load.sent) > taken_by_broker + 100, "the broker stopped taking the fleet's load"


def test_full_spool_disk_is_back_pressure_not_loss(
    tmp_path: Path, private_mosquitto: MosquittoServer
) -> None:
    settings = settings_for(tmp_path, {})
    # The tmpfs sits exactly on the spool directory; the embedded stores and the archive stay
    # on the real disk, so only the spool runs out of room.
    with tmpfs(settings.spool_dir, "8m"), \
            running_collector(settings, private_mosquitto.url) as collector:
        load = SteadyLoad(private_mosquitto.url, FLEET, rate=500)
        load.start()
        try:
            time.sleep(2)
            assert collector.metrics.sample("iotmeter_spool_full") == 0
            # Another writer fills the disk and keeps it full. (Kept full: the collector frees
            # space itself as its sinks finish segments, and would rightly carry on in it.)
            with DiskFiller(settings.spool_dir / "filler"):
                wait_for(lambda: free_bytes(settings.spool_dir) == 0, timeout_s=5,
                         what="not a byte free on the spool's disk")
                _assert_back_pressure(collector, load)
                assert_nothing_stored_twice(settings, FLEET)
            # The filler deleted: the collector takes what the broker held, by itself.
            wait_for(lambda: collector.metrics.sample("iotmeter_spool_full") == 0,
                     timeout_s=30, what="spool_full back to 0")
            time.sleep(1.0)
            sent = load.stop()
        finally:
            load.stopping.set()
        assert_exactly_once(settings, sent)
        assert _alive(collector)
        assert collector.metrics.sample("iotmeter_messages_acked_total") >= len(sent)


SPOOL_BOUND = 4 << 20  # about 13,000 messages


def test_spool_bound_with_influxdb_down_is_back_pressure_not_loss(
    tmp_path: Path, private_mosquitto: MosquittoServer, private_influxdb: InfluxServer
) -> None:
    settings = settings_for(tmp_path, {"IOTMETER_TSDB_URL": private_influxdb.url},
                            spool_max_bytes=SPOOL_BOUND)
    # Segments seal four times a second, so the bound is reached with sealed segments that
    # the time-series sink has not taken, and the catch-up afterwards never fills the bound
    # within one segment (the next test's case).
    tuning = Tuning(segment_max_age_s=0.25, sink_max_backoff_s=1.0)
    with running_collector(settings, private_mosquitto.url, tuning) as collector:
        assert collector.spool is not None
        spool = collector.spool
        load = SteadyLoad(private_mosquitto.url, FLEET, rate=1000)
        load.start()
        burst = Burst(private_mosquitto.url, 15_000)
        try:
            time.sleep(2)
            assert collector.metrics.sample("iotmeter_spool_full") == 0
            # The time-series sink cannot take anything, so no segment can be released and
            # the spool grows to its bound; a burst gets it there in seconds.
            private_influxdb.stop()
            burst.start()
            _assert_back_pressure(collector, load, stuck="timeseries")
            assert spool.size_bytes <= SPOOL_BOUND
            private_influxdb.start()
            wait_for(lambda: collector.metrics.sample("iotmeter_spool_full") == 0,
                     timeout_s=60, what="spool_full back to 0")
            time.sleep(1.0)
            sent = load.stop() + burst.result()
        finally:
            load.stopping.set()
        assert_exactly_once(settings, sent)
        assert _alive(collector)


def test_spool_bound_reached_within_one_segment_is_back_pressure_that_ends(
    tmp_path: Path, private_mosquitto: MosquittoServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every store up, and the fleet fills the bound before the active segment is due to
    seal (by the archive window, as in production). The collector may hold acknowledgements
    only until it has made room: the time series has the data, the archive waits for the
    segment to be sealed, and then the segment can go."""
    # 1 MiB is about three seconds of the fleet; the segment would seal after ten.
    settings = settings_for(tmp_path, {}, spool_max_bytes=1 << 20, archive_window_s=10)
    tuning = Tuning(sink_max_backoff_s=1.0)  # segments seal by the archive window
    with running_collector(settings, private_mosquitto.url, tuning) as collector:
        metric = collector.metrics.sample
        load = SteadyLoad(private_mosquitto.url, FLEET, rate=1000)
        load.start()
        try:
            # The log, not the gauge: a collector that makes room at once is full only for
            # a moment.
            wait_for(lambda: any(getattr(r, "event", None) == "spool_full"
                                 for r in caplog.records),
                     timeout_s=30, what="the bound reached within one segment")
            # Messages the broker took after the spool filled up: acknowledging them means
            # the collector made room.
            full_at = len(load.sent)
            wait_for(lambda: len(load.sent) >= full_at + 500, timeout_s=30,
                     what="the broker taking the fleet's messages")
            taken = len(load.sent)
            wait_for(lambda: metric("iotmeter_messages_acked_total") >= taken, timeout_s=20,
                     what=f"the collector acknowledging again, all stores up: the broker took "
                          f"{taken} messages")
            sent = load.stop()
        finally:
            load.stopping.set()
        assert_exactly_once(settings, sent)
        assert _alive(collector)
