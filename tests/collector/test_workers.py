"""`iotmeter --collector-only --workers N` on a private mosquitto: the workers split the load on
one shared subscription, and every message is stored exactly once in every store (time
series, archive, registry) through SIGTERM, a SIGKILLed worker and changes of N."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from iotmeter_tui.backend.broker import free_port
from iotmeter_tui.backend.collector.workers import (
    RETIRED_MARK,
    resolve_workers,
    retired_workers,
    spool_of,
    worker_settings,
)
from iotmeter_tui.backend.config import Settings
from testsupport import MosquittoServer
from testsupport.fleet import SteadyLoad, wait_for
from testsupport.harness import StoreAudit, env_for, settings_for

DEVICES = [f"dc-{i:04d}" for i in range(20)]
Sent = list[tuple[str, int, int]]


class Command:
    """`iotmeter --collector-only --workers N`, read through the parent's /metrics."""

    def __init__(self, settings: Settings, mqtt_url: str, workers: int) -> None:
        self.env = {**os.environ, **env_for(settings, mqtt_url)}
        self.log_path = settings.home.parent / f"collector-{workers}.log"
        self.port = free_port()
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Command:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "iotmeter_tui", "--collector-only", "--workers",
                 str(self.workers), "--metrics-port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.ready, timeout_s=90, what=f"{self.workers} worker(s) ready")
        return self

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"exited {self.process.returncode}:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5):
                return True
        except OSError:
            return False

    def received(self) -> Counter[str]:
        """Messages taken from the broker, per worker label ('' with one worker)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        counts: Counter[str] = Counter()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "iotmeter_messages_received_total":
                    counts[sample.labels.get("worker", "")] += int(sample.value)
        return counts

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> dict[int, int]:
        """The latest pid of each worker, from the parent's worker_started log lines."""
        pids = {}
        for line in self.log().splitlines():
            if '"worker_started"' in line:
                record = json.loads(line)
                pids[record["worker"]] = record["pid"]
        return pids

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def assert_exactly_once(settings: Settings, sent: Sent, timeout_s: float = 90.0) -> None:
    """Every (device, boot, seq) sent is once in the time series and the archive, and the
    registry's sequence accounting (over all workers' rows) counts each once."""
    assert len(sent) > 100, "the load did not run"
    want: dict[str, Counter[tuple[int, int]]] = {}
    for device_id, boot, seq in sent:
        want.setdefault(device_id, Counter())[(boot, seq)] += 1
    audit = StoreAudit(settings)
    try:
        for device_id, keys in want.items():
            for store, read in (("time series", audit.timeseries_keys),
                                ("archive", audit.archive_keys)):
                got: list[Counter[tuple[int, int]]] = [Counter()]

                def same(read=read, got=got, keys=keys, device_id=device_id) -> bool:
                    got[0] = read(device_id)
                    return got[0] == keys

                try:
                    wait_for(same, timeout_s=timeout_s, what=f"{store} of {device_id}")
                except (AssertionError, TimeoutError):
                    missing = sorted(set(keys) - set(got[0]))
                    twice = sorted(k for k, n in got[0].items() if n > 1)
                    raise AssertionError(f"{store} of {device_id}: {len(keys)} sent, "
                                         f"{len(missing)} missing {missing[:5]}, "
                                         f"{len(twice)} twice {twice[:5]}") from None

            def registry_counts(device_id: str = device_id, n: int = len(keys)) -> bool:
                states = audit.stores.metadata.load_seq_states([device_id])
                return sum(s.received for s in states) == n

            wait_for(registry_counts, timeout_s=timeout_s,
                     what=f"registry's count of {device_id}")
            assert audit.stores.metadata.get_device(device_id) is not None
    finally:
        audit.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path / "home", {}, archive_window_s=1)


def test_workers_default_to_one_per_cpu() -> None:
    assert [resolve_workers(0, cpus) for cpus in (1, 2, 3, 8, 64)] == [1, 2, 3, 8, 8]
    assert resolve_workers(3, 2) == 3


def test_each_worker_has_its_own_identity_and_one_shared_subscription(
        settings: Settings) -> None:
    one = worker_settings(settings, 0, 1)
    first, second = worker_settings(settings, 0, 2), worker_settings(settings, 1, 2)
    assert one.client_id == first.client_id == settings.client_id
    assert one.share_group is None
    assert second.client_id == f"{settings.client_id}-w2"
    assert first.share_group == second.share_group is not None
    assert spool_of(first) != spool_of(second)


def test_two_workers_store_every_message_once_and_sigterm_drains_both(
        settings: Settings, private_mosquitto: MosquittoServer) -> None:
    command = Command(settings, private_mosquitto.url, 2).start()
    try:
        load = SteadyLoad(private_mosquitto.url, DEVICES, rate=400.0)
        load.start()
        wait_for(lambda: min(command.received().get(w, 0) for w in ("1", "2")) > 200,
                 timeout_s=60, what="both workers taking messages")
        sent = load.stop()
        assert_exactly_once(settings, sent)
        assert command.terminate() == 0
        log = command.log()
        assert log.count('"collector_stopped"') == 2, log[-3000:]
    finally:
        command.close()
    assert_exactly_once(settings, sent, timeout_s=5)


def test_a_sigkilled_worker_is_restarted_and_nothing_is_lost_or_duplicated(
        settings: Settings, private_mosquitto: MosquittoServer) -> None:
    command = Command(settings, private_mosquitto.url, 2).start()
    try:
        load = SteadyLoad(private_mosquitto.url, DEVICES, rate=400.0)
        load.start()
        wait_for(lambda: command.received().get("2", 0) > 200, timeout_s=60,
                 what="worker 2 taking messages")
        killed = command.worker_pids()[2]
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: command.worker_pids()[2] != killed, timeout_s=30,
                 what="worker 2 restarted")
        wait_for(lambda: command.received().get("2", 0) > 200, timeout_s=60,
                 what="the restarted worker 2 taking messages")
        sent = load.stop()
        assert_exactly_once(settings, sent)
        assert command.terminate() == 0
    finally:
        command.close()
    assert '"worker_restart"' in command.log()


def test_switching_two_one_two_workers_loses_and_duplicates_nothing(
        settings: Settings, private_mosquitto: MosquittoServer) -> None:
    load = SteadyLoad(private_mosquitto.url, DEVICES, rate=300.0)
    for workers in (2, 1, 2):
        command = Command(settings, private_mosquitto.url, workers).start()
        try:
            if not load.is_alive():
                load.start()
            before = sum(command.received().values())
            wait_for(lambda c=command, b=before: sum(c.received().values()) > b + 500,
                     timeout_s=60, what=f"{workers} worker(s) taking messages")
            assert command.terminate() == 0
        finally:
            command.close()
        # The load goes on while no collector runs: the sessions keep those messages.
    final = Command(settings, private_mosquitto.url, 1).start()
    try:
        assert retired_workers(settings, 1) == []
        assert (spool_of(worker_settings(settings, 1, 2)) / RETIRED_MARK).exists()
        sent = load.stop()
        assert_exactly_once(settings, sent)
        assert final.terminate() == 0
    finally:
        final.close()


def test_the_dashboards_collector_runs_the_same_workers(
        settings: Settings, private_mosquitto: MosquittoServer) -> None:
    from dataclasses import replace

    from iotmeter_tui.backend.collector.worker import CollectorWorker

    two = replace(settings, collector_workers=2)
    worker = CollectorWorker(two, private_mosquitto.url)
    worker.start()
    try:
        assert worker.wait_ready(90), "the dashboard's two workers did not subscribe"
        load = SteadyLoad(private_mosquitto.url, DEVICES, rate=400.0)
        load.start()
        wait_for(lambda: (h := worker.health()) is not None and h.received > 1000,
                 timeout_s=60, what="the combined health counting both workers")
        sent = load.stop()
        assert_exactly_once(settings, sent)
        health = worker.health()
        assert health is not None and {s.name for s in health.sinks} == {
            "timeseries", "archive", "registry"}
        assert (settings.home / "collector.log").read_text().count('"worker_started"') == 2
    finally:
        worker.stop()
    assert not worker.alive


def test_a_worker_that_cannot_start_fails_the_command(
        settings: Settings, private_mosquitto: MosquittoServer) -> None:
    # Worker 2's spool directory cannot be made: its start fails before it ever subscribes.
    blocker = spool_of(worker_settings(settings, 1, 2))
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory")
    command = Command(settings, private_mosquitto.url, 2)
    with command.log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "iotmeter_tui", "--collector-only", "--workers", "2",
             "--metrics-port", str(command.port)],
            env=command.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert process.wait(90) == 1
    finally:
        if process.poll() is None:
            process.kill()
    assert '"worker_failed"' in command.log()


def test_combined_health_sums_the_workers() -> None:
    from iotmeter_tui.backend.collector.health import CollectorHealth, SinkHealth, combined

    def part(received: int, up: bool) -> CollectorHealth:
        return CollectorHealth(at=0.0, starting=False, broker_connected=True, broker_error=None,
                               received=received, acked=received - 1, duplicates=1,
                               spool_bytes=10, spool_full=False,
                               sinks=(SinkHealth("timeseries", up, None if up else "down", 5),))

    both = combined([part(100, True), part(50, False)], at=1.0)
    assert (both.received, both.acked, both.duplicates, both.spool_bytes) == (150, 148, 2, 20)
    assert both.sinks == (SinkHealth("timeseries", False, "down", 10),)
    assert both.broker_connected and not both.starting
    assert combined([], at=1.0).starting


def test_a_broker_restart_keeps_both_workers_subscribed(
        settings: Settings, private_mosquitto: MosquittoServer) -> None:
    # Mosquitto restored from its persistence file brings a session back without its shared
    # subscriptions: the workers must subscribe again, or they would wait for ever. (What
    # devices publish between the restart and that subscription has no subscriber and is
    # dropped by the broker: docs/operations.md; so this test counts duplicates, not losses.)
    command = Command(settings, private_mosquitto.url, 2).start()
    try:
        load = SteadyLoad(private_mosquitto.url, DEVICES, rate=300.0)
        load.start()
        wait_for(lambda: min(command.received().get(w, 0) for w in ("1", "2")) > 100,
                 timeout_s=60, what="both workers taking messages")
        private_mosquitto.restart()
        time.sleep(1)
        after = command.received()
        wait_for(lambda: all(command.received().get(w, 0) > after.get(w, 0) + 100
                             for w in ("1", "2")),
                 timeout_s=60, what="both workers taking messages after the broker restart")
        assert len(load.stop()) > 100
        time.sleep(3)
        assert command.terminate() == 0
    finally:
        command.close()
    audit = StoreAudit(settings)
    try:
        for device_id in DEVICES:
            for store, keys in (("time series", audit.timeseries_keys(device_id)),
                                ("archive", audit.archive_keys(device_id))):
                assert keys, f"nothing of {device_id} in the {store}"
                assert max(keys.values()) == 1, f"{store} of {device_id} holds duplicates"
    finally:
        audit.close()
