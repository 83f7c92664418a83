"""Issue 15 items 1, 3 and 12 (broker part) on a real mosquitto running the shipped
deploy/mosquitto/ configuration: client ids are tied to users, so a device's password cannot
take the collector's session; the dispatcher is an identity of its own; the demo simulator's
meters get device rights only; oversized packets stop at the broker."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_probe import Probe

from testsupport.shipped_broker import (
    COLLECTOR_PASSWORD,
    DEVICE_CREDENTIALS,
    DISPATCHER_PASSWORD,
    MOSQUITTO_DIR,
    ShippedBroker,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ShippedBroker]:
    with ShippedBroker(tmp_path / "broker", env={"MQTT_SIMULATOR_PASSWORD": "sim-secret",
                                                 "MQTT_SIMULATOR_DEVICES": "2"}) as running:
        yield running


def test_a_device_cannot_take_the_collectors_session(broker: ShippedBroker) -> None:
    """Before use_username_as_clientid, dc-0102 connecting as `collector` resumed the
    collector's session (session present) and the queued message was gone for good."""
    collector = Probe(broker.port, "collector", COLLECTOR_PASSWORD, "iotmeter-collector-1",
                      persistent=True)
    assert collector.subscribe("iot/+/telemetry") == 1
    collector.close()  # away: the broker queues for it

    device = Probe(broker.port, "dc-0101", DEVICE_CREDENTIALS["dc-0101"], "dc-0101")
    device.publish("iot/dc-0101/telemetry", b'{"queued": 1}')
    device.close()

    for user, client_id in (("dc-0102", "collector"), ("dc-0101", "iotmeter-collector-1")):
        thief = Probe(broker.port, user, DEVICE_CREDENTIALS[user], client_id, persistent=True)
        assert thief.refused is None
        assert thief.session_present is False, user  # a session of its own, under its id
        thief.subscribe("iot/+/telemetry")
        assert thief.nothing_more()  # and no right to read the fleet
        thief.close()

    back = Probe(broker.port, "collector", COLLECTOR_PASSWORD, "anything", persistent=True)
    try:
        assert back.session_present is True
        assert back.received() == ("iot/dc-0101/telemetry", b'{"queued": 1}')
    finally:
        back.close()


def test_collector_reads_and_dispatcher_writes_under_their_own_users(
        broker: ShippedBroker) -> None:
    device = Probe(broker.port, "dc-0101", DEVICE_CREDENTIALS["dc-0101"], "dc-0101")
    collector = Probe(broker.port, "collector", COLLECTOR_PASSWORD, "c")
    dispatcher = Probe(broker.port, "dispatcher", DISPATCHER_PASSWORD, "d")
    try:
        # mosquitto 2.0 grants every SUBACK and checks read rights on delivery: a denied
        # subscription is one where nothing arrives.
        device.subscribe("iot/dc-0101/command")
        collector.subscribe("iot/+/command")  # reads device traffic only
        dispatcher.subscribe("iot/+/telemetry")  # reads nothing
        collector.publish("iot/dc-0101/command", b"from the collector")  # denied, dropped
        dispatcher.publish("iot/dc-0101/command", b"from the dispatcher")
        device.publish("iot/dc-0101/telemetry", b"reading")
        assert device.received() == ("iot/dc-0101/command", b"from the dispatcher")
        assert device.nothing_more()
        assert collector.nothing_more(0.1) and dispatcher.nothing_more(0.1)
        assert not collector.disconnected.is_set() and not dispatcher.disconnected.is_set()
    finally:
        for probe in (device, collector, dispatcher):
            probe.close()


def test_a_device_reads_and_writes_only_under_its_own_id(broker: ShippedBroker) -> None:
    mine = Probe(broker.port, "dc-0101", DEVICE_CREDENTIALS["dc-0101"], "dc-0101")
    other = Probe(broker.port, "dc-0102", DEVICE_CREDENTIALS["dc-0102"], "dc-0102")
    collector = Probe(broker.port, "collector", COLLECTOR_PASSWORD, "c")
    try:
        other.subscribe("iot/dc-0101/command")  # another's commands: never delivered
        other.subscribe("iot/+/ota")
        mine.subscribe("iot/dc-0101/command")
        collector.subscribe("iot/+/status")
        other.publish("iot/dc-0101/command", b"forged")  # a device cannot command another
        other.publish("iot/dc-0101/status", b"forged")  # nor speak for it
        other.publish("iot/dc-0102/status", b"mine")
        dispatcher = Probe(broker.port, "dispatcher", DISPATCHER_PASSWORD, "d")
        dispatcher.publish("iot/dc-0101/command", b"for dc-0101")
        dispatcher.publish("iot/dc-0101/ota", b"offer for dc-0101")
        dispatcher.close()
        assert collector.received() == ("iot/dc-0102/status", b"mine")
        assert mine.received() == ("iot/dc-0101/command", b"for dc-0101")
        assert collector.nothing_more() and mine.nothing_more(0.1)
        assert other.nothing_more(0.1)
    finally:
        for probe in (mine, other, collector):
            probe.close()


def test_simulated_meters_are_device_users_that_cannot_command(broker: ShippedBroker,
                                                                tmp_path: Path) -> None:
    """Item 3: the demo simulator no longer holds `iot/#`. Its meters log in as themselves
    (--device-users) with the simulator's password and get a device's rights."""
    # The shipped secrets leave the demo meters' password empty unless asked for with --demo.
    secrets = tmp_path / "secrets"
    make = ["sh", str(ROOT / "deploy" / "make-secrets.sh")]
    made = subprocess.run(make, env={"PATH": "/usr/bin:/bin", "SECRETS_DIR": str(secrets)},
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert (secrets / "mqtt_simulator_password").read_text().strip() == ""
    demo = subprocess.run([*make, "--demo"], env={"PATH": "/usr/bin:/bin",
                                                  "SECRETS_DIR": str(secrets)},
                          capture_output=True, text=True, timeout=60)
    assert demo.returncode == 0, demo.stderr
    password = (secrets / "mqtt_simulator_password").read_text().strip()
    assert len(password) == 48
    assert (secrets / "simulator_mqtt_url").read_text().strip() == (
        f"mqtt://simulator:{password}@mosquitto:1883")
    collector = Probe(broker.port, "collector", COLLECTOR_PASSWORD, "c")
    collector.subscribe("iot/+/hello")
    env = {"PATH": "/usr/bin:/bin", "IOTMETER_HOME": str(tmp_path / "sim"),
           "IOTMETER_MQTT_URL": broker.url("ignored", "sim-secret")}
    simulator = subprocess.run(
        [sys.executable, "-m", "iotmeter_tui", "simulate", "--devices", "2", "--kind", "mixed",
         "--device-users", "--duration", "2", "--seed", "1"],
        env=env, capture_output=True, text=True, timeout=60)
    try:
        assert simulator.returncode == 0, simulator.stderr
        heard = {collector.received()[0] for _ in range(2)}
        assert heard == {"iot/dc-0001/hello", "iot/ac-0002/hello"}
    finally:
        collector.close()

    meter = Probe(broker.port, "ac-0002", "sim-secret", "ac-0002")
    device = Probe(broker.port, "dc-0001", "sim-secret", "dc-0001")
    try:
        device.subscribe("iot/dc-0001/command")
        device.subscribe("iot/dc-0001/ota")
        offer = {"v": 2, "campaign_id": "evil", "url": "http://attacker/fw", "sha256": "0" * 64}
        meter.publish("iot/dc-0001/command", b'{"command_id": "evil"}')
        meter.publish("iot/dc-0001/ota", json.dumps(offer))
        assert device.nothing_more(1.0)
    finally:
        meter.close()
        device.close()


def test_the_broker_refuses_packets_over_its_cap(broker: ShippedBroker) -> None:
    """max_packet_size: a 64 KiB message (the protocol's cap) passes; a much larger one
    costs its sender the connection and reaches no one."""
    collector = Probe(broker.port, "collector", COLLECTOR_PASSWORD, "c")
    device = Probe(broker.port, "dc-0101", DEVICE_CREDENTIALS["dc-0101"], "dc-0101")
    try:
        collector.subscribe("iot/+/telemetry")
        device.publish("iot/dc-0101/telemetry", b"x" * 65_536)
        assert len(collector.received()[1]) == 65_536
        device.client.publish("iot/dc-0101/telemetry", b"y" * 1_000_000, qos=1)
        assert device.disconnected.wait(5)
        assert collector.nothing_more()
    finally:
        collector.close()
        device.close()


def test_init_passwords_refuses_a_device_user_that_is_no_device_id(tmp_path: Path) -> None:
    for bad in ("dc+0001", "a/b", "dc#1", "collector", "-dash", "x" * 65):
        credentials = tmp_path / "credentials"
        credentials.write_text(f"{bad}:pw\n")
        result = subprocess.run(
            ["sh", str(MOSQUITTO_DIR / "init-passwords.sh")], capture_output=True, text=True,
            env={"PATH": "/usr/bin:/bin", "AUTH_DIR": str(tmp_path / "auth"),
                 "DEVICE_CREDENTIALS": str(credentials), "MQTT_COLLECTOR_PASSWORD": "a",
                 "MQTT_DISPATCHER_PASSWORD": "b"})
        assert result.returncode == 1, bad
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "auth" / "passwd").exists()


def test_persistent_sessions_expire_and_packets_are_capped() -> None:
    conf = (MOSQUITTO_DIR / "mosquitto.conf").read_text()
    live = dict(line.split(" ", 1) for line in conf.splitlines()
                if line and not line.startswith("#") and " " in line)
    # A per-listener option: every listener block must say it.
    blocks = re.split(r"^listener ", conf, flags=re.MULTILINE)[1:]
    assert len(blocks) == 3
    for block in blocks:
        assert "\nuse_username_as_clientid true" in block.split("\n\n")[0], block
    assert live["persistent_client_expiration"] == "7d"
    # The protocol's 64 KiB payload plus topic and header, well under what would hurt.
    assert 65_536 < int(live["max_packet_size"]) <= 1 << 20


def test_the_dispatcher_has_its_own_broker_user(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """With IOTMETER_MQTT_DISPATCH_URL the dispatcher logs in as itself; without it, sharing
    the collector's user is logged at start, since on the shipped broker the two connections
    would push each other off."""
    from iotmeter_tui.backend.config import load_settings
    from iotmeter_tui.backend.control.dispatch import Dispatcher
    from iotmeter_tui.backend.stores import open_stores

    base = {"IOTMETER_HOME": str(tmp_path / "home"), "IOTMETER_FIRMWARE_LISTEN": "127.0.0.1:0",
            "IOTMETER_MQTT_URL": "mqtt://collector:pw@127.0.0.1:1883"}
    for env, user, warned in (
            (base, "collector", True),
            ({**base, "IOTMETER_MQTT_DISPATCH_URL": "mqtt://dispatcher:pw2@127.0.0.1:1883"},
             "dispatcher", False)):
        caplog.clear()
        settings = load_settings(env)
        stores = open_stores(settings)
        try:
            dispatcher = Dispatcher.for_collector(settings, settings.mqtt_url or "", stores)
            assert dispatcher.publisher is not None
            assert dispatcher.publisher.address.username == user
            assert any(getattr(r, "event", None) == "dispatch_shares_identity"
                       for r in caplog.records) is warned
        finally:
            stores.close()


def test_device_users_need_a_broker_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from iotmeter_tui.backend.simulator.cli import main

    monkeypatch.delenv("IOTMETER_MQTT_URL", raising=False)
    for url in ("mqtt://127.0.0.1:1", None):
        argv = ["--devices", "1", "--device-users", "--home", str(tmp_path)]
        assert main([*argv, "--mqtt-url", url] if url else argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith("--device-users needs IOTMETER_MQTT_URL with the meters' password")
        assert len(err.splitlines()) == 1
