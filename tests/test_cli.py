"""The `iotmeter` command as an operator meets it: help, bad settings, prepare the stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg
import pytest
from minio import Minio

from iotmeter_tui.backend.config import SETTINGS


def iotmeter(*args: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
    return subprocess.run([sys.executable, "-m", "iotmeter_tui", *args],
                          env={**clean, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_the_collector_and_simulator() -> None:
    result = iotmeter("--help")
    assert result.returncode == 0
    assert "--collector-only" in result.stdout
    assert "simulate" in result.stdout
    assert "--metrics-port" in result.stdout


def test_simulate_help_lists_its_options() -> None:
    result = iotmeter("simulate", "--help")
    assert result.returncode == 0
    for option in ("--devices", "--rate", "--kind", "--faults", "--seed", "--duration"):
        assert option in result.stdout


@pytest.mark.parametrize(("variable", "value"), [
    ("IOTMETER_DB_URL", "nonsense://x"),
    ("IOTMETER_TSDB_URL", "http://influx:8086"),
    ("IOTMETER_ARCHIVE_URL", "ftp://archive"),
    ("IOTMETER_MQTT_URL", "tcp://broker:1883"),
    ("IOTMETER_METRICS_PORT", "99999"),
])
def test_bad_setting_is_one_line_naming_the_variable(tmp_path: Path, variable: str,
                                                     value: str) -> None:
    result = iotmeter("--collector-only", env={"IOTMETER_HOME": str(tmp_path), variable: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


def test_config_prints_every_setting_and_hides_secrets(tmp_path: Path) -> None:
    result = iotmeter("config", env={"IOTMETER_HOME": str(tmp_path),
                                     "IOTMETER_S3_SECRET_KEY": "hunter2",
                                     "IOTMETER_FIRMWARE_URL_SECRET": "fw-url-secret-" * 3})
    assert result.returncode == 0
    for setting in SETTINGS:
        assert setting.env in result.stdout
    assert "hunter2" not in result.stdout
    assert "fw-url-secret" not in result.stdout


def test_config_prints_no_password_from_any_url(tmp_path: Path) -> None:
    """Issue 15 item 8: the URLs were printed whole. The password holds '@', ':' and '/'
    (unencoded, as operators type them), which urlsplit-based redaction got wrong."""
    password = "s3cr@t:pa/ss"
    result = iotmeter("config", env={
        "IOTMETER_HOME": str(tmp_path),
        "IOTMETER_MQTT_URL": "mqtt://collector:s3cr%40t%3Apa%2Fss@broker:1883",
        "IOTMETER_DB_URL": f"postgresql://iot:{password}@db:5432/iotmeter".replace("/ss", "%2Fss"),
        "IOTMETER_TSDB_URL": "influxdb://admin:s3cr@t@influx:8086/iot-metrics",
    })
    assert result.returncode == 0, result.stderr
    for piece in ("s3cr", "pa/ss", "pa%2Fss", "%40t"):
        assert piece not in result.stdout, result.stdout
    assert "mqtt://collector:***@broker:1883" in result.stdout
    assert "postgresql://iot:***@db:5432/iotmeter" in result.stdout


def test_a_bad_url_is_reported_without_its_password(tmp_path: Path) -> None:
    result = iotmeter("--collector-only", env={
        "IOTMETER_HOME": str(tmp_path),
        "IOTMETER_DB_URL": "postgresql://iot:s3cr@t:pa/ss@db:5432/iotmeter"})
    assert result.returncode == 2
    assert "IOTMETER_DB_URL" in result.stderr
    assert "s3cr" not in result.stderr and "pa/ss" not in result.stderr


def test_migrate_prepares_the_embedded_stores(tmp_path: Path) -> None:
    result = iotmeter("migrate", env={"IOTMETER_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "iotmeter.db").exists()
    again = iotmeter("migrate", env={"IOTMETER_HOME": str(tmp_path)})
    assert again.returncode == 0 and "up to date" in again.stdout


def test_migrate_prepares_the_production_stores(pg_database, influxdb, s3,  # type: ignore[no-untyped-def]
                                                tmp_path: Path) -> None:
    env = {
        "IOTMETER_HOME": str(tmp_path),
        "IOTMETER_DB_URL": pg_database.url,
        "IOTMETER_TSDB_URL": f"influxdb://{influxdb.host}:{influxdb.port}/migrate_test",
        "IOTMETER_ARCHIVE_URL": "s3://iot-migrate-test",
        "IOTMETER_S3_ENDPOINT": s3.endpoint,
        "IOTMETER_S3_ACCESS_KEY": s3.access_key,
        "IOTMETER_S3_SECRET_KEY": s3.secret_key,
    }
    result = iotmeter("migrate", env=env)
    assert result.returncode == 0, result.stderr
    query = urllib.parse.urlencode({"q": "SHOW DATABASES"})
    with urllib.request.urlopen(f"{influxdb.http_url}/query?{query}", timeout=10) as response:
        assert ["migrate_test"] in json.load(response)["results"][0]["series"][0]["values"]
    client = Minio(s3.endpoint.split("://", 1)[1], s3.access_key, s3.secret_key,
                   secure=False, region=s3.region)
    assert client.bucket_exists("iot-migrate-test")
    with psycopg.connect(pg_database.url) as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)


def test_every_command_shares_one_rule_for_seconds_and_counts() -> None:
    """Three copies of these checks had drifted (one took nan and inf); now one module."""
    import argparse

    from iotmeter_tui.cli.args import key_value, positive_float, positive_int

    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(bad)
    assert positive_float("2.5") == 2.5
    for bad in ("0", "-3", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)
    assert key_value("n=3") == ("n", 3) and key_value("s=on") == ("s", "on")


@pytest.mark.parametrize("args", [["--rate", "nan"], ["--devices", "0"], ["--duration", "inf"],
                                  ["--heartbeat", "-1"]])
def test_the_simulators_own_command_line_keeps_the_same_rule(args: list[str]) -> None:
    from iotmeter_tui.backend.simulator.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(args)
