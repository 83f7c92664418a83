"""`iotmeter simulate --metrics-port`: the simulator's figures on a real /metrics, against a
real broker, and its log lines are the same JSON as every other process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from iotmeter_tui.backend.broker import free_port
from testsupport.services import MosquittoServer


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return {s.name + ("" if not s.labels else str(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_simulator_exports_its_figures_and_logs_json(mosquitto: MosquittoServer,
                                                     tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
    env.update({"IOTMETER_HOME": str(tmp_path), "IOTMETER_MQTT_URL": mosquitto.url})
    process = subprocess.Popen(
        [sys.executable, "-m", "iotmeter_tui", "simulate", "--devices", "3", "--rate", "5",
         "--duration", "6", "--prefix", "simmetrics-", "--faults", "dup=0.5",
         "--metrics-port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        figures: dict[str, float] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                figures = scrape(port)
            except OSError:
                figures = {}
            if figures.get("iotmeter_sim_messages_published_total", 0) > 10:
                break
            time.sleep(0.3)
        assert figures["iotmeter_sim_devices"] == 3
        assert figures["iotmeter_sim_devices_connected"] == 3
        assert figures["iotmeter_sim_messages_acked_total"] > 0
        assert figures["iotmeter_sim_reconnects_total"] == 0
        assert figures["iotmeter_sim_faults_injected_total[('fault', 'dup')]"] > 0
        assert "process_resident_memory_bytes" in figures
    finally:
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    entries = [json.loads(line) for line in stderr.splitlines()]
    assert entries and all({"ts", "level", "logger", "msg"} <= set(e) for e in entries)
    assert any(e["msg"].startswith("stopped; devices=3") for e in entries)


def test_a_busy_metrics_port_is_one_clear_line(mosquitto: MosquittoServer,
                                               tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
        env.update({"IOTMETER_HOME": str(tmp_path), "IOTMETER_MQTT_URL": mosquitto.url})
        result = subprocess.run(
            [sys.executable, "-m", "iotmeter_tui", "simulate", "--devices", "1",
             "--duration", "1", "--metrics-port", str(port)],
            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith(f"iotmeter simulate: --metrics-port {port}: ")
    assert len(result.stderr.strip().splitlines()) == 1
