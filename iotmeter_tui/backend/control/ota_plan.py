"""The OTA campaign state machine, pure: from a campaign, its targets, what the registry says
about each device and the time, decide what happens next. `ota.RolloutDriver` applies the
plan (publishes offers, writes states); this module does no I/O, so every rule is unit-tested.

Targets: pending -> offered -> downloading -> verifying -> installing -> rebooting ->
confirming (the device said done) -> done (its registry fw_version is the campaign's: the
next hello proved it), or failed (the device said so), timed_out (no new version within the
campaign's per-target timeout from the offer) or skipped (never offered: the campaign was
aborted first). Campaigns: running -> completed (every target done) | failed (all finished,
some not done) | aborting (the failure threshold was passed: no new offers) -> aborted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from iotmeter_tui.backend.stores.metadata import TARGET_FINAL_STATES, Campaign, OtaTarget

RUNNING: Final = "running"
ABORTING: Final = "aborting"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
ABORTED: Final = "aborted"
CAMPAIGN_OPEN_STATES: Final = (RUNNING, ABORTING)
CAMPAIGN_FINAL_STATES: Final = (COMPLETED, FAILED, ABORTED)

PENDING: Final = "pending"
OFFERED: Final = "offered"
CONFIRMING: Final = "confirming"
DONE: Final = "done"
TIMED_OUT: Final = "timed_out"
SKIPPED: Final = "skipped"


def target_state_for_report(reported: str) -> str:
    """The target state a device's ota_status moves its target to: the reported one, except
    `done`, which the device's next hello must confirm (docs/protocol.md, OTA step 5)."""
    return CONFIRMING if reported == DONE else reported


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What the planner needs from the registry about one device."""

    online: bool
    fw_version: str | None


@dataclass(frozen=True, slots=True)
class Finish:
    """Move a target to a final state (done, timed_out or skipped) with why."""

    device_id: str
    state: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    offer: tuple[str, ...] = ()  # first offers, in order
    reoffer: tuple[str, ...] = ()  # offered, no word from the device since: offer again
    finish: tuple[Finish, ...] = ()
    campaign_state: str | None = None  # the campaign's new state, when it changes
    campaign_detail: str | None = None


@dataclass(frozen=True, slots=True)
class Tally:
    total: int = 0
    pending: int = 0
    in_flight: int = 0  # offered and not final yet
    done: int = 0
    failed: int = 0
    timed_out: int = 0
    skipped: int = 0

    @property
    def failures(self) -> int:
        return self.failed + self.timed_out

    @property
    def finished(self) -> int:
        """Targets that were tried and ended (skipped ones were never tried)."""
        return self.done + self.failures


def tally(states: Iterable[str]) -> Tally:
    counts = {PENDING: 0, DONE: 0, FAILED: 0, TIMED_OUT: 0, SKIPPED: 0}
    total = in_flight = 0
    for state in states:
        total += 1
        if state in counts:
            counts[state] += 1
        elif state not in TARGET_FINAL_STATES:
            in_flight += 1
    return Tally(total, counts[PENDING], in_flight, counts[DONE], counts[FAILED],
                 counts[TIMED_OUT], counts[SKIPPED])


def abort_due(t: Tally, batch_size: int, max_failures_pct: float) -> bool:
    """Past the failure threshold: more than `max_failures_pct` % of all targets failed (the
    campaign can no longer end under it), or, once a first batch has finished, more than that
    share of the finished ones (stop early on a large fleet instead of breaking thousands)."""
    if t.failures == 0:
        return False
    if t.failures * 100 > max_failures_pct * t.total:
        return True
    sample = min(batch_size, t.total)
    return t.finished >= sample and t.failures * 100 > max_failures_pct * t.finished


def plan_rollout(campaign: Campaign, targets: Sequence[OtaTarget],
                 devices: Mapping[str, DeviceView], now_ms: int, *,
                 redeliver_after_ms: int) -> RolloutPlan:
    """The next step of an open campaign. `devices` maps device ids to their registry view
    (a device missing from it counts as offline, version unknown)."""
    version = campaign.fw_version
    timeout_ms = int(campaign.target_timeout_s * 1000)
    states: dict[str, str] = {}
    finish: list[Finish] = []
    reoffer: list[str] = []
    for target in targets:
        state = target.state
        device = devices.get(target.device_id)
        if state not in TARGET_FINAL_STATES:
            if device is not None and device.fw_version == version:
                # The registry's fw_version comes from the device's latest hello: proof.
                state = DONE
                finish.append(Finish(target.device_id, DONE, None))
            elif state != PENDING:
                started = target.started_at if target.started_at is not None \
                    else target.updated_at
                if now_ms - started >= timeout_ms:
                    state = TIMED_OUT
                    finish.append(Finish(target.device_id, TIMED_OUT,
                                         f"no new version within {campaign.target_timeout_s:g} s"
                                         f" of the offer (last state: {target.state})"))
                elif state == OFFERED and now_ms - target.updated_at >= redeliver_after_ms:
                    reoffer.append(target.device_id)
        states[target.device_id] = state

    counts = tally(states.values())
    new_state = campaign.state
    detail: str | None = None
    if new_state == RUNNING and abort_due(counts, campaign.batch_size,
                                          campaign.max_failures_pct):
        new_state = ABORTING
        detail = (f"aborted: {counts.failures} of {counts.finished} finished targets failed "
                  f"({counts.failures * 100 / max(counts.finished, 1):.0f}%), over the "
                  f"{campaign.max_failures_pct:g}% limit")

    offer: list[str] = []
    pending = sorted(d for d, s in states.items() if s == PENDING)
    if new_state == ABORTING:
        for device_id in pending:
            states[device_id] = SKIPPED
            finish.append(Finish(device_id, SKIPPED, "campaign aborted before the offer"))
        reoffer = []  # no new installs once aborting
    elif new_state == RUNNING:
        room = campaign.batch_size - counts.in_flight
        if room > 0:
            # Online devices first; offline ones only when no online one waits, so that a
            # device away for the whole campaign still gets its offer (queued by the broker)
            # and its timeout, and the campaign ends.
            ordered = sorted(pending, key=lambda d: not _online(devices, d))
            offer = ordered[:room]
            for device_id in offer:
                states[device_id] = OFFERED

    after = tally(states.values())
    if new_state in CAMPAIGN_OPEN_STATES and after.pending == 0 and after.in_flight == 0:
        if new_state == ABORTING:
            new_state = ABORTED  # keeps the detail given when it started aborting
        elif after.done == after.total:
            new_state, detail = COMPLETED, f"all {after.total} targets done"
        else:
            new_state = FAILED
            detail = (f"{after.failures} of {after.total} targets not updated "
                      f"({after.failed} failed, {after.timed_out} timed out)")
    return RolloutPlan(
        offer=tuple(offer),
        reoffer=tuple(reoffer),
        finish=tuple(finish),
        campaign_state=new_state if new_state != campaign.state else None,
        campaign_detail=detail,
    )


def _online(devices: Mapping[str, DeviceView], device_id: str) -> bool:
    device = devices.get(device_id)
    return device is not None and device.online
