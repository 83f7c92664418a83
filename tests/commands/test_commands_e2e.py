"""Commands end to end: the real collector (with its dispatcher), simulated meters and a
private mosquitto, on the embedded stores and (ping) on the production stack. Every command
here is created without a broker at hand, so the collector's dispatcher delivers it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from iotmeter_tui.backend.control.commands import CommandService
from testsupport import MosquittoServer
from testsupport.commands import SilentDevice, simulated_fleet, wait_online
from testsupport.fleet import wait_for
from testsupport.harness import StoreAudit, running_collector, settings_for


def test_device_answers_end_commands(tmp_path: Path, private_mosquitto: MosquittoServer,
                                     stack: dict[str, str]) -> None:
    settings = settings_for(tmp_path, stack)
    url = private_mosquitto.url
    with running_collector(settings, url), \
            simulated_fleet(url, tmp_path / "sim", 1) as (sim, [device]):
        audit = StoreAudit(settings)
        wait_online(audit.stores.metadata, [device])
        commands = CommandService(audit.stores.metadata)

        ping = commands.send(device, "ping", timeout_s=30)
        # send() reads the row back: the dispatcher (every 0.5 s) may have sent it already.
        assert ping.state in ("queued", "sent")
        done = commands.wait(ping.id, timeout_s=20)
        assert (done.state, done.result, done.detail, done.attempts) == (
            "done", "done", "pong", 1)

        # The device refuses a bad parameter: rejected with its reason.
        bad = commands.send(device, "set_interval", {"interval_s": -1}, timeout_s=30)
        refused = commands.wait(bad.id, timeout_s=20)
        assert refused.state == "rejected" and "interval_s=-1" in (refused.detail or "")

        # reboot: accepted, a restart, then done from the new boot.
        boot = sim.devices()[0].boot
        reboot = commands.wait(commands.send(device, "reboot", timeout_s=30).id, timeout_s=25)
        assert reboot.state == "done" and reboot.detail == f"rebooted, boot {boot + 1}"
        assert reboot.attempts == 1, "accepted is an answer: no repeat while it reboots"
        audit.close()


def test_a_command_for_an_offline_device_waits_for_it_until_expiry(
        tmp_path: Path, private_mosquitto: MosquittoServer) -> None:
    settings = settings_for(tmp_path, {})
    url = private_mosquitto.url
    with running_collector(settings, url), \
            simulated_fleet(url, tmp_path / "sim", 2) as (sim, [back, away]):
        audit = StoreAudit(settings)
        metadata = audit.stores.metadata
        wait_online(metadata, [back, away])
        sim.power_off([back, away])
        wait_for(lambda: all(metadata.get_device(d).connection_status == "offline"  # type: ignore[union-attr]
                             for d in (back, away)), what="both offline")
        commands = CommandService(metadata)
        later = commands.send(back, "ping", timeout_s=30)
        never = commands.send(away, "ping", timeout_s=2)
        time.sleep(1.0)
        assert [(c.state, c.attempts) for c in commands.list()] == [("queued", 0)] * 2

        sim.power_on([back])
        delivered = commands.wait(later.id, timeout_s=20)
        assert (delivered.state, delivered.attempts) == ("done", 1)
        expired = commands.wait(never.id, timeout_s=20)
        assert (expired.state, expired.attempts) == ("timed_out", 0)
        assert expired.detail == "the device was not online before the command expired"
        audit.close()


def test_a_device_that_never_answers_gets_repeats_then_time_out(
        tmp_path: Path, private_mosquitto: MosquittoServer,
        silent_device: Callable[[str, str], SilentDevice]) -> None:
    settings = settings_for(tmp_path, {}, redeliver_after_s=1)
    url = private_mosquitto.url
    with running_collector(settings, url):
        mute = silent_device(url, "mute-1")
        audit = StoreAudit(settings)
        wait_online(audit.stores.metadata, ["mute-1"])
        commands = CommandService(audit.stores.metadata)
        sent = commands.send("mute-1", "ping", timeout_s=3.5)
        final = commands.wait(sent.id, timeout_s=20)
        assert final.state == "timed_out" and final.result is None
        assert final.attempts >= 3
        assert final.detail == (f"no answer from the device before the command expired "
                                f"({final.attempts} deliveries)")
        received = mute.commands()
        assert {m.id for m in received} == {sent.id} and len(received) == final.attempts
        audit.close()


def test_broker_down_while_sending_delivers_once_it_is_back(
        tmp_path: Path, private_mosquitto: MosquittoServer) -> None:
    settings = settings_for(tmp_path, {})
    url = private_mosquitto.url
    with running_collector(settings, url), \
            simulated_fleet(url, tmp_path / "sim", 1) as (_sim, [device]):
        audit = StoreAudit(settings)
        wait_online(audit.stores.metadata, [device])
        private_mosquitto.stop()
        commands = CommandService(audit.stores.metadata)
        cmd = commands.send(device, "ping", timeout_s=60)
        time.sleep(1.5)
        held = commands.get(cmd.id)
        assert held is not None and (held.state, held.attempts) == ("queued", 0)
        private_mosquitto.start()
        final = commands.wait(cmd.id, timeout_s=45)
        assert (final.state, final.detail) == ("done", "pong")
        audit.close()
