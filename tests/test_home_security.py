"""The operator's host: the embedded broker admits only iotmeter's own
clients, with a password made at each start, and IOTMETER_HOME is private to its user."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from iotmeter_tui.backend.broker import (
    CREDENTIALS_FILE,
    PASSWORD_FILE,
    EmbeddedBroker,
    running_broker_url,
)
from iotmeter_tui.backend.mqtt import codec
from iotmeter_tui.backend.mqtt.address import BrokerAddress
from testsupport.fleet import Publisher, wait_for


def connack(host: str, port: int, username: str | None = None,
            password: str | None = None) -> int:
    """The CONNACK return code a raw MQTT client gets."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(codec.encode_connect("probe", username=username, password=password))
        decoder = codec.Decoder()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = sock.recv(64)
            if not chunk:
                return -1  # closed without an answer
            for packet in decoder.feed(chunk):
                if isinstance(packet, codec.ConnAck):
                    return packet.return_code
    raise AssertionError("no CONNACK")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_embedded_broker_refuses_anonymous_and_wrong_passwords(tmp_path: Path) -> None:
    """Before: allow_anonymous true, so any local user could read the fleet, inject devices,
    command the simulated meters or take the collector's client id."""
    with EmbeddedBroker(tmp_path / "broker") as broker:
        address = BrokerAddress.parse(broker.url)
        assert address.username and address.password and len(address.password) >= 24
        assert connack(broker.host, broker.port) == 5  # not authorized
        assert connack(broker.host, broker.port, address.username, "guess") in (4, 5)
        assert connack(broker.host, broker.port, address.username, address.password) == 0
        # What the clients use: the URL's credentials (paho here, as the publisher uses).
        Publisher(broker.url, "cred-check").close()
        # Other iotmeter processes on this home find the URL with its credentials ...
        assert running_broker_url(tmp_path / "broker") == broker.url
        # ... in files only this user can read; the broker has only a hash.
        for name in (CREDENTIALS_FILE, PASSWORD_FILE, "mosquitto.conf"):
            assert mode(tmp_path / "broker" / name) == 0o600, name
        assert address.password not in (tmp_path / "broker" / PASSWORD_FILE).read_text()
        assert "allow_anonymous false" in broker.config_path.read_text()
        first = broker.password
        broker.stop()
        broker.start()  # the same password: connected clients reconnect with what they hold
        assert broker.password == first
        assert connack(broker.host, broker.port, address.username, address.password) == 0
    assert not (tmp_path / "broker" / CREDENTIALS_FILE).exists()
    with EmbeddedBroker(tmp_path / "broker") as again:  # a new start: a new password
        assert again.password != first
        assert connack(again.host, again.port, address.username, first) in (4, 5)


def _iotmeter(home: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
    env.update({"IOTMETER_HOME": str(home), "IOTMETER_METRICS_PORT": str(_free_port()),
                "IOTMETER_FIRMWARE_LISTEN": "127.0.0.1:0"})
    return subprocess.Popen([sys.executable, "-m", "iotmeter_tui", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_files_under_a_fresh_home_are_not_readable_by_others(tmp_path: Path) -> None:
    """Before: IOTMETER_HOME and its databases, spool, logs and archive were world-readable
    (created under the usual 022 umask)."""
    home = tmp_path / "home"
    collector = _iotmeter(home, "--collector-only")
    try:
        wait_for(lambda: any((home / "spool").rglob("*")) and (home / "iotmeter.db").exists()
                 and (home / "broker" / "port").exists(), timeout_s=60,
                 what="collector running on the embedded defaults")
        time.sleep(1.5)  # a segment sealed, the archive written
    finally:
        collector.send_signal(signal.SIGINT)
        out, err = collector.communicate(timeout=60)
    assert collector.returncode == 0, err
    assert "mqtt://iotmeter:***@127.0.0.1:" in out  # the broker's URL, logged redacted
    assert '"event": "mqtt_connected"' in out  # the intake got in with the credentials
    migrated = _iotmeter(home, "migrate")
    assert migrated.wait(60) == 0
    assert mode(home) == 0o700
    paths = list(home.rglob("*"))
    assert len(paths) > 5
    open_to_others = [(str(p.relative_to(home)), oct(mode(p))) for p in paths
                      if mode(p) & 0o077]
    assert open_to_others == []


def test_an_existing_home_open_to_others_is_closed(tmp_path: Path) -> None:
    home = tmp_path / "shared"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    config = _iotmeter(home, "migrate")
    assert config.wait(60) == 0
    assert mode(home) == 0o700
