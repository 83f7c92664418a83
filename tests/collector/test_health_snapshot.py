"""The collector's health snapshot: typed values filled from the collector's own counters,
agreeing with its Prometheus metrics, and carried whole across the dashboard's process
boundary (the worker pickles it over a pipe)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from iotmeter_tui.backend.collector.health import CollectorHealth, DispatcherHealth, SinkHealth
from iotmeter_tui.backend.collector.worker import CollectorWorker
from iotmeter_tui.backend.stores import open_stores
from testsupport import MosquittoServer
from testsupport.fleet import Publisher, status, telemetry, wait_for
from testsupport.harness import running_collector, settings_for

SINKS = {"timeseries", "archive", "registry"}  # rollups: off in settings_for() unless asked


def test_health_counts_agree_with_the_metrics(tmp_path: Path,
                                             private_mosquitto: MosquittoServer) -> None:
    settings = settings_for(tmp_path, {})
    sent = [telemetry("dc-0001", 1, s) for s in range(20)]
    # Duplicates of both kinds: a (boot, seq) seen before, and a status message sent again.
    online = status("dc-0001", "online")
    again = [sent[3], sent[7], sent[7], online, online]
    with running_collector(settings, private_mosquitto.url) as collector:
        pub = Publisher(private_mosquitto.url)
        pub.publish(sent + again)
        pub.close()
        health = wait_for(lambda: (h := collector.health()).acked == 25 and h,
                          what="25 messages acknowledged")
        m = collector.metrics
        assert health.received == m.sample("iotmeter_messages_received_total") == 25
        assert health.acked == m.sample("iotmeter_messages_acked_total") == 25
        assert health.duplicates == m.sample("iotmeter_messages_duplicate_total") == 4
        assert health.in_flight == 0
        assert (health.broker_connected, health.broker_error) == (True, None)
        assert not health.starting and not health.spool_full
        assert health.spool_bytes > 0
        assert {s.name for s in health.sinks} == SINKS
        assert isinstance(health.dispatcher, DispatcherHealth)

        def caught_up() -> CollectorHealth | None:
            now = collector.health()
            return now if all(s.up and s.backlog_bytes == 0 for s in now.sinks) else None

        settled = wait_for(caught_up, what="every sink caught up")
        assert settled.dispatcher is not None and settled.dispatcher.error is None
        assert settled.at >= health.at


def test_health_pickles_whole() -> None:
    health = CollectorHealth(
        at=1_795_740_000.5, starting=False, broker_connected=False,
        broker_error="connection refused", received=10, acked=7, duplicates=1,
        spool_bytes=4096, spool_full=True,
        sinks=(SinkHealth("archive", up=False, error="s3: timed out", backlog_bytes=512),
               SinkHealth("registry", up=True, error=None, backlog_bytes=0)),
        dispatcher=DispatcherHealth(passes=3, error=None, broker_connected=True,
                                    firmware_endpoint="http://127.0.0.1:9109"))
    copy = pickle.loads(pickle.dumps(health, protocol=pickle.HIGHEST_PROTOCOL))
    assert copy == health and copy is not health
    assert copy.sinks[0].error == "s3: timed out" and copy.in_flight == 3


def test_worker_ships_typed_health_from_the_child(tmp_path: Path,
                                                  private_mosquitto: MosquittoServer) -> None:
    """The dashboard's own path: a spawned child collector, its snapshots over the pipe."""
    worker = CollectorWorker(settings_for(tmp_path, {}), private_mosquitto.url)
    worker.start()
    try:
        assert worker.wait_ready(60), "the child collector did not connect within 60 s"
        pub = Publisher(private_mosquitto.url)
        pub.publish([telemetry("dc-0002", 1, s) for s in range(5)])
        pub.close()
        health = wait_for(lambda: (h := worker.health()) is not None and h.acked == 5 and h,
                          timeout_s=30, what="the child's snapshot with 5 acknowledged")
        assert isinstance(health, CollectorHealth)
        assert health.broker_connected and not health.starting
        assert all(isinstance(s, SinkHealth) for s in health.sinks)
        assert {s.name for s in health.sinks} == SINKS
        assert isinstance(health.dispatcher, DispatcherHealth)
    finally:
        worker.stop()
    assert worker.health() is None  # no child, no snapshot


def test_rollups_turned_on_add_their_sink_which_drains_at_the_stop(
        tmp_path: Path, private_mosquitto: MosquittoServer) -> None:
    """IOTMETER_ROLLUPS=true (the default; settings_for() turns it off unless asked): the
    collector runs a rollup sink beside the others, and a clean stop drains it, so the
    hour's rollup is there after it."""
    settings = settings_for(tmp_path, {}, rollups="true")
    sent = [telemetry("dc-0001", 1, s) for s in range(20)]
    with running_collector(settings, private_mosquitto.url) as collector:
        assert {s.name for s in collector.health().sinks} == SINKS | {"rollups"}
        pub = Publisher(private_mosquitto.url)
        pub.publish(sent)
        pub.close()
        wait_for(lambda: collector.health().acked == 20, what="20 messages acknowledged")
    first = 1_795_740_000_000 + 10_000_000  # telemetry()'s ts of boot 1, seq 0
    hour = first - first % 3_600_000
    stores = open_stores(settings)
    try:
        # One bucket an hour wide: read from the 1 h rollups, which exist only if the rollup
        # sink took the batch.
        [bucket] = stores.timeseries.history("dc-0001", ["voltage_v"], hour,
                                             hour + 3_600_000, 1)
        assert bucket.values["voltage_v"]["mean"] == pytest.approx(748.2)
    finally:
        stores.close()
