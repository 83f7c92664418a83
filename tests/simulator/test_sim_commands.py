"""Commands as a server sends them: instant ones answer done, reboot accepted then done;
rejections, idempotency by command_id (across restarts too), expiry, reboot (boot + 1, seq
from 0), and boot persistence across simulator restarts."""

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
    recorder.wait_for(lambda: recorder.acks(ping), what="ping ack")
    assert results(recorder, ping) == [("done", "pong")]

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
    recorder.wait_for(lambda: recorder.acks(repeated), what="set_interval ack")
    server.command(device, "set_interval", {"interval_s": 2}, command_id=repeated)
    recorder.wait_for(lambda: len(recorder.acks(repeated)) == 2, what="repeated ack")
    assert results(recorder, repeated) == [("done", "interval_s=0.05"), ("done", "interval_s=0.05")]
    assert controller.devices()[0].interval_s == 0.05  # the second one did not act

    config = server.command(device, "set_config",
                            {"heartbeat_s": 0.2, "report_temperature": False})
    recorder.wait_for(lambda: recorder.acks(config), what="set_config ack")
    assert results(recorder, config) == [("done", "heartbeat_s=0.2, report_temperature=False")]
    count = len(recorder.of(protocol.HELLO, device))
    recorder.wait_for(lambda: len(recorder.of(protocol.HELLO, device)) >= count + 3,
                      what="hellos at the new heartbeat")
    assert "temperature_c" not in recorder.of(protocol.TELEMETRY, device)[-1].data

    # Every ack is a sequenced message like any other: one boot, no gap.
    recorder.assert_clean_sequence(device, boot=1)


def test_reboot_and_boot_persistence(mosquitto: Any, prefix: str, recorder_factory: Any,
                                     controller_factory: Any, server_factory: Any) -> None:
    recorder = recorder_factory(mosquitto.url, prefix)
    server = server_factory(mosquitto.url)
    controller = controller_factory(mosquitto.url, prefix)
    [device] = controller.start(1, "ac", rate=10)
    recorder.wait_for(lambda: len(recorder.of(protocol.TELEMETRY, device)) >= 5)

    reboot = server.command(device, "reboot")
    recorder.wait_for(lambda: len(recorder.acks(reboot)) == 2, what="reboot done")
    assert results(recorder, reboot) == [("accepted", "rebooting"), ("done", "rebooted, boot 2")]
    server.command(device, "reboot", command_id=reboot)  # a duplicate must not reboot again
    recorder.wait_for(lambda: len(recorder.acks(reboot)) == 3, what="repeated reboot ack")
    time.sleep(0.5)
    controller.stop()

    assert set(recorder.seqs()) == {(device, 1), (device, 2)}
    recorder.assert_clean_sequence(device, boot=1)
    recorder.assert_clean_sequence(device, boot=2)  # seq from 0 again, hello first
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
    # It still knows the reboot command (the state file keeps recent ids): no fourth boot.
    server.command(device, "reboot", command_id=reboot)
    recorder.wait_for(lambda: len(recorder.acks(reboot)) == 4, what="ack after restart")
    assert recorder.acks(reboot)[-1]["result"] == "done"
    time.sleep(0.5)
    assert again.devices()[0].boot == 3
