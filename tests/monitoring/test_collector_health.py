"""What the collector exports about its surroundings: the fleet figures read with GROUP BY
queries (on PostgreSQL and SQLite), the broker's $SYS on a side connection (real mosquitto),
and /readyz naming the broker while it is away."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotmeter_tui.backend.collector.broker_sys import (
    BrokerSysCollector,
    BrokerSysMonitor,
    broker_sys_url,
)
from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.collector.monitor import StoreMonitor
from iotmeter_tui.backend.health_server import HealthServer
from iotmeter_tui.backend.stores import open_stores
from iotmeter_tui.backend.stores.factory import open_metadata
from iotmeter_tui.backend.stores.metadata import (
    Campaign,
    Command,
    DeviceUpdate,
    Firmware,
    MetadataStore,
)
from testsupport.harness import running_collector, settings_for
from testsupport.services import MosquittoServer


@pytest.fixture(params=["postgresql", "sqlite"])
def metadata(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    url = (str(request.getfixturevalue("pg_database").url) if request.param == "postgresql"
           else f"sqlite:///{tmp_path}/metadata.db")
    store = open_metadata(url)
    yield store
    store.close()


def test_fleet_figures_count_by_status_severity_and_state(metadata: MetadataStore) -> None:
    empty = metadata.fleet_figures()
    assert empty.devices == {"online": 0, "offline": 0, "unknown": 0}
    assert empty.open_alerts == {} and empty.ota_targets == {} and empty.campaigns == {}
    assert set(empty.commands) >= {"queued", "sent", "done", "timed_out"}
    assert sum(empty.commands.values()) == 0

    updates = [DeviceUpdate(f"dev-{i}", 1000, device_type="power_meter_dc", fw_version="1.0",
                            boot=1, heartbeat_s=10.0) for i in range(5)]
    updates += [DeviceUpdate(f"dev-{i}", 1000, connection_status=state, status_at=1000)
                for i, state in enumerate(["online", "online", "online", "offline"])]
    metadata.apply_collector_batch(updates, [])
    metadata.raise_alert("dev-0", "overvoltage", "critical", 950.0, "high", 2000)
    metadata.raise_alert("dev-1", "overvoltage", "critical", 950.0, "high", 2000)
    cleared, _ = metadata.raise_alert("dev-2", "overtemp", "warning", 90.0, "warm", 2000)
    metadata.clear_alert(cleared.id, 3000)
    metadata.create_command(Command("c1", "dev-0", "reboot", {}, "queued", 1000, 1000, 9000))
    metadata.create_command(Command("c2", "dev-1", "reboot", {}, "queued", 1000, 1000, 9000))
    metadata.update_command("c2", state="timed_out", at=2000)
    metadata.add_firmware(Firmware("2.0.0", 10, "ab" * 32, "_firmware/2.0.0.bin", 1000))
    metadata.create_campaign(Campaign("camp", "2.0.0", "all", 10, 20.0, "running", 1000, 1000),
                             ["dev-0", "dev-1", "dev-2"])

    figures = metadata.fleet_figures()
    assert figures.devices == {"online": 3, "offline": 1, "unknown": 1}
    assert figures.open_alerts == {"critical": 2}  # the cleared one is not open
    assert (figures.commands["queued"], figures.commands["timed_out"]) == (1, 1)
    assert figures.ota_targets == {"pending": 3}
    assert figures.campaigns == {"running": 1}


def test_store_monitor_exports_the_figures_and_marks_a_store_down(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, {})
    stores = open_stores(settings)
    metrics = CollectorMetrics()
    monitor = StoreMonitor(stores, metrics, interval_s=60)
    try:
        stores.metadata.apply_collector_batch([DeviceUpdate(
            "dev-1", 1000, connection_status="offline", status_at=1000)], [])
        monitor.run_once()
        assert metrics.sample("iotmeter_fleet_devices", {"status": "offline"}) == 1
        assert metrics.sample("iotmeter_store_up", {"store": "archive"}) == 1
        assert monitor.down == {}
        archive = Path(settings.archive_url.removeprefix("file://"))
        aside = archive.with_name("archive-aside")
        archive.rename(aside)
        archive.write_text("a file where the archive directory should be")  # even root fails
        try:
            monitor.run_once()
            assert set(monitor.down) == {"archive"}
            assert metrics.sample("iotmeter_store_up", {"store": "archive"}) == 0
            assert metrics.sample("iotmeter_store_up", {"store": "metadata"}) == 1
        finally:
            archive.unlink()
            aside.rename(archive)
        monitor.run_once()
        assert monitor.down == {}
    finally:
        stores.close()


def test_broker_sys_values_arrive_on_a_side_connection(mosquitto: MosquittoServer) -> None:
    metrics = CollectorMetrics()
    monitor = BrokerSysMonitor(mosquitto.url, "sys-test", metrics.broker_sys)
    monitor.start()
    try:
        # mosquitto publishes $SYS every sys_interval (10 s by default), retained.
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            if metrics.registry.get_sample_value("iotmeter_broker_clients_connected"):
                break
            time.sleep(0.2)
        assert metrics.sample("iotmeter_broker_clients_connected") >= 1
        assert metrics.sample("iotmeter_broker_messages_received_total") > 0
        assert metrics.sample("iotmeter_broker_sys_age_seconds") < 30
    finally:
        monitor.stop()


def test_sys_values_are_numbers_or_ignored() -> None:
    from prometheus_client import CollectorRegistry

    sink = BrokerSysCollector(CollectorRegistry())
    sink.update("$SYS/broker/clients/connected", b"7")
    sink.update("$SYS/broker/clients/connected", b"\x1b[31mevil")
    sink.update("$SYS/broker/subscriptions/count", b"nan")
    sink.update("$SYS/broker/unknown/topic", b"5")
    values = {f.name: [s.value for s in f.samples] for f in sink.collect()}
    assert values["iotmeter_broker_clients_connected"] == [7.0]
    assert values["iotmeter_broker_subscriptions"] == []


def readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readyz_names_the_broker_while_it_is_away(private_mosquitto: MosquittoServer,
                                                  tmp_path: Path) -> None:
    settings = settings_for(tmp_path, {}, health_interval_s=0.2)
    with running_collector(settings, private_mosquitto.url) as collector:
        server = HealthServer(collector.metrics.registry, collector.readiness).start()
        try:
            deadline = time.monotonic() + 10
            while readyz(server.port)[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert readyz(server.port) == (200, {"status": "ready"})
            private_mosquitto.stop()
            deadline = time.monotonic() + 15
            while readyz(server.port)[0] != 503 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert readyz(server.port) == (503, {"status": "unavailable", "down": ["broker"]})
            private_mosquitto.start()
            deadline = time.monotonic() + 30
            while readyz(server.port)[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert readyz(server.port)[0] == 200
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz") as r:
                assert json.loads(r.read()) == {"status": "ok"}
        finally:
            server.stop()


def test_a_busy_metrics_port_is_one_clear_line(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
        env["IOTMETER_HOME"] = str(tmp_path)
        result = subprocess.run(
            [sys.executable, "-m", "iotmeter_tui", "--collector-only", "--metrics-port",
             str(port)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == (f"iotmeter: IOTMETER_METRICS_PORT: cannot listen on port {port}: "
                             "Address already in use\n")


def test_dispatch_publishes_are_counted_by_kind(private_mosquitto: MosquittoServer) -> None:
    from iotmeter_tui.backend.collector.monitor import CountingPublisher
    from iotmeter_tui.backend.control.publisher import PublishError, ServerPublisher

    metrics = CollectorMetrics()
    inner = ServerPublisher(private_mosquitto.url, "counting-test")
    assert inner.wait_connected(10)
    publisher = CountingPublisher(inner, metrics)
    try:
        publisher.publish("iot/dev-1/command", b"{}")
        publisher.publish("iot/dev-1/command", b"{}")
        publisher.publish("iot/dev-1/ota", b"{}")
        assert metrics.sample("iotmeter_dispatch_published_total", {"kind": "command"}) == 2
        assert metrics.sample("iotmeter_dispatch_published_total", {"kind": "ota"}) == 1
        private_mosquitto.stop()
        deadline = time.monotonic() + 10
        while publisher.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(PublishError):
            publisher.publish("iot/dev-1/ota", b"{}")
        assert metrics.sample("iotmeter_dispatch_publish_failures_total", {"kind": "ota"}) == 1
    finally:
        inner.close()


def test_broker_metrics_never_share_an_identity_bound_user() -> None:
    # The shipped broker makes the user the client id: a $SYS side connection under the
    # collector's user would take the intake's session (it did, in the shipped-config test).
    plain = "mqtt://127.0.0.1:1883"
    assert broker_sys_url(None, plain, None) == plain
    assert broker_sys_url(None, "mqtt://collector:pw@b:1883", "mqtt://dispatcher:pw@b:1883") is None
    own = "mqtt://monitor:pw@b:1883"
    assert broker_sys_url(own, "mqtt://collector:pw@b:1883", "mqtt://dispatcher:pw@b:1883") == own
