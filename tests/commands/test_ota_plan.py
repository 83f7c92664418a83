"""The campaign state machine alone (pure): batches, online devices first, done only by the
registry's fw_version, per-target timeouts, repeats, the abort threshold, how campaigns end."""

from __future__ import annotations

from dataclasses import replace

import pytest

from iotmeter_tui.backend.control.ota_plan import (
    ABORTED,
    ABORTING,
    COMPLETED,
    CONFIRMING,
    FAILED,
    RUNNING,
    DeviceView,
    Finish,
    RolloutPlan,
    Tally,
    abort_due,
    plan_rollout,
    tally,
    target_state_for_report,
)
from iotmeter_tui.backend.stores.metadata import Campaign, OtaTarget

NOW = 1_000_000
NEW = "2.0.0"


def campaign(state: str = RUNNING, batch: int = 2, max_pct: float = 20.0,
             timeout_s: float = 60.0) -> Campaign:
    return Campaign("camp-1", NEW, "all", batch, max_pct, state, 0, 0, None, timeout_s)


def target(device_id: str, state: str = "pending", started_at: int | None = None,
           updated_at: int = 0) -> OtaTarget:
    return OtaTarget("camp-1", device_id, state, None, None, 1 if started_at else 0,
                     started_at, updated_at)


def fleet(*ids: str, online: bool = True, fw: str = "1.0.0") -> dict[str, DeviceView]:
    return {d: DeviceView(online, fw) for d in ids}


def plan(c: Campaign, targets: list[OtaTarget], devices: dict[str, DeviceView],
         now: int = NOW) -> RolloutPlan:
    return plan_rollout(c, targets, devices, now, redeliver_after_ms=10_000)


def test_a_device_reported_done_is_only_confirming() -> None:
    assert target_state_for_report("done") == CONFIRMING
    for state in ("downloading", "verifying", "installing", "rebooting", "failed"):
        assert target_state_for_report(state) == state


def test_first_batch_is_offered_online_devices_first() -> None:
    devices = fleet("a", "b", "c") | fleet("0-away", online=False)
    targets = [target(d) for d in ("0-away", "a", "b", "c")]
    result = plan(campaign(batch=2), targets, devices)
    assert result.offer == ("a", "b")
    assert result.campaign_state is None and not result.finish


def test_the_window_refills_as_targets_finish() -> None:
    devices = fleet("a", "b", "c", "d")
    targets = [target("a", "downloading", NOW - 5000, NOW - 100),
               target("b", "failed", NOW - 5000, NOW - 100),
               target("c"), target("d")]
    assert plan(campaign(batch=2, max_pct=100), targets, devices).offer == ("c",)


def test_offline_devices_are_offered_once_no_online_one_waits() -> None:
    devices = fleet("a") | fleet("b", online=False)
    targets = [target("a", "installing", NOW - 1000, NOW - 10), target("b")]
    assert plan(campaign(batch=2), targets, devices).offer == ("b",)


def test_done_only_when_the_registry_reports_the_new_version() -> None:
    targets = [target("a", CONFIRMING, NOW - 1000, NOW - 10)]
    assert plan(campaign(), targets, fleet("a")).finish == ()  # device said done: not enough
    result = plan(campaign(), targets, fleet("a", fw=NEW))
    assert result.finish == (Finish("a", "done", None),)
    assert result.campaign_state == COMPLETED


def test_a_device_already_on_the_version_is_done_without_an_offer() -> None:
    result = plan(campaign(), [target("a"), target("b")], fleet("a", fw=NEW) | fleet("b"))
    assert result.finish == (Finish("a", "done", None),)
    assert result.offer == ("b",)


def test_a_target_times_out_from_its_offer() -> None:
    c = campaign(timeout_s=60)
    fresh = target("a", "downloading", NOW - 59_000, NOW - 1000)
    assert plan(c, [fresh], fleet("a")).finish == ()
    stale = target("a", "downloading", NOW - 60_000, NOW - 1000)
    result = plan(c, [stale], fleet("a"))
    (finish,) = result.finish
    assert finish.state == "timed_out" and "last state: downloading" in (finish.reason or "")
    assert result.campaign_state == ABORTED  # 1 of 1 failed: past any threshold below 100%


def test_an_unanswered_offer_is_repeated() -> None:
    quiet = target("a", "offered", NOW - 20_000, NOW - 20_000)
    assert plan(campaign(), [quiet], fleet("a")).reoffer == ("a",)
    heard = target("a", "downloading", NOW - 20_000, NOW - 20_000)
    assert plan(campaign(), [heard], fleet("a")).reoffer == ()
    recent = target("a", "offered", NOW - 5_000, NOW - 5_000)
    assert plan(campaign(), [recent], fleet("a")).reoffer == ()


@pytest.mark.parametrize(
    ("counts", "batch", "max_pct", "due"),
    [
        (Tally(total=10, done=2), 3, 20, False),  # no failure, no abort
        (Tally(total=10, failed=2, pending=8), 3, 20, False),  # 20% of all is not past 20%
        (Tally(total=10, failed=3, pending=7), 3, 20, True),  # past 20% of all
        (Tally(total=100, failed=2, in_flight=8, pending=90), 10, 20, False),  # sample too small
        (Tally(total=100, failed=3, done=7, pending=90), 10, 20, True),  # 30% of a batch
        (Tally(total=100, failed=2, done=8, pending=90), 10, 20, False),  # 20% is the limit
        (Tally(total=10, failed=1, pending=9), 5, 0, True),  # 0%: any failure
        (Tally(total=10, failed=9, done=1), 5, 100, False),  # 100%: never
        (Tally(total=10, timed_out=3, pending=7), 3, 20, True),  # timeouts count
    ],
)
def test_abort_threshold(counts: Tally, batch: int, max_pct: float, due: bool) -> None:
    assert abort_due(counts, batch, max_pct) is due


def test_passing_the_threshold_skips_the_pending_and_waits_for_those_in_flight() -> None:
    devices = fleet("a", "b", "c", "d", "e")
    targets = [target("a", "failed", NOW - 1000, NOW), target("b", "failed", NOW - 1000, NOW),
               target("c", "installing", NOW - 1000, NOW), target("d"), target("e")]
    result = plan(campaign(batch=3, max_pct=20), targets, devices)
    assert result.campaign_state == ABORTING
    assert "2 of 2 finished targets failed" in (result.campaign_detail or "")
    assert {f.device_id: f.state for f in result.finish} == {"d": "skipped", "e": "skipped"}
    assert result.offer == ()
    # c still installs; once it ends the campaign is aborted.
    later = [replace(t, state="skipped") if t.device_id in "de" else t for t in targets]
    aborting = campaign(ABORTING, batch=3)
    assert plan(aborting, later, devices).campaign_state is None
    assert plan(aborting, later, devices | fleet("c", fw=NEW)).campaign_state == ABORTED


def test_an_aborting_campaign_offers_nothing_and_repeats_nothing() -> None:
    targets = [target("a"), target("b", "offered", NOW - 20_000, NOW - 20_000)]
    result = plan(campaign(ABORTING), targets, fleet("a", "b"))
    assert result.offer == () and result.reoffer == ()
    assert result.finish == (Finish("a", "skipped", "campaign aborted before the offer"),)


def test_a_campaign_with_some_targets_lost_ends_failed() -> None:
    targets = [target("a", "done"), target("b", "timed_out"), target("c", "done"),
               target("d", "done"), target("e", "done"), target("f", "done")]
    result = plan(campaign(batch=6, max_pct=20), targets, fleet("a", "b", "c", "d", "e", "f"))
    assert result.campaign_state == FAILED
    assert result.campaign_detail == "1 of 6 targets not updated (0 failed, 1 timed out)"


def test_a_finished_campaign_is_left_alone() -> None:
    result = plan(campaign(COMPLETED), [target("a", "done")], fleet("a", fw=NEW))
    assert result == RolloutPlan()


def test_tally_counts_every_kind() -> None:
    counts = tally(["pending", "offered", "downloading", "confirming", "done", "failed",
                    "timed_out", "skipped"])
    assert counts == Tally(total=8, pending=1, in_flight=3, done=1, failed=1, timed_out=1,
                           skipped=1)
    assert (counts.failures, counts.finished) == (2, 3)
