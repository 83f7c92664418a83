"""What the dashboard calls: `Runtime.commands` and `Runtime.ota`, against a running collector,
simulated meters and a private mosquitto."""

from __future__ import annotations

from pathlib import Path

from iotmeter_tui.backend.runtime import Runtime
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
        runtime.start()
        try:
            wait_online(runtime.stores.metadata, ids)
            commands = runtime.commands
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
            runtime.ota.upload(image, "3.0.0")
            campaign = runtime.ota.start_campaign("3.0.0", device_ids=ids, batch_size=2)
            assert runtime.ota.list_campaigns()[0].id == campaign.id
            wait_for(lambda: runtime.ota.status(campaign.id).final, timeout_s=30,
                     what="campaign over")
            final, targets = runtime.ota.status(campaign.id)  # unpacks as a pair
            assert final.state == "completed"
            assert [t.state for t in targets] == ["done", "done"]
            assert {d.fw_version for d in sim.devices()} == {"3.0.0"}
        finally:
            runtime.stop()
