"""The --faults spec parser, the seeded fault decisions, and the device state file."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.simulator.faults import FaultInjector, FaultSpec, FaultSpecError
from iotmeter_tui.backend.simulator.state import (
    DeviceRecord,
    DeviceStateStore,
    SimulatorStateError,
    state_path,
)


@pytest.mark.parametrize(("spec", "expected"), [
    (None, FaultSpec()),
    ("", FaultSpec()),
    ("none", FaultSpec()),
    ("drop=0.01", FaultSpec(drop=0.01)),
    ("drop=0.01,dup=0.02,reorder=0.03,disconnect=0.001,malformed=0.5,clock_skew=-2.5",
     FaultSpec(0.01, 0.02, 0.03, 0.001, 0.5, -2.5)),
    (" dup = 1 , drop=0 ", FaultSpec(dup=1.0)),
])
def test_fault_spec_parses(spec: str | None, expected: FaultSpec) -> None:
    assert FaultSpec.parse(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("drop", "'drop' is not NAME=VALUE"),
    ("drop=0.1,", "'' is not NAME=VALUE"),
    ("=0.1", "is not NAME=VALUE"),
    ("lose=0.1", "unknown fault 'lose'"),
    ("drop=0.1,drop=0.2", "drop given twice"),
    ("drop=lots", "drop='lots' is not a number"),
    ("dup=1.5", "dup=1.5 is not a probability in [0, 1]"),
    ("reorder=-0.1", "is not a probability"),
    ("drop=nan", "not finite"),
    ("clock_skew=1e12", "over a year"),
])
def test_bad_fault_spec_is_one_clear_line(spec: str, message: str) -> None:
    with pytest.raises(FaultSpecError) as caught:
        FaultSpec.parse(spec)
    text = str(caught.value)
    assert message in text and "\n" not in text and text.startswith("--faults: ")


def test_spec_prints_back() -> None:
    assert str(FaultSpec.parse("dup=0.5,clock_skew=3")) == "dup=0.5,clock_skew=3"
    assert str(FaultSpec()) == "none"


def test_decisions_follow_the_probabilities_and_the_seed() -> None:
    spec = FaultSpec(drop=0.1, dup=0.2, reorder=0.3, disconnect=0.05, malformed=0.4)
    runs = []
    for _ in range(2):
        injector = FaultInjector(spec, random.Random(99))
        runs.append([injector.decide() for _ in range(20_000)])
    assert runs[0] == runs[1]
    for name, p in [("drop", 0.1), ("dup", 0.2), ("reorder", 0.3), ("disconnect", 0.05),
                    ("malformed", 0.4)]:
        share = sum(getattr(d, name) for d in runs[0]) / len(runs[0])
        assert share == pytest.approx(p, abs=0.015), name
    assert not FaultInjector(FaultSpec(clock_skew=5), random.Random()).decide().drop
    assert FaultInjector(FaultSpec(clock_skew=-1.5), random.Random()).skew_ms == -1500


def test_every_garbage_kind_is_rejected_by_the_protocol() -> None:
    injector = FaultInjector(FaultSpec(malformed=1), random.Random(1))
    topic = protocol.device_topic("dc-0001", protocol.TELEMETRY)
    reasons = set()
    for _ in range(10):
        decoded = protocol.decode(topic, injector.garbage("dc-0001", 1_700_000_000_000))
        assert isinstance(decoded, protocol.Rejection)
        reasons.add(decoded.reason)
    assert reasons == {"not_json", "not_utf8", "not_object", "bad_field", "bad_seq"}


# --- state file ------------------------------------------------------------------------------


def record(boot: int = 1) -> DeviceRecord:
    return DeviceRecord(boot=boot, fw_version="1.0.0", supply_system="dc_750",
                        energy_import_kwh=10.5, energy_export_kwh=1.25)


def test_state_round_trips_and_is_written_atomically(tmp_path: Path) -> None:
    path = state_path(tmp_path, "east-")
    assert path == tmp_path / "simulator" / "state-east-.json"
    store = DeviceStateStore(path)
    store.open()
    store.records["east-dc-0001"] = record(4)
    store.write()
    store.close()
    assert json.loads(path.read_text())["devices"]["east-dc-0001"]["boot"] == 4
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    again = DeviceStateStore(path)
    again.open()
    assert again.records == {"east-dc-0001": record(4)}
    again.close()


def test_a_second_simulator_with_the_same_prefix_is_refused(tmp_path: Path) -> None:
    first = DeviceStateStore(state_path(tmp_path, ""))
    first.open()
    with pytest.raises(SimulatorStateError, match="different --prefix"):
        DeviceStateStore(state_path(tmp_path, "")).open()
    other = DeviceStateStore(state_path(tmp_path, "b-"))
    other.open()  # another prefix is another set of devices: fine
    other.close()
    first.close()
    reopened = DeviceStateStore(state_path(tmp_path, ""))
    reopened.open()  # the lock went with close()
    reopened.close()


def test_a_damaged_state_file_stops_the_simulator(tmp_path: Path) -> None:
    path = state_path(tmp_path, "")
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "devices": {"dc-0001": {"boot": "x"}}}')
    with pytest.raises(SimulatorStateError, match="move it away"):
        DeviceStateStore(path).open()
    with pytest.raises(SimulatorStateError):
        state_path(tmp_path, "bad/prefix")


def test_persist_coalesces_and_reaches_disk(tmp_path: Path) -> None:
    store = DeviceStateStore(state_path(tmp_path, ""))
    store.open()
    writes = []
    original = store.write
    store.write = lambda data=None: (writes.append(1), original(data))[1]  # type: ignore[method-assign]

    async def many() -> None:
        for i in range(100):
            store.records[f"dc-{i:04d}"] = record(i)
        await asyncio.gather(*(store.persist() for _ in range(100)))

    asyncio.run(many())
    store.close()
    assert len(writes) == 1
    assert len(json.loads(store.path.read_text())["devices"]) == 100
