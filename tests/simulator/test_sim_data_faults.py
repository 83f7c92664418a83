"""Labelled data faults (simulator/faults.py `DataFaults`): what each kind does to the readings,
the labels a bench scores against, and that they reach the wire and the `--summary` file."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.simulator.cli import run_simulate
from iotmeter_tui.backend.simulator.faults import (
    EPISODE_MS,
    DataFaults,
    FaultInjector,
    FaultSpec,
    FaultSpecError,
)

T0 = 1_795_000_000_000


def reading(v: float = 750.0, e: float = 1000.0) -> dict[str, float]:
    return {"voltage_v": v, "current_a": 10.0, "energy_import_kwh": e}


def run(spec: str, n: int = 20) -> tuple[DataFaults, list[dict[str, Any]]]:
    faults = DataFaults(random.Random(1), FaultSpec.parse(spec))
    out = [faults.alter(reading(750.0 + i, 1000.0 + i), T0 + i * 1000) for i in range(n)]
    return faults, out


def test_the_data_fault_kinds_parse_and_bad_ones_are_one_line() -> None:
    spec = FaultSpec.parse("drift=0.1,stuck=0.2,counter_regression=0.3,counter_jump=0.4,"
                           "interval_change=0.5,drop=0.1")
    assert spec.any_episode and spec.any_per_message and spec.interval_change == 0.5
    assert not FaultSpec.parse("drop=0.5").any_episode
    with pytest.raises(FaultSpecError, match="not a probability"):
        FaultSpec.parse("stuck=2")
    with pytest.raises(FaultSpecError, match=r"unknown fault 'frozen'.*interval_change"):
        FaultSpec.parse("frozen=1")


def test_stuck_repeats_the_first_reading_and_is_labelled() -> None:
    faults, out = run("stuck=1")
    assert {d["voltage_v"] for d in out} == {750.0}
    assert [d["energy_import_kwh"] for d in out[:3]] == [1000.0, 1001.0, 1002.0]
    [label] = faults.labels
    assert label.as_dict() == {"kind": "stuck", "field": "voltage_v", "start_ms": T0,
                               "end_ms": T0 + EPISODE_MS, "observable_ms": T0}


def test_drift_grows_with_time_and_says_when_it_shows() -> None:
    faults, out = run("drift=1")
    offsets = [d["voltage_v"] - (750.0 + i) for i, d in enumerate(out)]
    assert offsets[0] == 0 and offsets[10] == pytest.approx(15.0, abs=0.11)
    assert faults.labels[0].observable_ms == T0 + 25_000  # 5 % at 0.2 % a second


def test_counter_faults_move_the_register_for_good() -> None:
    faults, out = run("counter_regression=1", n=3)
    assert out[0]["energy_import_kwh"] == 990.0 and out[2]["energy_import_kwh"] == 992.0
    faults, out = run("counter_jump=1", n=2)
    assert out[0]["energy_import_kwh"] == 1050.0
    # After the episode the offset stays: a register never jumps back on its own.
    faults.spec = FaultSpec()
    later = faults.alter(reading(e=2000.0), T0 + EPISODE_MS + 1)
    assert later["energy_import_kwh"] == 2050.0 and len(faults.labels) == 1


def test_interval_change_scales_the_interval_until_the_episode_ends() -> None:
    faults, _ = run("interval_change=1", n=1)
    assert faults.interval_scale == 5.0 and faults.labels[0].field == ""
    faults.spec = FaultSpec()
    faults.alter(reading(), T0 + EPISODE_MS)
    assert faults.interval_scale == 1.0


def test_episodes_do_not_change_the_per_message_draws_of_a_seed() -> None:
    plain = FaultInjector(FaultSpec.parse("drop=0.5"), random.Random(3))
    with_data = FaultInjector(FaultSpec.parse("drop=0.5,stuck=0.5"), random.Random(3))
    assert [plain.decide() for _ in range(50)] == [with_data.decide() for _ in range(50)]


def test_a_stuck_simulator_sends_the_frozen_value_and_labels_it_in_the_summary(
        mosquitto: Any, prefix: str, recorder_factory: Any, iotmeter_home: Path,
        tmp_path: Path) -> None:
    recorder = recorder_factory(mosquitto.url, prefix)
    path = tmp_path / "summary.json"
    assert run_simulate(devices=1, rate=10, kind="dc", seed=5, duration=1.5, prefix=prefix,
                        mqtt_url=mosquitto.url, home=iotmeter_home, heartbeat_s=0.5,
                        faults="stuck=1", summary=path) == 0
    recorder.wait_quiet()
    [(device_id, sent)] = json.loads(path.read_text()).items()
    [label] = sent["fault_labels"]
    assert label["kind"] == "stuck" and label["field"] == "voltage_v"
    telemetry = recorder.of(protocol.TELEMETRY, device_id)
    assert len(telemetry) >= 10
    assert len({m.data["voltage_v"] for m in telemetry}) == 1
    assert telemetry[0].ts == label["start_ms"]
