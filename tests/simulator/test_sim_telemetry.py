"""The simulator through a real broker: envelopes, seq, heartbeats and physics as a collector
would see them, a 200-device fleet, and the same seed giving the same readings."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.simulator.physics import FEEDERS


def test_envelopes_seq_heartbeats_and_physics(mosquitto: Any, prefix: str,
                                              recorder_factory: Any,
                                              controller_factory: Any) -> None:
    recorder = recorder_factory(mosquitto.url, prefix)
    controller = controller_factory(mosquitto.url, prefix, heartbeat_s=0.5)
    ids = controller.start(6, "mixed", rate=20)
    assert ids == [f"{prefix}dc-0001", f"{prefix}ac-0002", f"{prefix}dc-0003",
                   f"{prefix}ac-0004", f"{prefix}dc-0005", f"{prefix}ac-0006"]
    started = time.time()
    recorder.wait_for(lambda: all(len(recorder.of(protocol.TELEMETRY, d)) >= 40 for d in ids),
                      what="40 readings per device")
    controller.stop()
    stopped = time.time()

    received = recorder.messages
    for r in received:
        decoded = r.decode()
        assert isinstance(decoded, protocol.Message), (decoded, r.payload)
        assert started - 5 < decoded.ts / 1000 < stopped + 1
    for device_id in ids:
        statuses = [m.data["state"] for m in recorder.of(protocol.STATUS, device_id)]
        assert statuses == ["online", "offline"]  # a clean stop says so itself
        recorder.assert_clean_sequence(device_id, boot=1)
        hellos = recorder.of(protocol.HELLO, device_id)
        assert len(hellos) >= 3, "heartbeat hellos every heartbeat_s"
        hello = hellos[0].data
        system = FEEDERS[hello["supply_system"]]
        assert hello["device_type"] == system.device_type == \
            ("power_meter_dc" if "-dc-" in device_id else "power_meter_ac")
        assert hello["fw_version"] == "1.0.0" and hello["heartbeat_s"] == 0.5
        assert hello["nominal_v"] == system.nominal_v


        readings = [m.data for m in recorder.of(protocol.TELEMETRY, device_id)]
        for prev, cur in itertools.pairwise(readings):
            assert cur["energy_import_kwh"] >= prev["energy_import_kwh"]
            assert cur["energy_export_kwh"] >= prev["energy_export_kwh"]
        for data in readings:
            assert system.min_permanent_v <= data["voltage_v"] <= system.max_permanent_v
            if system.kind == "dc":
                assert abs(data["power_kw"] - data["voltage_v"] * data["current_a"] / 1000) \
                    < 0.001
            else:
                assert abs(data["active_power_kw"] - data["voltage_v"] * data["current_a"]
                           * data["power_factor"] / 1000) < 0.001
                assert abs(data["frequency_hz"] - system.frequency_hz) < 0.5


def test_two_hundred_devices(mosquitto: Any, prefix: str, recorder_factory: Any,
                             controller_factory: Any) -> None:
    recorder = recorder_factory(mosquitto.url, prefix)
    controller = controller_factory(mosquitto.url, prefix)
    ids = controller.start(200, "mixed", rate=5)
    recorder.wait_for(lambda: controller.stats().online == 200, what="200 devices online")
    time.sleep(3)
    stats = controller.stats()
    assert stats.acked_per_s > 0.8 * 200 * 5
    controller.stop()
    assert all(isinstance(r.decode(), protocol.Message) for r in recorder.messages)
    seqs = recorder.seqs()
    assert set(seqs) == {(device, 1) for device in ids}
    for device in ids:
        assert len(recorder.assert_clean_sequence(device, boot=1)) >= 10
    assert controller.running is False


def test_same_seed_same_readings(mosquitto: Any, prefix: str, recorder_factory: Any,
                                 controller_factory: Any, tmp_path: Path) -> None:
    runs = []
    for run in range(2):
        recorder = recorder_factory(mosquitto.url, prefix)
        controller = controller_factory(mosquitto.url, prefix, seed=1234, home=tmp_path / str(run))
        [device] = controller.start(1, "ac", rate=50)
        recorder.wait_for(lambda d=device, r=recorder: len(r.of(protocol.TELEMETRY, d)) >= 30)
        controller.stop()
        runs.append([m.data for m in recorder.of(protocol.TELEMETRY, device)][:30])
        recorder.close()
    assert runs[0] == runs[1]
