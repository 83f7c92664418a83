"""What the dashboard calls: the runtime's control services (commands, OTA, device
administration), opened by its start, against a running collector, simulated meters and a
private mosquitto; and a broker that is down, which is a state, never an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotmeter_tui.backend.runtime import ControlNotReady, Runtime
from testsupport import MosquittoServer
from testsupport.commands import simulated_fleet, wait_online
from testsupport.fleet import wait_for
from testsupport.harness import running_collector, settings_for


def test_runtime_sends_commands_and_runs_campaigns(tmp_path: Path,
                                                   private_mosquitto: MosquittoServer) -> None:
    url = private_mosquitto.url
    settings = settings_for(tmp_path, {}, mqtt_url=url)
    runtime = Runtime(settings, simulate="no", start_collector=False)
    with running_collector(settings, url), \
            simulated_fleet(url, tmp_path / "sim", 2) as (sim, ids):
        assert runtime.capabilities.control and runtime.control is None  # said, not opened
        runtime.start()
        try:
            control = runtime.control
            assert control is not None  # opened by start(), not by the first read
            assert runtime.open_control() is control  # once
            wait_online(runtime.stores.metadata, ids)
            commands = control.commands
            wait_for(lambda: commands.publisher is not None and commands.publisher.connected,
                     timeout_s=10, what="the dashboard's publisher connected")
            sent = commands.send(ids[0], "ping", {}, 20)
            # Published at once (the device is online), so never left queued; a quick device
            # may even have answered before send() read the state back.
            assert sent.state in {"sent", "accepted", "done"}
            assert commands.wait(sent.id, timeout_s=15).state == "done"
            assert [c.id for c in commands.list(device_id=ids[0])] == [sent.id]

            image = tmp_path / "fw.bin"
            image.write_bytes(b"\x01" * 20_000)
            ota = control.ota
            ota.upload(image, "3.0.0")
            campaign = ota.start_campaign("3.0.0", device_ids=ids, batch_size=2)
            assert ota.list_campaigns()[0].id == campaign.id
            wait_for(lambda: ota.status(campaign.id).final, timeout_s=30,
                     what="campaign over")
            final, targets = ota.status(campaign.id)  # unpacks as a pair
            assert final.state == "completed"
            assert [t.state for t in targets] == ["done", "done"]
            assert {d.fw_version for d in sim.devices()} == {"3.0.0"}
        finally:
            runtime.stop()


def test_control_opens_while_the_broker_is_down_and_connects_when_it_is_back(
        tmp_path: Path, private_mosquitto: MosquittoServer) -> None:
    url = private_mosquitto.url
    private_mosquitto.stop()
    runtime = Runtime(settings_for(tmp_path, {}, mqtt_url=url), simulate="no",
                      start_collector=False)
    runtime.start()  # no error: a broker that is down is a state
    try:
        control = runtime.control
        assert control is not None
        publisher = control.commands.publisher
        assert publisher is not None and not publisher.connected
        control.devices.create("dc-0001")
        queued = control.commands.send("dc-0001", "ping", {}, 30)
        assert queued.state == "queued"  # stored; the collector's dispatcher delivers it
        private_mosquitto.start()
        wait_for(lambda: publisher.connected, timeout_s=30, what="the publisher reconnected")
    finally:
        runtime.stop()


def test_control_waits_for_the_runtimes_own_broker(tmp_path: Path) -> None:
    """Before start() has its embedded broker up there is no URL to publish to: opening says
    so (the views show it as a status) instead of opening services that never publish."""
    runtime = Runtime(settings_for(tmp_path, {}), simulate="no", start_collector=False)
    try:
        with pytest.raises(ControlNotReady, match="embedded broker"):
            runtime.open_control()
        assert runtime.control is None
        runtime.start()
        control = runtime.control
        assert control is not None
        publisher = control.commands.publisher
        assert publisher is not None
        wait_for(lambda: publisher.connected, timeout_s=30,
                 what="connected to the embedded broker")
    finally:
        runtime.stop()
