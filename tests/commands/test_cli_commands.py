"""The real `iotmeter command ...` and `iotmeter ota ...` in child processes, against a running
collector, simulated meters and a private mosquitto: what they print and how they exit."""

from __future__ import annotations

import json
from pathlib import Path

from iotmeter_tui.backend.broker import EmbeddedBroker, free_port, running_broker_url
from testsupport import MosquittoServer
from testsupport.commands import run_cli, simulated_fleet, wait_online
from testsupport.harness import StoreAudit, running_collector, settings_for


def test_command_send_list_show(tmp_path: Path, private_mosquitto: MosquittoServer) -> None:
    settings = settings_for(tmp_path, {})
    url = private_mosquitto.url
    with running_collector(settings, url), \
            simulated_fleet(url, tmp_path / "sim", 1) as (_sim, [device]):
        audit = StoreAudit(settings)
        wait_online(audit.stores.metadata, [device])

        ping = run_cli(settings, url, "command", "send", device, "ping", "--wait")
        assert ping.returncode == 0, ping.stderr
        ping_id, outcome = ping.stdout.splitlines()
        assert ping_id.startswith("cmd-") and outcome == "done: pong"

        tuned = run_cli(settings, url, "command", "send", device, "set_interval",
                        "--param", "interval_s=0.5", "--timeout", "20", "--wait")
        assert tuned.returncode == 0, tuned.stderr
        assert tuned.stdout.splitlines()[1] == "done: interval_s=0.5"

        unknown = run_cli(settings, url, "command", "send", device, "self_destruct", "--wait")
        assert unknown.returncode == 1
        unknown_id, outcome = unknown.stdout.splitlines()
        assert outcome.startswith("rejected: unknown command 'self_destruct'")

        # Without --wait the id alone, exit 0; the collector delivers it.
        quick = run_cli(settings, url, "command", "send", device, "ping")
        assert quick.returncode == 0 and quick.stdout.strip().startswith("cmd-")
        shown = run_cli(settings, url, "command", "show", quick.stdout.strip(), "--wait")
        assert shown.returncode == 0 and shown.stdout.splitlines()[1] == "done: pong"

        listed = run_cli(settings, url, "command", "list", "--device", device, "--json")
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        tuned_id, quick_id = tuned.stdout.split()[0], quick.stdout.strip()
        assert [(r["id"], r["state"]) for r in rows] == [
            (quick_id, "done"), (unknown_id, "rejected"), (tuned_id, "done"), (ping_id, "done")]
        rejected = run_cli(settings, url, "command", "list", "--state", "rejected")
        assert rejected.returncode == 0 and unknown_id in rejected.stdout
        assert ping_id not in rejected.stdout

        nobody = run_cli(settings, url, "command", "send", "nobody-1", "ping")
        assert nobody.returncode == 1 and nobody.stdout == ""
        assert nobody.stderr.strip() == ("iotmeter: unknown device 'nobody-1': the registry "
                                         "has never heard it")

        # The broker this CLI was given is down: the command is stored all the same and the
        # collector (on the real broker) delivers it.
        dead = f"mqtt://127.0.0.1:{free_port()}"
        offline = run_cli(settings, dead, "command", "send", device, "ping", "--wait")
        assert offline.returncode == 0, offline.stderr
        assert "not reachable" in offline.stderr and "queued" in offline.stderr
        assert offline.stdout.splitlines()[1] == "done: pong"
        audit.close()


def test_ota_upload_start_status(tmp_path: Path, private_mosquitto: MosquittoServer) -> None:
    settings = settings_for(tmp_path, {})
    url = private_mosquitto.url
    image = tmp_path / "meter-2.0.0.bin"
    image.write_bytes(b"firmware 2.0.0\n" * 4000)
    with running_collector(settings, url), \
            simulated_fleet(url, tmp_path / "sim", 3) as (sim, ids):
        audit = StoreAudit(settings)
        wait_online(audit.stores.metadata, ids)

        upload = run_cli(settings, url, "ota", "upload", str(image), "--version", "2.0.0")
        assert upload.returncode == 0, upload.stderr
        assert upload.stdout.startswith("firmware 2.0.0: 60000 bytes, sha256 ")

        start = run_cli(settings, url, "ota", "start", "--version", "2.0.0", "--all",
                        "--batch-size", "50%", "--max-failures", "34")
        assert start.returncode == 0, start.stderr
        campaign_id = start.stdout.split()[-1]
        assert campaign_id.startswith("camp-")
        assert "on 3 device(s)" in start.stdout and "2 at a time" in start.stdout

        status = run_cli(settings, url, "ota", "status", campaign_id, "--wait")
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"campaign {campaign_id}: firmware 2.0.0, completed" in status.stdout
        rows = [line.split() for line in status.stdout.splitlines() if line.startswith("dc-")]
        assert [(r[0], r[1], r[2]) for r in rows] == [(d, "done", "100%") for d in ids]
        assert "3/3 done" in status.stderr  # progress went to stderr
        assert {d.fw_version for d in sim.devices()} == {"2.0.0"}

        again = run_cli(settings, url, "ota", "status", campaign_id, "--json")
        assert again.returncode == 0, again.stderr
        report = json.loads(again.stdout)
        assert report["campaign"]["state"] == "completed" and len(report["targets"]) == 3
        listed = run_cli(settings, url, "ota", "list")
        assert campaign_id in listed.stdout
        assert "2.0.0" in run_cli(settings, url, "ota", "firmware").stdout

        missing = run_cli(settings, url, "ota", "start", "--version", "9.9.9", "--all")
        assert missing.returncode == 1
        assert missing.stderr.strip() == ("iotmeter: no firmware '9.9.9': upload it first "
                                          "(iotmeter ota upload)")
        log = [(e.action, e.target, e.result) for e in audit.stores.metadata.list_audit(limit=50)]
        assert ("ota.upload", "2.0.0", "ok") in log and ("ota.start", "2.0.0", "ok") in log
        assert ("ota.start", "9.9.9", "failed") in log  # refusals are recorded too
        audit.close()


def test_a_store_that_is_down_is_one_line_and_exit_1(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, {
        "IOTMETER_DB_URL": f"postgresql://iot@127.0.0.1:{free_port()}/iotmeter"})
    result = run_cli(settings, "mqtt://127.0.0.1:1", "command", "list")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("iotmeter: postgresql: "), result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, {})
    for args in (["ota", "start", "--version", "2.0.0"],  # no devices chosen
                 ["ota", "start", "--version", "2.0.0", "--all", "--batch-size", "0"],
                 ["command", "send", "dc-1", "ping", "--param", "novalue"],
                 ["command", "send", "dc-1", "ping", "--timeout", "-5"]):
        result = run_cli(settings, "mqtt://127.0.0.1:1", *args)
        assert result.returncode == 2, (args, result.stderr)


def test_on_the_embedded_defaults_the_cli_finds_the_running_broker(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, {})
    broker = EmbeddedBroker(settings.home / "broker")
    with broker, running_collector(settings, broker.url), \
            simulated_fleet(broker.url, tmp_path / "sim", 1) as (_sim, [device]):
        assert running_broker_url(settings.home / "broker") == broker.url
        audit = StoreAudit(settings)
        wait_online(audit.stores.metadata, [device])
        result = run_cli(settings, None, "command", "send", device, "reboot")
        assert result.returncode == 0 and result.stderr == "", result.stderr
        sent = audit.stores.metadata.get_command(result.stdout.strip())
        assert sent is not None and sent.attempts == 1, "published by the CLI itself"
        audit.close()
    assert running_broker_url(settings.home / "broker") is None, "a stopped broker is not found"


HOSTILE = "bad \x1b]0;owned\x07 \x1b[2J\u009b31m \u202eexe.gnp"


def test_a_devices_control_characters_never_reach_the_terminal(tmp_path: Path) -> None:
    """Issue 15 item 11: a command's detail (a device's own words) was printed raw. Stored
    before intake refused such strings, or by another path, it is still filtered on display."""
    from iotmeter_tui.backend.stores.factory import open_metadata
    from iotmeter_tui.backend.stores.metadata import Command

    settings = settings_for(tmp_path, {})
    store = open_metadata(settings.db_url)
    try:
        store.create_command(Command("cmd-x", "dc-0001", "reboot", {}, "failed", 1, 2, None,
                                     detail=HOSTILE))
    finally:
        store.close()
    listed = run_cli(settings, "mqtt://127.0.0.1:1", "command", "list")
    shown = run_cli(settings, "mqtt://127.0.0.1:1", "command", "show", "cmd-x")
    assert (listed.returncode, shown.returncode) == (0, 1), (listed.stderr, shown.stderr)
    for result in (listed, shown):
        assert "cmd-x" in result.stdout
        for bad in ("\x1b", "\x07", "\u009b", "\u202e"):
            assert bad not in result.stdout
        assert "\ufffd" in result.stdout
    assert "failed: bad \ufffd]0;owned\ufffd \ufffd[2J\ufffd31m \ufffdexe.gnp" in shown.stdout
