"""Firmware updates: images, campaigns, and the rollout that drives them (AWS IoT jobs' idea).

`OtaService` is what operators and the dashboard call: upload an image into the archive store
(under `_firmware/`, with its version, size and sha256 in `ota_firmware`), start a campaign on
a device list, a device type or every device, follow and abort it. `RolloutDriver` is the
collector's side: each dispatcher pass it plans every open campaign (`ota_plan`, pure) and
carries the plan out — offers published, states written. All state is in the metadata store,
so a restarted collector resumes where the last one stopped.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.control import signing
from iotmeter_tui.backend.control.firmware import FirmwareLinks
from iotmeter_tui.backend.control.ota_plan import (
    ABORTING,
    CAMPAIGN_FINAL_STATES,
    CAMPAIGN_OPEN_STATES,
    DONE,
    OFFERED,
    PENDING,
    RUNNING,
    DeviceView,
    Tally,
    plan_rollout,
    tally,
)
from iotmeter_tui.backend.control.publisher import Publisher, PublishError
from iotmeter_tui.backend.errors import IotmeterError, StoreRejected, StoreUnavailable
from iotmeter_tui.backend.stores.archive import FIRMWARE_PREFIX, ArchiveStore
from iotmeter_tui.backend.stores.metadata import (
    DEFAULT_TARGET_TIMEOUT_S,
    TARGET_FINAL_STATES,
    Campaign,
    Firmware,
    MetadataStore,
    OtaTarget,
)

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE: Final = 10
DEFAULT_MAX_FAILURES_PCT: Final = 20.0
# Presigned S3 URLs live at most 7 days, and an offer's URL must outlive its expiry.
MAX_TARGET_TIMEOUT_S: Final = 6 * 24 * 3600.0
MAX_IMAGE_BYTES: Final = 2**31  # 2 GiB: far beyond any meter's flash
_SELECTOR_IDS_SHOWN: Final = 20
# An offered URL stays valid this long past the offer's expiry, so a download started just
# before it does not break halfway.
_URL_MARGIN_S: Final = 600


class OtaError(IotmeterError):
    """An OTA request that cannot be carried out as asked; `str()` is one line for operators."""


class CampaignStatus(NamedTuple):
    """A campaign and its targets; unpacks as (campaign, targets)."""

    campaign: Campaign
    targets: list[OtaTarget]

    @property
    def tally(self) -> Tally:
        return tally(t.state for t in self.targets)

    @property
    def final(self) -> bool:
        return self.campaign.state in CAMPAIGN_FINAL_STATES

    @property
    def all_done(self) -> bool:
        return bool(self.targets) and all(t.state == DONE for t in self.targets)


def firmware_key(version: str, sha256: str) -> str:
    """Where an image lives in the archive: per version and content, so uploading different
    bytes under a taken version can never overwrite the image campaigns point at."""
    return f"{FIRMWARE_PREFIX}/{version}/{sha256[:16]}.bin"


class OtaService:
    def __init__(self, metadata: MetadataStore, archive: ArchiveStore, *,
                 public_key: Ed25519PublicKey | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """With `public_key` (IOTMETER_FIRMWARE_PUBLIC_KEY), only images signed with its
        private key are accepted: what devices that pin it would refuse never gets stored."""
        self.metadata = metadata
        self.archive = archive
        self.public_key = public_key
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock() * 1000)

    # --- firmware ---------------------------------------------------------------------------

    def upload(self, path: str | Path, version: str,
               signature_path: str | Path | None = None) -> Firmware:
        """Store the image file as firmware `version`, with the signature file `iotmeter ota
        sign` wrote for it; see upload_bytes."""
        signature = None
        if signature_path is not None:
            try:
                signature = signing.read_signature_file(Path(signature_path))
            except signing.SigningError as exc:
                raise OtaError(str(exc)) from None
        try:
            image = Path(path).read_bytes()
        except OSError as exc:
            raise OtaError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        return self.upload_bytes(image, version, signature)

    def upload_bytes(self, image: bytes, version: str, signature: str | None = None) -> Firmware:
        """Store an image as firmware `version`. Versions are immutable: uploading the same
        bytes again returns the stored record; different bytes under a taken version are
        refused. With a public key configured, the signature must verify against it."""
        if not protocol.is_valid_label(version):
            raise OtaError(f"{version!r} is not a firmware version (letters, digits, '_.+-', "
                           "at most 64)")
        if not 0 < len(image) <= MAX_IMAGE_BYTES:
            raise OtaError(f"an image must hold 1 to {MAX_IMAGE_BYTES} bytes, not {len(image)}")
        sha256 = hashlib.sha256(image).hexdigest()
        self._check_signature(sha256, signature)
        existing = self.metadata.get_firmware(version)
        if existing is not None:
            return self._same_or_refuse(existing, sha256, len(image))
        fw = Firmware(version, len(image), sha256, firmware_key(version, sha256), self._now(),
                      signature)
        self.archive.put(fw.key, image)  # first the bytes: a record never names a missing image
        try:
            self.metadata.add_firmware(fw)
        except StoreRejected:
            raced = self.metadata.get_firmware(version)
            if raced is None:
                raise
            return self._same_or_refuse(raced, sha256, len(image))
        log.info("firmware uploaded", extra={"event": "firmware_uploaded", "version": version,
                                             "size": fw.size, "sha256": sha256, "key": fw.key})
        return fw

    def _check_signature(self, sha256: str, signature: str | None) -> None:
        if signature is not None and not signing.is_signature(signature):
            raise OtaError("the signature is not a base64 Ed25519 signature (iotmeter ota sign)")
        if self.public_key is None:
            return
        if signature is None:
            raise OtaError("firmware must be signed (IOTMETER_FIRMWARE_PUBLIC_KEY is set): "
                           "sign the image with iotmeter ota sign, upload with --signature")
        if not signing.verify(self.public_key, sha256, signature):
            raise OtaError("the signature does not verify against IOTMETER_FIRMWARE_PUBLIC_KEY "
                           "(another key, or another image); nothing was stored")

    @staticmethod
    def _same_or_refuse(existing: Firmware, sha256: str, size: int) -> Firmware:
        if existing.sha256 == sha256 and existing.size == size:
            return existing
        raise OtaError(f"firmware {existing.version} already exists with other content "
                       f"(sha256 {existing.sha256[:12]}…); upload it under a new version")

    def list_firmware(self) -> list[Firmware]:
        return self.metadata.list_firmware()

    # --- campaigns --------------------------------------------------------------------------

    def start_campaign(
        self,
        version: str,
        *,
        device_ids: Sequence[str] | None = None,
        device_type: str | None = None,
        all_devices: bool = False,
        batch_size: int | None = None,
        batch_pct: float | None = None,
        max_failures_pct: float = DEFAULT_MAX_FAILURES_PCT,
        target_timeout_s: float = DEFAULT_TARGET_TIMEOUT_S,
        created_by: str | None = None,
    ) -> Campaign:
        """Create a campaign; the collector's dispatcher rolls it out. Exactly one of
        `device_ids`, `device_type`, `all_devices` picks the devices; `batch_size` devices
        (or `batch_pct` % of them) update at a time. `created_by` records who started it."""
        if self.metadata.get_firmware(version) is None:
            raise OtaError(f"no firmware {version!r}: upload it first (iotmeter ota upload)")
        if not 0 <= max_failures_pct <= 100:
            raise OtaError(f"max failures {max_failures_pct!r} % is not between 0 and 100")
        if not (math.isfinite(target_timeout_s) and 0 < target_timeout_s <= MAX_TARGET_TIMEOUT_S):
            raise OtaError(f"target timeout {target_timeout_s!r} s is not between 0 and "
                           f"{MAX_TARGET_TIMEOUT_S:g} s")
        selector, targets = self._select(device_ids, device_type, all_devices)
        size = resolve_batch(batch_size, batch_pct, len(targets))
        self._refuse_overlap(targets)
        now = self._now()
        campaign = Campaign(f"camp-{uuid.uuid4().hex[:12]}", version, selector, size,
                            float(max_failures_pct), RUNNING, now, now, None,
                            float(target_timeout_s), created_by)
        self.metadata.create_campaign(campaign, targets)
        log.info("campaign started", extra={
            "event": "campaign_started", "campaign_id": campaign.id, "version": version,
            "targets": len(targets), "batch_size": size, "selector": selector})
        return campaign

    def list_campaigns(self, limit: int = 100) -> list[Campaign]:
        """Newest first."""
        return self.metadata.list_campaigns(limit)

    def status(self, campaign_id: str) -> CampaignStatus:
        campaign = self.metadata.get_campaign(campaign_id)
        if campaign is None:
            raise OtaError(f"no campaign {campaign_id!r}")
        return CampaignStatus(campaign, self.metadata.list_targets(campaign_id))

    def abort(self, campaign_id: str, reason: str = "aborted by the operator") -> Campaign:
        """Stop offering: pending targets are skipped, those mid-update are still followed
        until they finish; then the campaign is `aborted`."""
        campaign = self.status(campaign_id).campaign
        if campaign.state not in CAMPAIGN_OPEN_STATES:
            raise OtaError(f"campaign {campaign_id} is already {campaign.state}")
        if campaign.state == RUNNING:
            self.metadata.update_campaign(campaign_id, state=ABORTING, at=self._now(),
                                          detail=reason)
            log.info("campaign aborting", extra={"event": "campaign_aborting",
                                                 "campaign_id": campaign_id, "reason": reason})
        return self.status(campaign_id).campaign

    def wait(self, campaign_id: str, timeout_s: float | None = None, poll_s: float = 0.5,
             on_change: Callable[[CampaignStatus], None] | None = None) -> CampaignStatus:
        """Until the campaign is final (or `timeout_s` passes): its latest status.
        `on_change` sees every status that differs from the one before."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        seen: CampaignStatus | None = None
        while True:
            try:
                current = self.status(campaign_id)
            except StoreUnavailable:
                if seen is None and deadline is not None and time.monotonic() >= deadline:
                    raise
            else:
                if on_change is not None and (seen is None or current != seen):
                    on_change(current)
                seen = current
                if current.final:
                    return current
            if deadline is not None and time.monotonic() >= deadline and seen is not None:
                return seen
            time.sleep(poll_s)

    def _select(self, device_ids: Sequence[str] | None, device_type: str | None,
                all_devices: bool) -> tuple[str, list[str]]:
        if device_ids is not None and not device_ids:
            device_ids = None  # an empty list chooses nothing; another choice may follow
        chosen = [device_ids is not None, device_type is not None, all_devices]
        if sum(chosen) != 1:
            raise OtaError("choose the devices one way: a device list, a device type or all")
        if device_ids is not None:
            ids = list(dict.fromkeys(device_ids))
            unknown = [d for d in ids if self.metadata.get_device(d) is None]
            if unknown:
                raise OtaError(f"unknown device(s): {_some(unknown)}")
            shown = ",".join(ids[:_SELECTOR_IDS_SHOWN])
            more = len(ids) - _SELECTOR_IDS_SHOWN
            return f"devices={shown}" + (f",+{more} more" if more > 0 else ""), ids
        if device_type is not None:
            ids = [d.device_id for d in self.metadata.list_devices(device_type=device_type)]
            if not ids:
                raise OtaError(f"no device of type {device_type!r} in the registry")
            return f"type={device_type}", ids
        ids = [d.device_id for d in self.metadata.list_devices()]
        if not ids:
            raise OtaError("the registry holds no device")
        return "all", ids

    def _refuse_overlap(self, device_ids: Sequence[str]) -> None:
        """A device updates in one campaign at a time (a device answers a second offer
        'busy'), so a campaign may not take devices another one is still updating."""
        wanted = set(device_ids)
        for state in CAMPAIGN_OPEN_STATES:
            for other in self.metadata.list_campaigns(1000, state=state):
                busy = sorted(t.device_id for t in self.metadata.list_targets(other.id)
                              if t.device_id in wanted and t.state not in TARGET_FINAL_STATES)
                if busy:
                    raise OtaError(f"{_some(busy)} still updating in campaign {other.id}; "
                                   "wait for it to end or abort it")


def resolve_batch(batch_size: int | None, batch_pct: float | None, targets: int) -> int:
    """Devices in flight at a time: `batch_size`, or `batch_pct` % of the targets rounded up
    (at least 1), or DEFAULT_BATCH_SIZE."""
    if batch_size is not None and batch_pct is not None:
        raise OtaError("give a batch size or a batch percentage, not both")
    if batch_pct is not None:
        if not (math.isfinite(batch_pct) and 0 < batch_pct <= 100):
            raise OtaError(f"batch {batch_pct!r} % is not in (0, 100]")
        return max(1, math.ceil(targets * batch_pct / 100))
    if batch_size is None:
        return DEFAULT_BATCH_SIZE
    if batch_size < 1:
        raise OtaError(f"batch size {batch_size} must be at least 1")
    return batch_size


def parse_batch(text: str) -> tuple[int | None, float | None]:
    """'25' -> (25, None); '10%' -> (None, 10.0). ValueError on anything else."""
    text = text.strip()
    if text.endswith("%"):
        pct = float(text[:-1])
        if not (math.isfinite(pct) and 0 < pct <= 100):
            raise ValueError(f"{text!r}: a percentage must be in (0, 100]")
        return None, pct
    size = int(text)
    if size < 1:
        raise ValueError(f"{text!r}: a batch holds at least 1 device")
    return size, None


class RolloutDriver:
    """Advances every open campaign by one step: the collector's dispatcher calls `advance`."""

    def __init__(self, metadata: MetadataStore, publisher: Publisher, links: FirmwareLinks, *,
                 redeliver_after_s: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.metadata = metadata
        self.publisher = publisher
        self.links = links
        self.redeliver_after_ms = int(redeliver_after_s * 1000)
        self._clock = clock
        # When this process last offered each target: spaces repeats without writing a
        # state that could overwrite the device's progress. Lost on restart (one early repeat).
        self._last_offer: dict[tuple[str, str], int] = {}
        self.last_offer_monotonic = float("-inf")  # for the endpoint's drain on stop

    def advance(self, *, offering: bool = True) -> None:
        """One pass; with `offering` False nothing is published (the firmware endpoint is
        down). Raises PublishError (offers left for the next pass) or StoreError."""
        campaigns = [c for state in CAMPAIGN_OPEN_STATES
                     for c in self.metadata.list_campaigns(10_000, state=state)]
        if not campaigns:
            self._last_offer.clear()
            return
        devices = {d.device_id: DeviceView(d.connection_status == "online", d.fw_version)
                   for d in self.metadata.list_devices()}
        for campaign in sorted(campaigns, key=lambda c: c.created_at):
            self._advance(campaign, devices, int(self._clock() * 1000), offering)

    def _advance(self, campaign: Campaign, devices: dict[str, DeviceView], now: int,
                 offering: bool) -> None:
        targets = {t.device_id: t for t in self.metadata.list_targets(campaign.id)}
        plan = plan_rollout(campaign, list(targets.values()), devices, now,
                            redeliver_after_ms=self.redeliver_after_ms)
        for finish in plan.finish:
            done = finish.state == DONE
            if self.metadata.update_target(campaign.id, finish.device_id, state=finish.state,
                                           at=now, progress_pct=100.0 if done else None,
                                           error=None if done else finish.reason):
                log.info("OTA target finished", extra={
                    "event": f"ota_target_{finish.state}", "campaign_id": campaign.id,
                    "device_id": finish.device_id, "reason": finish.reason})
        # A state change and offers never come together: offers only while running.
        self._set_state(campaign, plan.campaign_state, plan.campaign_detail, now)
        if not (plan.offer or plan.reoffer) or not offering or not self.publisher.connected:
            return  # offers wait for the broker or the endpoint; the rest went on above
        fw = self.metadata.get_firmware(campaign.fw_version)
        if fw is None:  # the foreign key makes this a row deleted behind our back
            self._set_state(campaign, "failed", f"firmware {campaign.fw_version} vanished", now)
            return
        for device_id in plan.offer:
            self._offer(campaign, fw, device_id, now, now, first=True)
        for device_id in plan.reoffer:
            target = targets[device_id]
            if now - self._last_offer.get((campaign.id, device_id), 0) >= self.redeliver_after_ms:
                started = target.started_at if target.started_at is not None else now
                self._offer(campaign, fw, device_id, started, now, first=False)

    def _set_state(self, campaign: Campaign, state: str | None, detail: str | None,
                   now: int) -> None:
        if state is None:
            return
        self.metadata.update_campaign(campaign.id, state=state, at=now, detail=detail)
        log.info("campaign state", extra={"event": f"campaign_{state}",
                                          "campaign_id": campaign.id, "detail": detail})

    def _offer(self, campaign: Campaign, fw: Firmware, device_id: str, started: int, now: int,
               *, first: bool) -> None:
        expires = started + int(campaign.target_timeout_s * 1000)
        valid_s = max(60, math.ceil((expires - now) / 1000) + _URL_MARGIN_S)
        url = self.links.url_for(fw, valid_s)
        payload = protocol.encode_ota_offer(campaign.id, fw_version=fw.version, url=url,
                                            sha256=fw.sha256, size=fw.size, ts=now,
                                            expires_ts=max(expires, now + 1),
                                            signature=fw.signature)
        if first:
            # Recorded before publishing, so the device's first report cannot be overwritten
            # by it; the per-target timeout runs from here.
            self.metadata.update_target(campaign.id, device_id, state=OFFERED, at=now,
                                        started=True)
        try:
            self.publisher.publish(protocol.ota_topic(device_id), payload)
        except PublishError:
            if first:
                self.metadata.update_target(campaign.id, device_id, state=PENDING, at=now)
            raise
        self._last_offer[(campaign.id, device_id)] = now
        self.last_offer_monotonic = time.monotonic()
        log.info("firmware offered", extra={
            "event": "ota_offered", "campaign_id": campaign.id, "device_id": device_id,
            "version": fw.version, "repeat": not first})


def _some(items: Sequence[str], shown: int = 5) -> str:
    more = len(items) - shown
    return ", ".join(items[:shown]) + (f" and {more} more" if more > 0 else "")
