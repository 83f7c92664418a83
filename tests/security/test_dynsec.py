"""Per-device credentials through mosquitto's dynamic security plugin, on a real
mosquitto running the shipped mosquitto-dynsec.conf: a device cannot publish as another,
cannot read another's commands, cannot take the collector's client id; a revoked device is
cut off at once."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_probe import Probe

from iotmeter_tui.backend.broker_admin import (
    BrokerAdminError,
    DynsecAdmin,
    DynsecCredentials,
)
from testsupport.shipped_broker import MOSQUITTO_DIR, ShippedBroker

ADMIN_PASSWORD = "admin-secret"


class Stack:
    def __init__(self, broker: ShippedBroker, credentials: DynsecCredentials) -> None:
        self.broker = broker
        self.credentials = credentials
        credentials.setup()
        self.collector_password = credentials.add_service_client("collector-0", "collector")
        self.dispatcher_password = credentials.add_service_client("dispatcher-0", "dispatcher")

    def probe(self, user: str, password: str, client_id: str | None = None,
              **kwargs: object) -> Probe:
        return Probe(self.broker.port, user, password, client_id or user, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with ShippedBroker(tmp_path / "broker", dynsec_admin_password=ADMIN_PASSWORD) as broker:
        credentials = DynsecCredentials.from_url(broker.url("admin", ADMIN_PASSWORD))
        try:
            yield Stack(broker, credentials)
        finally:
            credentials.close()


def test_a_device_sends_and_receives_only_its_own_topics(stack: Stack) -> None:
    one = stack.credentials.provision("dc-0001")
    two = stack.credentials.provision("dc-0002")
    assert one != two and len(one) >= 32
    collector = stack.probe("collector-0", stack.collector_password)
    dispatcher = stack.probe("dispatcher-0", stack.dispatcher_password)
    device_one = stack.probe("dc-0001", one)
    device_two = stack.probe("dc-0002", two)
    try:
        collector.subscribe("$share/collectors/iot/+/telemetry")
        collector.subscribe("iot/+/status")
        device_one.subscribe("iot/dc-0001/command")
        assert device_one.subscribe("iot/dc-0002/command") == 128  # another's commands
        assert device_one.subscribe("iot/+/ota") == 128  # the plugin refuses, SUBACK says so
        assert device_one.subscribe("iot/dc-0001/ota") == 1
        device_two.subscribe("iot/dc-0002/command")

        device_one.publish("iot/dc-0002/telemetry", b"as another")  # denied
        device_one.publish("iot/dc-0001/command", b"a command")  # a device sends no command
        device_one.publish("iot/dc-0001/telemetry", b"mine")
        device_two.publish("iot/dc-0002/status", b"online")
        dispatcher.publish("iot/dc-0002/command", b"for two")
        dispatcher.publish("iot/dc-0001/ota", b"offer for one")

        got = {collector.received(), collector.received()}
        assert got == {("iot/dc-0001/telemetry", b"mine"), ("iot/dc-0002/status", b"online")}
        assert device_two.received() == ("iot/dc-0002/command", b"for two")
        assert device_one.received() == ("iot/dc-0001/ota", b"offer for one")
        assert collector.nothing_more() and device_one.nothing_more(0.1)
        assert device_two.nothing_more(0.1)
    finally:
        for probe in (collector, dispatcher, device_one, device_two):
            probe.close()


def test_a_device_cannot_take_the_collectors_session(stack: Stack) -> None:
    password = stack.credentials.provision("dc-0001")
    collector = stack.probe("collector-0", stack.collector_password, persistent=True)
    collector.subscribe("iot/+/telemetry")
    collector.close()
    device = stack.probe("dc-0001", password)
    device.publish("iot/dc-0001/telemetry", b"queued")
    device.close()
    thief = stack.probe("dc-0001", password, "collector-0", persistent=True)
    assert thief.refused is None and thief.session_present is False
    thief.close()
    back = stack.probe("collector-0", stack.collector_password, persistent=True)
    try:
        assert back.session_present is True
        assert back.received() == ("iot/dc-0001/telemetry", b"queued")
    finally:
        back.close()


def test_revoke_cuts_the_device_off_at_once(stack: Stack) -> None:
    password = stack.credentials.provision("dc-0001")
    device = stack.probe("dc-0001", password)
    try:
        assert device.refused is None
        stack.credentials.revoke("dc-0001")
        assert device.disconnected.wait(2)
    finally:
        device.client.loop_stop()
    again = stack.probe("dc-0001", password)
    assert again.refused is not None
    again.close()
    stack.credentials.revoke("dc-0001")  # a second revoke is no error


def test_provisioning_again_replaces_the_password(stack: Stack) -> None:
    old = stack.credentials.provision("dc-0001")
    device = stack.probe("dc-0001", old)
    new = stack.credentials.provision("dc-0001")
    try:
        assert device.disconnected.wait(2)  # the old connection goes with the old client
    finally:
        device.client.loop_stop()
    refused = stack.probe("dc-0001", old)
    assert refused.refused is not None
    refused.close()
    fresh = stack.probe("dc-0001", new)
    assert fresh.refused is None
    fresh.close()


def test_bad_names_and_unreachable_plugins_are_one_line_errors(stack: Stack,
                                                               tmp_path: Path) -> None:
    for bad in ("dc/0001", "+", "#", "", "x" * 65):
        with pytest.raises(BrokerAdminError, match="is not a device id"):
            stack.credentials.provision(bad)
    with pytest.raises(BrokerAdminError, match="not one of collector, dispatcher, operator"):
        stack.credentials.add_service_client("someone", "admin")
    wrong = DynsecAdmin(stack.broker.url("admin", "wrong"), timeout_s=1.0)
    with pytest.raises(BrokerAdminError, match=r"^broker admin at .*: cannot connect") as caught:
        DynsecCredentials(wrong).provision("dc-0001")
    assert "wrong" not in str(caught.value) and "\n" not in str(caught.value)
    wrong.close()
    # A user that may not use $CONTROL (the collector): the plugin never answers it.
    plain = DynsecAdmin(stack.broker.url("collector-0", stack.collector_password),
                        timeout_s=1.0)
    with pytest.raises(BrokerAdminError, match="no answer from the dynamic security plugin"):
        DynsecCredentials(plain).provision("dc-0001")
    plain.close()


def test_the_dynsec_conf_differs_from_mosquitto_conf_only_in_authentication() -> None:
    def live(name: str) -> list[str]:
        return [line for line in (MOSQUITTO_DIR / name).read_text().splitlines()
                if line and not line.startswith("#")]

    auth = {"password_file", "acl_file", "plugin", "plugin_opt_config_file"}
    shipped = [line for line in live("mosquitto.conf") if line.split()[0] not in auth]
    dynsec = [line for line in live("mosquitto-dynsec.conf") if line.split()[0] not in auth]
    assert shipped == dynsec
    assert re.search(r"^plugin_opt_config_file /mosquitto/data/",
                     (MOSQUITTO_DIR / "mosquitto-dynsec.conf").read_text(), re.MULTILINE)


def test_device_add_shows_the_password_once_and_rm_revokes(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`iotmeter device add` with IOTMETER_MQTT_ADMIN_URL: the device's broker client is
    created and its password printed once, alone on the last line; `device rm` cuts it off."""
    from iotmeter_tui.cli import main

    for key in [k for k in os.environ if k.startswith("IOTMETER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("IOTMETER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IOTMETER_MQTT_ADMIN_URL", stack.broker.url("admin", ADMIN_PASSWORD))
    assert main(["device", "add", "dc-0007", "--type", "power_meter_dc"]) == 0
    out, err = capsys.readouterr()
    password = out.strip().splitlines()[-1]
    assert "shown once" in err and len(password) >= 32
    assert ADMIN_PASSWORD not in out + err
    device = stack.probe("dc-0007", password)
    try:
        assert device.refused is None
        assert main(["device", "rm", "dc-0007", "--yes"]) == 0
        assert device.disconnected.wait(2)
    finally:
        device.client.loop_stop()
    assert stack.probe("dc-0007", password, answer_timeout_s=5).refused is not None

    # The broker refuses: nothing is registered, one line says why.
    monkeypatch.setenv("IOTMETER_MQTT_ADMIN_URL", stack.broker.url("admin", "wrong"))
    assert main(["device", "add", "dc-0008"]) != 0
    _out, err = capsys.readouterr()
    assert "broker admin at" in err and len(err.strip().splitlines()) == 1
    monkeypatch.delenv("IOTMETER_MQTT_ADMIN_URL")
    assert main(["device", "show", "dc-0008"]) != 0


def test_broker_cli_sets_up_roles_and_adds_service_clients(
        stack: Stack, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from iotmeter_tui.cli import main

    for key in [k for k in os.environ if k.startswith("IOTMETER_")]:
        monkeypatch.delenv(key)
    assert main(["broker", "setup"]) == 2
    _out, err = capsys.readouterr()
    assert "IOTMETER_MQTT_ADMIN_URL is not set" in err and len(err.strip().splitlines()) == 1

    monkeypatch.setenv("IOTMETER_MQTT_ADMIN_URL", stack.broker.url("admin", ADMIN_PASSWORD))
    assert main(["broker", "setup"]) == 0  # again: idempotent
    assert main(["broker", "add-client", "collector-1", "--role", "collector"]) == 0
    out, _err = capsys.readouterr()
    password = out.strip().splitlines()[-1]
    collector = stack.probe("collector-1", password)
    device = stack.probe("dc-0003", stack.credentials.provision("dc-0003"))
    try:
        collector.subscribe("$share/collectors/iot/+/hello")
        device.publish("iot/dc-0003/hello", b"hi")
        assert collector.received() == ("iot/dc-0003/hello", b"hi")
    finally:
        collector.close()
        device.close()


def test_add_client_takes_a_shared_password_from_stdin(
        stack: Stack, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Replicas of a StatefulSet share one Secret: collector-N and collector-N-dispatch are
    created with the password it holds, which is never echoed."""
    import io

    from iotmeter_tui.cli import main

    for key in [k for k in os.environ if k.startswith("IOTMETER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("IOTMETER_MQTT_ADMIN_URL", stack.broker.url("admin", ADMIN_PASSWORD))
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["broker", "add-client", "collector-1", "--role", "collector",
                 "--password-stdin"]) == 2
    shared = "s" * 24
    for name, role in (("collector-1", "collector"), ("collector-1-dispatch", "dispatcher")):
        monkeypatch.setattr("sys.stdin", io.StringIO(shared + "\n"))
        assert main(["broker", "add-client", name, "--role", role, "--password-stdin"]) == 0
    out, err = capsys.readouterr()
    assert shared not in out + err
    for name in ("collector-1", "collector-1-dispatch"):
        probe = stack.probe(name, shared)
        assert probe.refused is None
        probe.close()


def test_init_dynsec_runs_once_and_needs_the_admin_password(tmp_path: Path) -> None:
    script = MOSQUITTO_DIR / "init-dynsec.sh"
    assert script.read_text().startswith("#!/bin/sh\n")
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    target = tmp_path / "dynamic-security.json"
    env = {"PATH": "/usr/bin:/bin", "DYNSEC_FILE": str(target)}
    missing = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and not target.exists()
    assert missing.stderr.strip() == "init-dynsec: MQTT_ADMIN_PASSWORD is not set"
    env["MQTT_ADMIN_PASSWORD"] = "first"
    assert subprocess.run(["sh", str(script)], env=env, capture_output=True).returncode == 0
    assert target.stat().st_mode & 0o077 == 0  # the admin's hash is the operators' only
    written = target.read_bytes()
    env["MQTT_ADMIN_PASSWORD"] = "second"  # a later run: the plugin's own file is kept
    again = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "left as it is" in again.stdout
    assert target.read_bytes() == written
    assert b"first" not in written and b"second" not in written
