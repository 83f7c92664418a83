"""`--summary`: on a clean stop the simulator writes what each device sent, and that account
matches, message for message, what a subscriber received."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.simulator.cli import run_simulate

REPO = Path(__file__).resolve().parents[2]


def test_summary_matches_what_was_received(mosquitto: Any, prefix: str, recorder_factory: Any,
                                           iotmeter_home: Path, tmp_path: Path) -> None:
    recorder = recorder_factory(mosquitto.url, prefix)
    path = tmp_path / "summary.json"
    assert run_simulate(devices=3, rate=10, kind="mixed", seed=5, duration=1.5, prefix=prefix,
                        mqtt_url=mosquitto.url, home=iotmeter_home, heartbeat_s=0.5,
                        summary=path) == 0
    recorder.wait_quiet()
    summary = json.loads(path.read_text())
    assert sorted(summary) == sorted({r.device_id for r in recorder.messages})
    assert len(summary) == 3
    for device_id, sent in summary.items():
        messages = recorder.assert_clean_sequence(device_id, boot=1)
        assert sent["boot"] == 1 and sent["boots"] == 1
        assert sent["first_seq"] == 0 and sent["last_seq"] == len(messages) - 1
        assert sent["produced"] == sent["published"] == len(messages)
        by_type = {t: len(recorder.of(t, device_id)) for t in (protocol.TELEMETRY,
                                                               protocol.HELLO)}
        assert sent["produced_by_type"] == by_type
        assert by_type[protocol.TELEMETRY] >= 10 and by_type[protocol.HELLO] >= 2
        # Everything was acknowledged (the seq'd messages and the two statuses), nothing lost.
        assert sent["acked"] == sent["produced"] + 2
        assert sent["unacked"] == sent["buffered"] == sent["buffer_dropped"] == 0
        assert sent["lost_at_power_off"] == 0 and sent["faults"] == {}


def test_iotmeter_simulate_writes_the_summary(mosquitto: Any, prefix: str, iotmeter_home: Path,
                                              tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
    env.update({"IOTMETER_MQTT_URL": mosquitto.url, "IOTMETER_HOME": str(iotmeter_home),
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")})
    result = subprocess.run(
        [sys.executable, "-m", "iotmeter_tui", "simulate", "--devices", "2", "--rate", "5",
         "--duration", "1", "--prefix", prefix, "--summary", str(path)],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    summary = json.loads(path.read_text())
    assert sorted(summary) == [f"{prefix}ac-0002", f"{prefix}dc-0001"]
    assert all(s["produced_by_type"]["telemetry"] >= 3 for s in summary.values())
    assert not path.with_name(path.name + ".partial").exists()


def test_summary_into_a_missing_directory_is_one_line(iotmeter_home: Path, tmp_path: Path,
                                                      capsys: Any) -> None:
    missing = tmp_path / "nowhere" / "summary.json"
    assert run_simulate(devices=1, rate=1.0, mqtt_url="mqtt://127.0.0.1:1", home=iotmeter_home,
                        summary=missing) == 2
    err = capsys.readouterr().err
    assert err == f"iotmeter simulate: --summary {missing}: no directory {missing.parent}\n"
