"""OTA campaigns end to end: the real collector (dispatcher and firmware endpoint), simulated
meters that really download, verify, install and reboot, and a private mosquitto; on the
embedded stores and (the ten-device rollout) on the production stack with presigned S3 URLs."""

from __future__ import annotations

from pathlib import Path

from iotmeter_tui.backend.broker import free_port
from iotmeter_tui.backend.control.ota import OtaService
from testsupport import MosquittoServer
from testsupport.commands import simulated_fleet, wait_online
from testsupport.fleet import wait_for
from testsupport.harness import StoreAudit, running_collector, settings_for

IMAGE = bytes(range(256)) * 256  # 64 KiB
NEW = "2.0.0"


def test_a_campaign_updates_ten_devices(tmp_path: Path, private_mosquitto: MosquittoServer,
                                        stack: dict[str, str]) -> None:
    settings = settings_for(tmp_path, stack)
    url = private_mosquitto.url
    with running_collector(settings, url), \
            simulated_fleet(url, tmp_path / "sim", 10) as (sim, ids):
        audit = StoreAudit(settings)
        metadata = audit.stores.metadata
        wait_online(metadata, ids)
        ota = OtaService(metadata, audit.stores.archive)
        ota.upload_bytes(IMAGE, NEW)
        campaign = ota.start_campaign(NEW, all_devices=True, batch_size=4)
        status = ota.wait(campaign.id, timeout_s=60)
        assert status.campaign.state == "completed", status
        assert status.campaign.detail == "all 10 targets done"
        assert [(t.state, t.attempts, t.progress_pct) for t in status.targets] == [
            ("done", 1, 100.0)] * 10
        assert {metadata.get_device(d).fw_version for d in ids} == {NEW}  # type: ignore[union-attr]
        assert {d.fw_version for d in sim.devices()} == {NEW}
        audit.close()


def test_a_corrupted_image_fails_its_targets_and_aborts_the_campaign(
        tmp_path: Path, private_mosquitto: MosquittoServer) -> None:
    settings = settings_for(tmp_path, {})
    url = private_mosquitto.url
    with running_collector(settings, url), \
            simulated_fleet(url, tmp_path / "sim", 10) as (sim, ids):
        audit = StoreAudit(settings)
        metadata, archive = audit.stores.metadata, audit.stores.archive
        wait_online(metadata, ids)
        ota = OtaService(metadata, archive)
        fw = ota.upload_bytes(IMAGE, NEW)
        archive.put(fw.key, IMAGE[:1000] + b"\x00" + IMAGE[1001:])  # bit rot, same size
        campaign = ota.start_campaign(NEW, all_devices=True, batch_size=3, max_failures_pct=20)
        status = ota.wait(campaign.id, timeout_s=60)
        counts = status.tally
        assert status.campaign.state == "aborted", status
        assert "over the 20% limit" in (status.campaign.detail or "")
        assert counts.done == 0 and counts.failed >= 3 and counts.skipped >= 1
        assert counts.failed + counts.skipped == 10
        failed = [t for t in status.targets if t.state == "failed"]
        assert all("sha256 mismatch" in (t.error or "") for t in failed)
        assert {d.fw_version for d in sim.devices()} == {"1.0.0"}
        audit.close()


def test_a_device_away_for_the_whole_campaign_times_out(
        tmp_path: Path, private_mosquitto: MosquittoServer) -> None:
    settings = settings_for(tmp_path, {})
    url = private_mosquitto.url
    with running_collector(settings, url), \
            simulated_fleet(url, tmp_path / "sim", 3) as (sim, ids):
        audit = StoreAudit(settings)
        metadata = audit.stores.metadata
        wait_online(metadata, ids)
        away = ids[0]
        sim.power_off([away])
        wait_for(lambda: metadata.get_device(away).connection_status == "offline",  # type: ignore[union-attr]
                 what="away offline")
        ota = OtaService(metadata, audit.stores.archive)
        ota.upload_bytes(IMAGE, NEW)
        campaign = ota.start_campaign(NEW, all_devices=True, batch_size=3,
                                      max_failures_pct=50, target_timeout_s=4)
        status = ota.wait(campaign.id, timeout_s=30)
        assert status.campaign.state == "failed"
        assert status.campaign.detail == "1 of 3 targets not updated (0 failed, 1 timed out)"
        states = {t.device_id: t.state for t in status.targets}
        assert states == {away: "timed_out", ids[1]: "done", ids[2]: "done"}
        audit.close()


def test_a_restart_mid_campaign_resumes_it(tmp_path: Path,
                                           private_mosquitto: MosquittoServer) -> None:
    # A fixed endpoint port, as in production: offers made before the restart stay valid.
    settings = settings_for(tmp_path, {}, firmware_listen=f"127.0.0.1:{free_port()}")
    url = private_mosquitto.url
    with simulated_fleet(url, tmp_path / "sim", 6) as (sim, ids):
        audit = StoreAudit(settings)
        metadata = audit.stores.metadata
        ota = OtaService(metadata, audit.stores.archive)
        with running_collector(settings, url):
            wait_online(metadata, ids)
            ota.upload_bytes(IMAGE, NEW)
            campaign = ota.start_campaign(NEW, all_devices=True, batch_size=2)
            wait_for(lambda: ota.status(campaign.id).tally.done >= 2, timeout_s=30,
                     interval_s=0.02, what="a first batch done")
        # Stopped mid-way: nobody offers, the devices carry on, the broker keeps their reports.
        middle = ota.status(campaign.id)
        assert middle.campaign.state == "running" and middle.tally.pending >= 1, middle
        with running_collector(settings, url):
            status = ota.wait(campaign.id, timeout_s=60)
        assert status.campaign.state == "completed", status
        assert all(t.state == "done" and t.attempts == 1 for t in status.targets)
        assert {d.fw_version for d in sim.devices()} == {NEW}
        assert {metadata.get_device(d).fw_version for d in ids} == {NEW}  # type: ignore[union-attr]
        audit.close()
