"""OtaService and RolloutDriver over a real SQLite store and archive directory, with a fake
broker: uploads, device selection, batches, offers on the wire, aborts, and what a broker
outage does to a rollout."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.control.ota import OtaError, OtaService, RolloutDriver, parse_batch
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.factory import open_metadata
from iotmeter_tui.backend.stores.metadata import Firmware, MetadataStore
from testsupport.commands import FakePublisher, register

IMAGE = b"\x7fELF firmware 2.0.0 " * 500


class Clock:
    def __init__(self) -> None:
        self.at = 1_800_000_000.0

    def __call__(self) -> float:
        return self.at


class Links:
    def url_for(self, fw: Firmware, valid_s: int) -> str:
        return f"http://fw.test/firmware/{fw.version}?valid={valid_s}"


@dataclass
class World:
    metadata: MetadataStore
    archive: DirectoryArchive
    ota: OtaService
    broker: FakePublisher
    driver: RolloutDriver
    clock: Clock


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    metadata = open_metadata(f"sqlite:///{tmp_path}/meta.db")
    archive = DirectoryArchive(tmp_path / "archive")
    clock = Clock()
    broker = FakePublisher()
    yield World(metadata, archive, OtaService(metadata, archive, clock=clock), broker,
                RolloutDriver(metadata, broker, Links(), redeliver_after_s=10, clock=clock),
                clock)
    metadata.close()


def test_upload_stores_the_image_with_its_digest(world: World, tmp_path: Path) -> None:
    path = tmp_path / "image.bin"
    path.write_bytes(IMAGE)
    fw = world.ota.upload(path, "2.0.0")
    assert (fw.version, fw.size, fw.sha256) == ("2.0.0", len(IMAGE),
                                                hashlib.sha256(IMAGE).hexdigest())
    assert fw.key.startswith("_firmware/2.0.0/")
    assert world.archive.get(fw.key) == IMAGE
    assert world.ota.upload_bytes(IMAGE, "2.0.0") == fw, "the same bytes again: the same record"
    with pytest.raises(OtaError, match="already exists with other content"):
        world.ota.upload_bytes(IMAGE + b"!", "2.0.0")
    assert world.archive.get(fw.key) == IMAGE, "a taken version's image is never replaced"
    assert world.ota.list_firmware() == [fw]


@pytest.mark.parametrize(("image", "version", "message"), [
    (b"", "2.0.0", "1 to"), (IMAGE, "2.0.0 beta", "not a firmware version"),
    (IMAGE, "", "not a firmware version")])
def test_bad_uploads_are_refused(world: World, image: bytes, version: str, message: str) -> None:
    with pytest.raises(OtaError, match=message):
        world.ota.upload_bytes(image, version)


def test_upload_of_a_missing_file(world: World, tmp_path: Path) -> None:
    with pytest.raises(OtaError, match="cannot read"):
        world.ota.upload(tmp_path / "nope.bin", "2.0.0")


def test_devices_are_chosen_by_list_type_or_all(world: World) -> None:
    for device_id in ("dc-1", "dc-2"):
        register(world.metadata, device_id)
    register(world.metadata, "ac-1", device_type="power_meter_ac")
    world.ota.upload_bytes(IMAGE, "2.0.0")

    def targets(**how: object) -> list[str]:
        world.clock.at += 1
        campaign = world.ota.start_campaign("2.0.0", **how)  # type: ignore[arg-type]
        world.ota.abort(campaign.id)
        world.metadata.update_campaign(campaign.id, state="aborted", at=0)
        for t in world.metadata.list_targets(campaign.id):
            world.metadata.update_target(campaign.id, t.device_id, state="skipped", at=0)
        return [t.device_id for t in world.metadata.list_targets(campaign.id)]

    assert targets(device_ids=["dc-2", "dc-1", "dc-2"]) == ["dc-1", "dc-2"]
    assert targets(device_type="power_meter_ac") == ["ac-1"]
    assert targets(all_devices=True) == ["ac-1", "dc-1", "dc-2"]
    assert world.metadata.list_campaigns(1)[0].selector == "all"


@pytest.mark.parametrize(("how", "message"), [
    ({"device_ids": ["dc-9"]}, "unknown device"),
    ({"device_type": "power_meter_ac"}, "no device of type"),
    ({}, "choose the devices one way"),
    ({"device_ids": ["dc-1"], "all_devices": True}, "choose the devices one way"),
    ({"all_devices": True, "max_failures_pct": 120}, "max failures"),
    ({"all_devices": True, "target_timeout_s": 0}, "target timeout"),
    ({"all_devices": True, "batch_size": 0}, "batch size"),
    ({"all_devices": True, "batch_size": 2, "batch_pct": 10}, "not both"),
])
def test_campaigns_that_cannot_start(world: World, how: dict[str, object], message: str) -> None:
    register(world.metadata, "dc-1")
    world.ota.upload_bytes(IMAGE, "2.0.0")
    with pytest.raises(OtaError, match=message):
        world.ota.start_campaign("2.0.0", **how)  # type: ignore[arg-type]
    assert world.metadata.list_campaigns() == []


def test_firmware_must_be_uploaded_first(world: World) -> None:
    register(world.metadata, "dc-1")
    with pytest.raises(OtaError, match="upload it first"):
        world.ota.start_campaign("9.9.9", all_devices=True)


def test_a_device_updates_in_one_campaign_at_a_time(world: World) -> None:
    register(world.metadata, "dc-1")
    register(world.metadata, "dc-2")
    world.ota.upload_bytes(IMAGE, "2.0.0")
    first = world.ota.start_campaign("2.0.0", device_ids=["dc-1"])
    with pytest.raises(OtaError, match=f"dc-1 still updating in campaign {first.id}"):
        world.ota.start_campaign("2.0.0", all_devices=True)
    world.ota.start_campaign("2.0.0", device_ids=["dc-2"])  # no overlap: fine


def test_batch_sizes() -> None:
    assert parse_batch("25") == (25, None)
    assert parse_batch("10%") == (None, 10.0)
    for bad in ("0", "-1", "0%", "101%", "abc", "1.5"):
        with pytest.raises(ValueError):
            parse_batch(bad)


def test_a_percentage_batch_rounds_up(world: World) -> None:
    for i in range(7):
        register(world.metadata, f"dc-{i}")
    world.ota.upload_bytes(IMAGE, "2.0.0")
    assert world.ota.start_campaign("2.0.0", all_devices=True, batch_pct=30).batch_size == 3


def test_offers_go_out_batch_by_batch_with_everything_a_device_needs(world: World) -> None:
    for i in range(5):
        register(world.metadata, f"dc-{i}")
    fw = world.ota.upload_bytes(IMAGE, "2.0.0")
    campaign = world.ota.start_campaign("2.0.0", all_devices=True, batch_size=2,
                                        target_timeout_s=120)
    world.driver.advance()
    offers = world.broker.decoded()
    assert [world.broker.sent[i][0] for i in range(2)] == [protocol.ota_topic("dc-0"),
                                                           protocol.ota_topic("dc-1")]
    offer = offers[0]
    assert offer.id == campaign.id
    assert {k: offer.body[k] for k in ("fw_version", "sha256", "size")} == {
        "fw_version": "2.0.0", "sha256": fw.sha256, "size": fw.size}
    assert offer.expires_ts - offer.ts == 120_000
    assert offer.body["url"].startswith("http://fw.test/firmware/2.0.0")
    states = {t.device_id: (t.state, t.attempts) for t in world.ota.status(campaign.id).targets}
    assert states == {"dc-0": ("offered", 1), "dc-1": ("offered", 1), "dc-2": ("pending", 0),
                      "dc-3": ("pending", 0), "dc-4": ("pending", 0)}
    world.driver.advance()
    assert len(world.broker.sent) == 2, "the window is full: nothing more"
    # dc-0 reboots into 2.0.0 (its hello updates the registry): done, and dc-2 is offered.
    register(world.metadata, "dc-0", fw="2.0.0", at=5000)
    world.driver.advance()
    status = world.ota.status(campaign.id)
    assert {t.device_id: t.state for t in status.targets if t.state != "pending"} == {
        "dc-0": "done", "dc-1": "offered", "dc-2": "offered"}


def test_an_unanswered_offer_is_repeated_with_the_same_expiry(world: World) -> None:
    register(world.metadata, "dc-1")
    world.ota.upload_bytes(IMAGE, "2.0.0")
    world.ota.start_campaign("2.0.0", all_devices=True, target_timeout_s=60)
    world.driver.advance()
    world.clock.at += 5
    world.driver.advance()
    world.clock.at += 6
    world.driver.advance()
    first, repeat = world.broker.decoded()
    assert first.id == repeat.id and first.expires_ts == repeat.expires_ts
    assert repeat.ts - first.ts == 11_000


def test_broker_outage_holds_offers_but_not_timeouts(world: World) -> None:
    register(world.metadata, "dc-1")
    register(world.metadata, "dc-2")
    world.ota.upload_bytes(IMAGE, "2.0.0")
    campaign = world.ota.start_campaign("2.0.0", all_devices=True, batch_size=1,
                                        target_timeout_s=30, max_failures_pct=100)
    world.driver.advance()
    world.broker.connected = False
    world.clock.at += 31
    world.driver.advance()
    states = {t.device_id: t.state for t in world.ota.status(campaign.id).targets}
    assert states == {"dc-1": "timed_out", "dc-2": "pending"}
    assert len(world.broker.sent) == 1
    # A broker that takes the connection but never acknowledges: the offer is taken back.
    world.broker.connected, world.broker.fail = True, True
    with pytest.raises(Exception, match="no PUBACK"):
        world.driver.advance()
    (dc2,) = [t for t in world.ota.status(campaign.id).targets if t.device_id == "dc-2"]
    assert dc2.state == "pending"
    world.broker.fail = False
    world.driver.advance()
    world.clock.at += 31
    world.driver.advance()
    status = world.ota.status(campaign.id)
    assert status.campaign.state == "failed" and status.tally.timed_out == 2


def test_an_operator_abort_skips_what_was_not_offered(world: World) -> None:
    for i in range(3):
        register(world.metadata, f"dc-{i}")
    world.ota.upload_bytes(IMAGE, "2.0.0")
    campaign = world.ota.start_campaign("2.0.0", all_devices=True, batch_size=1)
    world.driver.advance()
    assert world.ota.abort(campaign.id).state == "aborting"
    world.driver.advance()
    register(world.metadata, "dc-0", fw="2.0.0", at=5000)  # the one under way finishes
    world.driver.advance()
    campaign_now, targets = world.ota.status(campaign.id)
    assert campaign_now.state == "aborted" and campaign_now.detail == "aborted by the operator"
    assert [t.state for t in targets] == ["done", "skipped", "skipped"]
    with pytest.raises(OtaError, match="already aborted"):
        world.ota.abort(campaign.id)
    with pytest.raises(OtaError, match="no campaign"):
        world.ota.status("camp-nope")
