"""Outages and faults: the offline buffer replays in order with the original seq and ts after
a broker restart (and counts what it must drop beyond its bound), and every --faults kind
shows up where a collector would see it."""

from __future__ import annotations

import itertools
import time
from typing import Any

from iotmeter_tui.backend import protocol


def first_occurrences(seqs: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for seq in seqs:
        if seq not in seen:
            seen.add(seq)
            out.append(seq)
    return out


def test_offline_buffer_replays_after_a_broker_restart(private_mosquitto: Any, prefix: str,
                                                       recorder_factory: Any,
                                                       controller_factory: Any) -> None:
    url = private_mosquitto.url
    # A persistent session: the broker queues what arrives while the recorder reconnects.
    recorder = recorder_factory(url, prefix, persistent=True)
    whole = controller_factory(url, prefix + "a")
    bounded = controller_factory(url, prefix + "b", buffer_limit=10)
    whole_ids = whole.start(2, "mixed", rate=20)
    [bounded_id] = bounded.start(1, "dc", rate=20)
    recorder.wait_for(lambda: len(recorder.of(protocol.TELEMETRY)) >= 60, what="readings")

    private_mosquitto.stop()
    down_at = time.time()
    time.sleep(1.5)  # 30 readings per device while the broker is away
    private_mosquitto.start()
    up_at = time.time()
    recorder.wait_for(lambda: whole.stats().online == 2 and whole.stats().buffered == 0
                      and bounded.stats().online == 1 and bounded.stats().buffered == 0,
                      what="devices back and buffers drained")
    time.sleep(0.5)
    whole.stop()
    bounded.stop()
    recorder.wait_quiet()

    seqs = recorder.seqs()
    for device_id in whole_ids:
        arrived = seqs[(device_id, 1)]
        assert sorted(set(arrived)) == list(range(max(arrived) + 1)), "no seq missing"
        readings = recorder.of(protocol.TELEMETRY, device_id)
        # Replayed in order (the hello after the reconnect goes ahead of the replay).
        telemetry_seqs = first_occurrences([m.seq for m in readings if m.seq is not None])
        assert telemetry_seqs == sorted(telemetry_seqs)
        during = [r for r in recorder.messages
                  if r.device_id == device_id and r.topic.endswith("/telemetry")
                  and down_at + 0.1 < r.message().ts / 1000 < up_at - 0.1]
        assert len(during) >= 10, "readings taken during the outage were kept"
        # They arrived after the broker was back, yet carry the times they were taken at,
        # spread over the outage rather than bunched at the replay.
        assert min(r.at for r in during) >= down_at + 1.5
        span_s = (during[-1].message().ts - during[0].message().ts) / 1000
        assert span_s >= 0.5 * (up_at - down_at)

    assert whole.stats().buffer_dropped == 0
    dropped = bounded.stats().buffer_dropped
    assert dropped >= 10
    arrived = set(seqs[(bounded_id, 1)])
    missing = set(range(max(arrived) + 1)) - arrived
    assert len(missing) == dropped, "exactly the counted drops are missing"
    assert sorted(missing) == list(range(min(missing), min(missing) + dropped)), "oldest first"


def test_every_fault_kind_is_observable(mosquitto: Any, prefix: str, recorder_factory: Any,
                                       controller_factory: Any) -> None:
    recorder = recorder_factory(mosquitto.url, prefix)
    controller = controller_factory(
        mosquitto.url, prefix, seed=5,
        faults="drop=0.05,dup=0.05,reorder=0.05,disconnect=0.02,malformed=0.05,clock_skew=3600",
    )
    ids = controller.start(4, "mixed", rate=25)
    def reasons() -> set[str]:
        return {d.reason for d in (r.decode() for r in recorder.messages)
                if isinstance(d, protocol.Rejection)}

    recorder.wait_for(lambda: all(controller.stats().faults.get(k, 0) >= 3 for k in
                                  ("drop", "dup", "reorder", "disconnect", "malformed"))
                      and len(reasons()) == 5, what="every fault a few times")
    # Faults off, then a few clean readings: a drop at the very end would not show as a gap,
    # and a device cut off by the last disconnect must get back to deliver its buffer.
    controller.set_faults("clock_skew=3600")
    recorder.wait_for(lambda: controller.stats().online == 4 and controller.stats().buffered == 0,
                      what="devices back with empty buffers")
    produced = controller.stats().produced
    recorder.wait_for(lambda: controller.stats().produced >= produced + 20, what="clean readings")
    controller.stop()
    recorder.wait_quiet()
    faults = controller.stats().faults
    assert controller.stats().lost_at_power_off == 0

    received = recorder.messages
    # malformed: garbage payloads the collector must reject, for each of these reasons.
    assert reasons() == {"not_json", "not_utf8", "not_object", "bad_field", "bad_seq"}

    messages = [r.decode() for r in received]
    good = [m for m in messages if isinstance(m, protocol.Message)]
    # clock_skew: every device's clock is an hour ahead of the arrival time.
    for r, m in zip(received, messages, strict=True):
        if isinstance(m, protocol.Message):
            assert 3590 < m.ts / 1000 - r.at < 3610

    seqs = recorder.seqs()
    dup = reorder = gap = 0
    for arrived in seqs.values():
        dup += len(arrived) - len(set(arrived))
        reorder += sum(1 for a, b in itertools.pairwise(arrived) if b < a)
        gap += max(arrived) + 1 - len(set(arrived))
    assert dup >= faults["dup"] > 0, "dup: the same (boot, seq) twice (resends add more)"
    assert reorder > 0, "reorder: a seq after a higher one"
    assert gap == faults["drop"], "drop: exactly the dropped seqs never arrive"

    # disconnect: the broker published Last Wills, and the devices came back.
    for device_id in ids:
        states = [m.data["state"] for m in good
                  if m.msg_type == protocol.STATUS and m.device_id == device_id]
        # The first may be a Last Will: a disconnect right after connecting can beat the
        # online status, which is then resent after the reconnect.
        assert "online" in states and states[-1] == "offline"
    all_states = [m.data["state"] for m in good if m.msg_type == protocol.STATUS]
    assert all_states.count("offline") > len(ids), "Last Wills beyond the clean stop"
