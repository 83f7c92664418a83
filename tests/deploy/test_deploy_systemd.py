"""deploy/systemd/iotmeter-collector.service: `systemd-analyze verify` (Debian `systemd`)
accepts it, `systemd-analyze security` rates its exposure low, it has the hardening the
deployment promises, and the example environment file is valid configuration.

systemd is not PID 1 in this test environment, so the unit is verified and scored offline,
never started (docs/deployment.md, "Validation")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_helpers import DEPLOY, known_variable, need_binary

from iotmeter_tui.backend.config import load_settings

UNIT = DEPLOY / "systemd" / "iotmeter-collector.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "collector.env.example"


def systemd_analyze() -> str:
    return need_binary("systemd-analyze", "install Debian's `systemd` "
                                          "(scripts/system-deps.sh test installs it)")


def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's iotmeter: verify checks that the
    binary exists and is executable."""
    iotmeter = Path(sys.executable).parent / "iotmeter"
    assert iotmeter.exists(), "the iotmeter console script is not installed"
    text = UNIT.read_text().replace("/opt/iotmeter/bin/iotmeter", str(iotmeter))
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    result = subprocess.run([systemd_analyze(), "verify", str(unit_here(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_analyze_verify_rejects_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key or a missing binary is reported."""
    path = unit_here(tmp_path)
    path.write_text(path.read_text().replace("ProtectSystem=", "ProtectSystm="))
    result = subprocess.run([systemd_analyze(), "verify", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert "Unknown key" in result.stderr and "ProtectSystm" in result.stderr
    path.write_text(UNIT.read_text())  # ExecStart's /opt/iotmeter does not exist here
    result = subprocess.run([systemd_analyze(), "verify", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "/opt/iotmeter/bin/iotmeter" in result.stderr


def test_systemd_analyze_security_rates_it_ok(tmp_path: Path) -> None:
    result = subprocess.run([systemd_analyze(), "security", "--offline=yes", "--no-pager",
                             str(unit_here(tmp_path))], capture_output=True, text=True,
                            timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout  # systemd calls <= 2.0 "OK"


def test_the_unit_has_the_promised_hardening() -> None:
    d = directives()
    expected = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                "CapabilityBoundingSet": "", "ProtectHome": "yes", "PrivateDevices": "yes",
                "RestrictSUIDSGID": "yes", "User": "iotmeter", "StateDirectory": "iotmeter"}
    for key, value in expected.items():
        assert d.get(key) == [value], f"{key}={d.get(key)}"
    assert d["ExecStart"] == ["/opt/iotmeter/bin/iotmeter --collector-only"]
    # The spool is the state directory, the only writable path under ProtectSystem=strict.
    assert "IOTMETER_HOME=/var/lib/iotmeter" in d["Environment"]
    assert "ReadWritePaths" not in d
    # Drains within 10 s of SIGTERM; systemd must wait longer before SIGKILL.
    assert d["KillSignal"] == ["SIGTERM"] and int(d["TimeoutStopSec"][0]) >= 15
    assert d["Restart"] == ["on-failure"]


def test_the_example_environment_is_valid_configuration() -> None:
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    assert all(known_variable(key) for key in env), sorted(env)
    settings = load_settings(env=env)
    assert settings.mqtt_url and settings.share_group and not settings.embedded
    assert settings.client_id != "iotmeter-collector", "one client id per host"


@pytest.mark.parametrize("key", ["After", "Wants"])
def test_the_unit_waits_for_the_network(key: str) -> None:
    assert directives()[key] == ["network-online.target"]
