"""Telemetry field names are bounded per device type: the pure Decider, then
the collector end to end with its rejections archived and counted."""

from __future__ import annotations

from pathlib import Path

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.collector.metrics import CollectorMetrics
from iotmeter_tui.backend.collector.pipeline import FIELD_BUDGET_TYPES, Decider, DeviceDirectory
from iotmeter_tui.backend.collector.seqtrack import SeqTracker
from iotmeter_tui.backend.collector.spool import ACCEPTED, REJECTED
from testsupport import MosquittoServer
from testsupport.fleet import Publisher, telemetry, wait_for
from testsupport.harness import StoreAudit, running_collector, settings_for

TS = 1_795_740_000_000


def reading(device_id: str, seq: int, names: list[str]) -> tuple[str, bytes]:
    payload = protocol.encode_device_message(
        device_id, protocol.TELEMETRY, dict.fromkeys(names, 1.0), ts=TS + seq, boot=1, seq=seq)
    return protocol.device_topic(device_id, protocol.TELEMETRY), payload


def decider(budget: int, types: dict[str, str]) -> Decider:
    return Decider(SeqTracker(5_000), DeviceDirectory(types), CollectorMetrics(),
                   auto_register=True, field_budget=budget)


def test_a_type_may_use_its_budget_of_names_and_no_more() -> None:
    d = decider(4, {"a-1": "power_meter_dc", "a-2": "power_meter_dc", "b-1": "power_meter_ac"})
    assert d.decide(*reading("a-1", 0, ["u", "i", "p"]), TS).kind == ACCEPTED
    refused = d.decide(*reading("a-2", 0, ["u", "x", "y"]), TS)  # 5 names: all or none
    assert refused is not None and refused.kind == REJECTED
    assert refused.reason == "field_budget" and "'x'" in refused.detail
    assert d.decide(*reading("a-2", 1, ["u", "x"]), TS).kind == ACCEPTED  # the 4th name fits
    assert d.decide(*reading("a-1", 1, ["u", "i", "p", "x"]), TS).kind == ACCEPTED
    assert d.decide(*reading("a-1", 2, ["z"]), TS).reason == "field_budget"
    # Another type has a budget of its own.
    assert d.decide(*reading("b-1", 0, ["q", "r", "s", "t"]), TS).kind == ACCEPTED
    # A refused message is not received: its seq stays missing, a resend is not a duplicate.
    track = d.tracker.get("a-2", 1)
    assert track is not None and track.ranges() == ((0, 0),)


def test_devices_claiming_many_types_share_one_budget_past_the_first_types() -> None:
    types = {f"d-{i}": f"type_{i}" for i in range(FIELD_BUDGET_TYPES + 5)}
    d = decider(3, types)
    verdicts = [d.decide(*reading(device, 0, [f"{device}-a", f"{device}-b"]), TS)
                for device in types]
    accepted = [v for v in verdicts if v is not None and v.kind == ACCEPTED]
    # Each of the first types its own budget, then one shared budget of 3 takes one message.
    assert len(accepted) == FIELD_BUDGET_TYPES + 1
    assert "shared" in verdicts[-1].detail  # type: ignore[union-attr]


def test_names_beyond_the_budget_are_rejected_archived_and_counted(
    tmp_path: Path, private_mosquitto: MosquittoServer
) -> None:
    """A meter inventing a new field name with every message grew InfluxDB's field keys (and
    SQLite's columns, for every type) without end; now its type's budget stops it."""
    settings = settings_for(tmp_path, {}, field_budget=8)
    # Both devices are of type unknown (no hello): one budget. dc-0001 takes 6 names.
    normal = [telemetry("dc-0001", 1, s, data={"voltage_v": 750.0, "current_a": 10.0,
                                                "power_kw": 7.5, "energy_import_kwh": 1.0,
                                                "energy_export_kwh": 0.0, "temperature_c": 20.0})
              for s in range(3)]
    spraying = [reading("dc-0666", s, [f"junk_{s}"]) for s in range(10)]
    with running_collector(settings, private_mosquitto.url) as collector:
        pub = Publisher(private_mosquitto.url)
        pub.publish(normal + spraying)
        pub.close()
        m = collector.metrics
        wait_for(lambda: m.sample("iotmeter_messages_rejected_total",
                                  {"reason": "field_budget"}) == 8, what="8 refused")
        audit = StoreAudit(settings)
        wait_for(lambda: len(audit.timeseries_keys("dc-0666")) == 2, what="2 stored")
        rows = wait_for(lambda: len(r := audit.rejected()) == 8 and r, what="8 archived")
    assert {row["reason"] for row in rows} == {"field_budget"}
    assert {row["device_id"] for row in rows} == {"dc-0666"}
    assert len(audit.timeseries_keys("dc-0001")) == 3
    audit.close()
