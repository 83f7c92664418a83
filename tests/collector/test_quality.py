"""The data-quality score (collector/quality.py): each part that lowers it, decay, and what
the tracker counts from a registry batch's records."""

from __future__ import annotations

from iotmeter_tui.backend.collector.quality import HALF_LIFE_MS, QualityTracker, quality_score
from iotmeter_tui.backend.collector.spool import ACCEPTED, DUPLICATE, REJECTED, SpoolRecord

T0 = 1_795_000_000_000


def record(kind: int, device_id: str = "m1", msg_type: str = "telemetry", ts: int = T0,
           received: int = T0 + 100) -> SpoolRecord:
    if kind == REJECTED:
        return SpoolRecord.rejected(received_ms=received, topic=f"iot/{device_id}/{msg_type}",
                                    reason="bad_field", detail="", payload=b"{}",
                                    device_id=device_id)
    if kind == DUPLICATE:
        return SpoolRecord.duplicate(received_ms=received, device_id=device_id,
                                     msg_type=msg_type, boot=1, seq=0, ts=ts)
    return SpoolRecord.accepted(received_ms=received, device_id=device_id, msg_type=msg_type,
                                device_type="power_meter_dc", boot=1, seq=0, ts=ts,
                                payload=b"{}")


def test_a_clean_device_scores_100_and_each_problem_costs() -> None:
    assert quality_score(100, 0, 0, 0, 0, 0, 100) == 100.0
    assert quality_score(90, 10, 0, 0, 0, 0, 0) == 90.0  # 10 % lost
    assert quality_score(100, 0, 25, 0, 0, 0, 0) == 80.0  # one in five arrived twice
    assert quality_score(100, 0, 0, 0, 1, 0, 0) == 85.0
    assert quality_score(100, 0, 0, 0, 0, 2, 0) == 80.0
    assert quality_score(100, 0, 0, 0, 0, 0, 6_000) == 90.0
    assert quality_score(100, 0, 0, 0, 0, 0, 120_000) == 80.0
    assert quality_score(0, 0, 0, 0, 9, 9, 10**9) == 20.0  # deductions are capped
    assert quality_score(1, 99, 50, 50, 9, 9, 10**9) == 0.0  # never below 0


def test_the_tracker_counts_a_batch_and_scores_the_devices_seen() -> None:
    q = QualityTracker()
    q.observe(record(REJECTED, device_id="never-heard"))  # an invented id is not tracked
    for i in range(8):
        q.observe(record(ACCEPTED, ts=T0 + i * 1000 - 10_000, received=T0 + i * 1000))
    q.observe(record(DUPLICATE))
    q.observe(record(REJECTED))
    q.observe(record(ACCEPTED, msg_type="hello"))  # only telemetry counts as received
    q.gaps("m1", 0, T0)
    q.gaps("m1", 2, T0 + 8000)  # two seqs declared lost
    q.gaps("m1", 0, T0 + 8000)  # a new boot: the level restarts, nothing more lost
    [score] = q.drain(T0 + 8000, lambda ids: dict.fromkeys(ids, 1))
    assert score.device_id == "m1" and round(score.received) == 8 and score.gaps == 2.0
    assert score.duplicates == 1.0 and score.rejects == 1.0 and score.stuck_fields == 1
    assert 9_000 < score.clock_skew_ms <= 10_000
    assert score.score == quality_score(score.received, 2, 1, 1, 0, 1, score.clock_skew_ms)
    assert q.drain(T0 + 9000) == []  # nothing new: nothing to write


def test_counts_halve_every_hour() -> None:
    q = QualityTracker()
    q.received("m1", T0, T0)
    q.counter_reset("m1", T0, 2)
    [score] = q.drain(T0 + HALF_LIFE_MS)
    assert score.received == 0.5 and score.counter_resets == 1.0
