"""Commands as a server sends them: accepted then done, rejections, idempotency by
command_id, expiry, reboot (boot + 1, seq from 0), and boot persistence across restarts."""

from __future__ import annotations

import time
from typing import Any

from iotmeter_tui.backend import protocol


def results(recorder: Any, command_id: str) -> list[tuple[str, str]]:
    return [(a["result"], a["detail"]) for a in recorder.acks(command_id)]


def test_commands(mosquitto: Any, prefix: str, recorder_factory: Any, controller_factory: Any,
                  server_factory: Any) -> None:
    recorder = recorder_factory(mosquitto.url, prefix)
    server = server_factory(mosquitto.url)
    controller = controller_factory(mosquitto.url, prefix)
    [device] = controller.start(1, "dc", rate=5)
    recorder.wait_for(lambda: recorder.of(protocol.HELLO, device), what="hello")

    ping = server.command(device, "ping")
    recorder.wait_for(lambda: len(recorder.acks(ping)) == 2, what="ping acks")
    assert results(recorder, ping) == [("accepted", ""), ("done", "pong")]

    unknown = server.command(device, "self_destruct")
    recorder.wait_for(lambda: recorder.acks(unknown), what="unknown command ack")
    assert results(recorder, unknown) == [("rejected", "unknown command 'self_destruct'")]

    expired = server.command(device, "ping", age_s=10, ttl_s=5)
    recorder.wait_for(lambda: recorder.acks(expired), what="expired ack")
    assert results(recorder, expired) == [("rejected", "expired")]

    bad = server.command(device, "set_config", {"colour": "red"})
    recorder.wait_for(lambda: recorder.acks(bad), what="set_config ack")
    assert results(recorder, bad) == [("rejected", "unknown config key(s): colour")]

    # The same command id twice: acted on once, the outcome repeated.
    repeated = server.command(device, "set_interval", {"interval_s": 0.05})
    recorder.wait_for(lambda: len(recorder.acks(repeated)) == 2, what="set_interval acks")
    server.command(device, "set_interval", {"interval_s": 2}, command_id=repeated)
    recorder.wait_for(lambda: len(recorder.acks(repeated)) == 3, what="repeated final ack")
    assert results(recorder, repeated) == [
        ("accepted", ""), ("done", "interval_s=0.05"), ("done", "interval_s=0.05")]
    assert controller.devices()[0].interval_s == 0.05  # the second one did not act

    config = server.command(device, "set_config",
                            {"heartbeat_s": 0.2, "report_temperature": False})
    recorder.wait_for(lambda: len(recorder.acks(config)) == 2, what="set_config acks")
    assert results(recorder, config)[1] == ("done", "heartbeat_s=0.2, report_temperature=False")
    count = len(recorder.of(protocol.HELLO, device))
    recorder.wait_for(lambda: len(recorder.of(protocol.HELLO, device)) >= count + 3,
                      what="hellos at the new heartbeat")
    assert "temperature_c" not in recorder.of(protocol.TELEMETRY, device)[-1].data

    # Every ack is a sequenced message like any other: one boot, no gap.
    [seqs] = recorder.seqs().values()
    assert sorted(seqs) == list(range(len(seqs)))


def test_reboot_and_boot_persistence(mosquitto: Any, prefix: str, recorder_factory: Any,
                                     controller_factory: Any, server_factory: Any) -> None:
    recorder = recorder_factory(mosquitto.url, prefix)
    server = server_factory(mosquitto.url)
    controller = controller_factory(mosquitto.url, prefix)
    [device] = controller.start(1, "ac", rate=10)
    recorder.wait_for(lambda: len(recorder.of(protocol.TELEMETRY, device)) >= 5)

    reboot = server.command(device, "reboot")
    recorder.wait_for(lambda: len(recorder.acks(reboot)) == 2, what="reboot done")
    assert results(recorder, reboot) == [("accepted", ""), ("done", "rebooted, boot 2")]
    server.command(device, "reboot", command_id=reboot)  # a duplicate must not reboot again
    recorder.wait_for(lambda: len(recorder.acks(reboot)) == 3, what="repeated reboot ack")
    time.sleep(0.5)
    controller.stop()

    seqs = recorder.seqs()
    assert set(seqs) == {(device, 1), (device, 2)}
    assert seqs[(device, 1)] == list(range(len(seqs[(device, 1)])))
    assert seqs[(device, 2)] == list(range(len(seqs[(device, 2)])))
    first_of_boot_2 = next(m for m in recorder.of(protocol.HELLO, device) if m.boot == 2)
    assert first_of_boot_2.seq == 0
    acks = [m for m in recorder.of(protocol.COMMAND_ACK, device) if m.data["command_id"] == reboot]
    assert [(m.boot, m.data["result"]) for m in acks] == [(1, "accepted"), (2, "done"),
                                                          (2, "done")]
    statuses = [m.data["state"] for m in recorder.of(protocol.STATUS, device)]
    assert statuses == ["online", "offline", "online", "offline"]

    # A new simulator process on the same state file: the device boots for the third time.
    again = controller_factory(mosquitto.url, prefix)
    again.start(1, "ac", rate=10)
    recorder.wait_for(lambda: (device, 3) in recorder.seqs(), what="boot 3")
    assert again.devices()[0].boot == 3
