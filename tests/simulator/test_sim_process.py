"""The simulator as its own process: a power cut (SIGKILL) fires every device's Last Will, a
SIGTERM powers the fleet down cleanly, --duration ends it, bad input is one clear line."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.simulator.cli import run_simulate
from iotmeter_tui.backend.simulator.fleet import SimulatorError
from iotmeter_tui.backend.simulator.state import SimulatorStateError


def live_states(recorder: Any) -> dict[str, list[str]]:
    """device -> status states seen (retained copies from earlier runs left out)."""
    out: dict[str, list[str]] = {}
    for r in recorder.messages:
        if r.topic.endswith("/status") and not r.retain:
            out.setdefault(r.device_id, []).append(r.message().data["state"])
    return out


def test_sigkill_fires_every_last_will(mosquitto: Any, prefix: str, recorder_factory: Any,
                                       simulator_process: Any) -> None:
    recorder = recorder_factory(mosquitto.url, prefix)
    process = simulator_process(mosquitto.url, prefix, "--devices", "20", "--rate", "2",
                                "--kind", "mixed", "--seed", "3")
    recorder.wait_for(lambda: len(live_states(recorder)) == 20, what="20 devices online")
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    recorder.wait_for(lambda: all(s[-1] == "offline" for s in live_states(recorder).values()),
                      what="every Last Will")
    for states in live_states(recorder).values():
        assert states == ["online", "offline"]
    wills = [json.loads(r.payload) for r in recorder.messages if r.topic.endswith("/status")
             and r.message().data["state"] == "offline"]
    # The will carries the boot it was composed in, so a stale one can be told apart.
    assert len(wills) == 20 and all(w["boot"] == 1 and "seq" not in w for w in wills)


def test_sigterm_is_a_clean_power_down(mosquitto: Any, prefix: str, recorder_factory: Any,
                                       simulator_process: Any) -> None:
    recorder = recorder_factory(mosquitto.url, prefix)
    process = simulator_process(mosquitto.url, prefix, "--devices", "3", "--rate", "5")
    recorder.wait_for(lambda: len(live_states(recorder)) == 3, what="3 devices online")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr.decode()
    assert b"stopped; devices=3" in stderr
    for states in live_states(recorder).values():
        assert states == ["online", "offline"]  # published by the devices themselves


def test_duration_ends_the_run(mosquitto: Any, prefix: str, recorder_factory: Any,
                               simulator_process: Any) -> None:
    recorder = recorder_factory(mosquitto.url, prefix)
    process = simulator_process(mosquitto.url, prefix, "--devices", "2", "--rate", "10",
                                "--duration", "1.5", "--kind", "ac")
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr.decode()
    assert len(recorder.of(protocol.TELEMETRY)) >= 20


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"faults": "drop=2"}, "--faults: drop=2 is not a probability in [0, 1]"),
    ({"faults": "jitter=0.1"}, "--faults: unknown fault 'jitter'"),
    ({"devices": 0}, "--devices 0 must be greater than 0"),
    ({"rate": 0}, "--rate 0 must be greater than 0"),
    ({"kind": "hvdc"}, "--kind 'hvdc' is not one of dc, ac, mixed"),
    ({"mqtt_url": "http://x"}, "must start with mqtt:// or mqtts://"),
])
def test_bad_input_is_one_line(kwargs: dict[str, Any], message: str, iotmeter_home: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    args: dict[str, Any] = {"devices": 1, "rate": 1.0, "mqtt_url": "mqtt://127.0.0.1:1",
                            "home": iotmeter_home, **kwargs}
    assert run_simulate(**args) == 2
    err = capsys.readouterr().err
    assert err == f"iotmeter simulate: {message}\n" or (message in err and err.count("\n") == 1)


def test_bad_spec_from_the_command_line(mosquitto: Any, prefix: str,
                                        simulator_process: Any) -> None:
    process: subprocess.Popen[bytes] = simulator_process(
        mosquitto.url, prefix, "--devices", "1", "--faults", "drop=0.1,drop=0.2")
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2
    assert stderr.decode() == "iotmeter simulate: --faults: drop given twice\n"


def test_one_simulator_per_prefix(mosquitto: Any, prefix: str, controller_factory: Any) -> None:
    first = controller_factory(mosquitto.url, prefix)
    first.start(1, "dc")
    second = controller_factory(mosquitto.url, prefix)
    with pytest.raises(SimulatorStateError, match="different --prefix"):
        second.start(1, "dc")
    assert not second.running
    with pytest.raises(SimulatorError, match="not running"):
        second.set_rate(2)
