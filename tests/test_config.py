"""Settings: defaults, precedence (TOML < environment < flags), one clear line for every bad
value of every setting, and docs/configuration.md kept in step with SETTINGS."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from iotmeter_tui.backend.config import SETTINGS, ConfigError, Setting, load_settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
BY_KEY = {setting.key: setting for setting in SETTINGS}

# Values each setting must refuse. A setting whose parser takes any text says so in
# ANY_TEXT; a new setting in neither place fails test_every_setting_has_bad_values_or_takes_text.
BAD_VALUES: dict[str, list[str]] = {
    "mqtt_url": ["http://broker:1883", "broker", "mqtt://", "mqtt://broker:port", "tcp://b:1883"],
    "mqtt_dispatch_url": ["http://broker:1883", "broker", "mqtt://"],
    "mqtt_admin_url": ["http://broker:1883", "mqtt://broker:port"],
    "mqtt_sys_url": ["http://broker:1883", "broker", "mqtt://"],
    "tls_ca_file": ["/nonexistent/ca.pem", "/etc/hostname"],
    "db_url": ["mysql://db/iot", "sqlite://", "sqlite:///", "postgresql://", "postgresql://db:x/i",
               "/var/lib/iotmeter.db"],
    "tsdb_url": ["http://influx:8086", "influxdb://", "influxdb://influx:port/db", "sqlite://",
                 "timescale://db"],
    "archive_url": ["s3://", "file://", "ftp://archive", "gs://bucket", "/srv/archive"],
    "s3_endpoint": ["s3.example.net", "ftp://s3.example.net", "https://", "https://s3:port"],
    "auto_register": ["maybe", "2", "enabled", "y"],
    "reorder_timeout_s": ["0", "-1", "abc", "5s", "nan", "inf"],
    "spool_max_bytes": ["0", "-5", "1.5", "1GiB", "lots"],
    "archive_gzip": ["maybe", "gzip"],
    "archive_window_s": ["0", "-60", "1m", "nan", "inf"],
    "share_group": ["a/b", "group+", "#"],
    "metrics_port": ["0", "-1", "65536", "http", "9108.5"],
    "log_level": ["TRACE", "verbose", "5"],
    "redeliver_after_s": ["0", "-1", "10s", "nan", "inf"],
    "firmware_listen": ["9109", "127.0.0.1", "127.0.0.1:", ":9109", "host:port",
                        "127.0.0.1:70000", "a b:9109", "::1:9109"],
    "firmware_base_url": ["fw.example.net", "ftp://fw.example.net", "https://", "s3://bucket"],
    # --- api ---
    "api_host": ["a b", "host/x", "[::1]:80/"],
    "api_port": ["0", "65536", "http"],
    "api_workers": ["0", "-1", "two"],
    "api_rate_limit": ["-1", "nan", "inf", "fast"],
    "api_rate_burst": ["0", "1.5", "many"],
    "api_cors_origins": ["*", "example.net", "https://a.example/path", "ftp://a.example"],
    "api_max_body_bytes": ["0", "1MiB"],
    "api_max_firmware_bytes": ["0", "-1"],
    "api_jwks_url": ["idp.example/jwks", "ftp://idp.example/jwks"],
    # --- obs ---
    "health_interval_s": ["0", "-1", "nan", "soon"],
    "github_repo": ["rail", "rail/ops/x", "/ops", "rail/ ops", "https://github.com/rail/ops"],
    "github_api_url": ["ftp://github", "api.github.com", "https://"],
    "dashboard_url": ["grafana:3000", "ftp://grafana", "https://"],
    "firmware_url_secret": ["short", "x" * 31],
    "firmware_max_downloads": ["0", "-1", "1.5", "many"],
    "firmware_idle_timeout_s": ["0", "-1", "1m", "nan", "inf"],
    "firmware_public_key": ["AAAA", "/no/such/key.pub", "not base64!", "A" * 44 + "=="],
    # --- ux ---
    "simulate": ["maybe", "true", "1"],
    "planned_reboot_s": ["0", "-1", "5m", "nan", "inf"],
    "offline_group_min": ["0", "-2", "2.5", "many"],
    "keymap": ["quit", "app.quit", "App.Quit=x", "app.quit=ctrl x", "app.quit=x;fleet sort=o"],
    "metrics_host": ["127.0.0.1:9108", "http://h", "a b", "::1:x"],
    "field_budget": ["0", "-1", "1.5", "many"],
    "rollups": ["maybe", "2", "enabled"],
    "retention_raw": ["30", "30m", "0d", "-1d", "1.5d", "never", "30 days"],
    "retention_1m": ["1y", "d", "inf d"],
    "retention_1h": ["59m", "3600s"],
    "collector_workers": ["-1", "65", "1.5", "two"],
    "anomaly_sensitivity": ["power_meter_dc", "power_meter_dc=-1", "=1", "power_meter_ac=x",
                            "power_meter_ac=nan"],
}
ANY_TEXT = {"home", "influx_token", "s3_access_key", "s3_secret_key", "s3_region", "client_id",
            "api_jwt_audience", "api_jwt_issuer", "api_jwt_role_claim",
            # --- obs: secrets and the files holding them (the relay checks they can be read)
            "github_token", "github_token_file", "alert_relay_token", "alert_relay_token_file",
            "serve_token"}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake user home, so `~` expands somewhere harmless."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults ------------------------------------------------------------------------------

def test_defaults_are_embedded_under_the_home_directory(home: Path) -> None:
    settings = load_settings(env={})
    data = (home / ".local" / "share" / "iotmeter").resolve()
    assert settings.home == data
    assert settings.db_url == f"sqlite:///{data}/iotmeter.db"
    assert settings.tsdb_url == f"sqlite:///{data}/timeseries.db"
    assert settings.archive_url == f"file://{data}/archive"
    assert settings.mqtt_url is None  # the private mosquitto child
    assert settings.embedded
    assert settings.spool_dir == data / "spool"
    assert settings.s3_endpoint is None
    for setting in SETTINGS:
        value = getattr(settings, setting.key)
        if setting.key in ("home", "client_id") or "{home}" in str(setting.default):
            continue
        assert value == setting.default, setting.key
    assert settings.client_id == "iotmeter-collector"  # no broker user to derive it from
    assert "~" not in settings.db_url


def test_iotmeter_home_moves_every_embedded_store(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "data"
    settings = load_settings(env={"IOTMETER_HOME": str(elsewhere)})
    assert settings.home == elsewhere.resolve()
    assert settings.db_url == f"sqlite:///{elsewhere.resolve()}/iotmeter.db"
    assert settings.tsdb_url == f"sqlite:///{elsewhere.resolve()}/timeseries.db"
    assert settings.archive_url == f"file://{elsewhere.resolve()}/archive"


def test_iotmeter_home_expands_tilde(home: Path) -> None:
    settings = load_settings(env={"IOTMETER_HOME": "~/meters"})
    assert settings.home == (home / "meters").resolve()


def test_empty_variable_counts_as_unset(home: Path) -> None:
    settings = load_settings(env={"IOTMETER_METRICS_PORT": "", "IOTMETER_MQTT_URL": ""})
    assert settings.metrics_port == 9108
    assert settings.mqtt_url is None


def test_production_settings(home: Path) -> None:
    settings = load_settings(
        env={
            "IOTMETER_MQTT_URL": "mqtts://collector:secret@broker:8883",
            "IOTMETER_DB_URL": "postgresql://iot:secret@db:5432/iotmeter",
            "IOTMETER_TSDB_URL": "influxdb://influx:8086/iot-metrics",
            "IOTMETER_ARCHIVE_URL": "s3://iot-data",
            "IOTMETER_S3_REGION": "eu-central-1",
            "IOTMETER_AUTO_REGISTER": "false",
            "IOTMETER_REORDER_TIMEOUT_S": "2.5",
            "IOTMETER_LOG_LEVEL": "debug",
        }
    )
    assert settings.mqtt_url == "mqtts://collector:secret@broker:8883"
    assert not settings.embedded
    assert settings.auto_register is False
    assert settings.reorder_timeout_s == 2.5
    assert settings.log_level == "DEBUG"
    # AWS S3 itself when no endpoint is given: the region's endpoint.
    assert settings.s3_endpoint == "https://s3.eu-central-1.amazonaws.com"


# --- precedence ----------------------------------------------------------------------------

TOML = """
db_url = "postgresql://toml@db/iot"
metrics_port = 9200
auto_register = false
archive_window_s = 30
log_level = "WARNING"
"""


def test_toml_file_sets_values(home: Path, tmp_path: Path) -> None:
    path = write_toml(tmp_path / "iotmeter.toml", TOML)
    settings = load_settings(env={}, config_file=path)
    assert settings.db_url == "postgresql://toml@db/iot"
    assert settings.metrics_port == 9200
    assert settings.auto_register is False
    assert settings.archive_window_s == 30.0
    assert settings.log_level == "WARNING"


def test_iotmeter_config_names_the_file(home: Path, tmp_path: Path) -> None:
    path = write_toml(tmp_path / "iotmeter.toml", TOML)
    settings = load_settings(env={"IOTMETER_CONFIG": str(path)})
    assert settings.metrics_port == 9200


def test_config_file_argument_beats_iotmeter_config(home: Path, tmp_path: Path) -> None:
    chosen = write_toml(tmp_path / "chosen.toml", "metrics_port = 9300\n")
    other = write_toml(tmp_path / "other.toml", "metrics_port = 9400\n")
    settings = load_settings(env={"IOTMETER_CONFIG": str(other)}, config_file=chosen)
    assert settings.metrics_port == 9300


def test_environment_beats_toml(home: Path, tmp_path: Path) -> None:
    path = write_toml(tmp_path / "iotmeter.toml", TOML)
    settings = load_settings(
        env={"IOTMETER_DB_URL": "postgresql://env@db/iot", "IOTMETER_METRICS_PORT": "9300"},
        config_file=path,
    )
    assert settings.db_url == "postgresql://env@db/iot"
    assert settings.metrics_port == 9300
    assert settings.auto_register is False  # not in the environment: the file's value stands


def test_overrides_beat_environment(home: Path, tmp_path: Path) -> None:
    path = write_toml(tmp_path / "iotmeter.toml", TOML)
    settings = load_settings(
        env={"IOTMETER_METRICS_PORT": "9300"},
        config_file=path,
        overrides={"metrics_port": "9500", "log_level": None},
    )
    assert settings.metrics_port == 9500
    assert settings.log_level == "WARNING"  # an override of None is no override


def test_toml_home_moves_the_defaults(home: Path, tmp_path: Path) -> None:
    data = tmp_path / "toml-home"
    path = write_toml(tmp_path / "iotmeter.toml", f'home = "{data}"\n')
    settings = load_settings(env={}, config_file=path)
    assert settings.db_url == f"sqlite:///{data.resolve()}/iotmeter.db"


# --- bad values ----------------------------------------------------------------------------

def test_every_setting_has_bad_values_or_takes_text() -> None:
    keys = {setting.key for setting in SETTINGS}
    assert set(BAD_VALUES) | ANY_TEXT == keys
    assert not set(BAD_VALUES) & ANY_TEXT


def bad_cases(table: dict[str, list[str]]) -> list[Any]:
    return [
        pytest.param(BY_KEY[key], value, id=f"{BY_KEY[key].env}={value}")
        for key, values in table.items()
        for value in values
    ]


def assert_one_line_naming(exc: ConfigError, name: str) -> None:
    message = str(exc)
    assert message.startswith(f"{name}: "), message
    assert "\n" not in message
    assert len(message) < 300


# A password holding '@', ':' and '/' unencoded: urlsplit then cuts the URL in the wrong places,
# so a redaction built on it leaves part of the password showing.
PASSWORD = "p@ss:w/rd"


@pytest.mark.parametrize("setting", ["mqtt_url", "db_url", "tsdb_url"])
@pytest.mark.parametrize("url", [
    "{scheme}://op:{pw}@host:1x/db",  # a bad port
    "{scheme}2://op:{pw}@host:1883/db",  # a bad scheme
    "{scheme}://op:{pw}@",  # no host
])
def test_a_configuration_error_never_repeats_a_password(home: Path, setting: str,
                                                        url: str) -> None:
    scheme = {"mqtt_url": "mqtt", "db_url": "postgresql", "tsdb_url": "influxdb"}[setting]
    value = url.format(scheme=scheme, pw=PASSWORD)
    with pytest.raises(ConfigError) as caught:
        load_settings(env={BY_KEY[setting].env: value})
    message = str(caught.value)
    assert_one_line_naming(caught.value, BY_KEY[setting].env)
    for piece in ("p@ss", "ss:w", "w/rd"):
        assert piece not in message, message


def test_a_url_without_a_scheme_is_not_repeated_with_its_password(home: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"IOTMETER_DB_URL": f"iot:{PASSWORD}@db:5432/iot"})
    assert "p@ss" not in str(caught.value) and "w/rd" not in str(caught.value)


@pytest.mark.parametrize(("setting", "value"), bad_cases(BAD_VALUES))
def test_bad_environment_value_names_the_variable(
    home: Path, setting: Setting, value: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={setting.env: value})
    assert_one_line_naming(caught.value, setting.env)
    assert caught.value.variable == setting.env


@pytest.mark.parametrize(("setting", "value"), bad_cases(BAD_VALUES))
def test_bad_toml_value_names_file_and_key(
    home: Path, tmp_path: Path, setting: Setting, value: str
) -> None:
    path = write_toml(tmp_path / "iotmeter.toml", f"{setting.key} = {value!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, config_file=path)
    assert_one_line_naming(caught.value, f"{path}: {setting.key}")


@pytest.mark.parametrize(("setting", "value"), bad_cases(BAD_VALUES))
def test_bad_override_names_the_flag(home: Path, setting: Setting, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, overrides={setting.key: value})
    assert_one_line_naming(caught.value, "--" + setting.key.replace("_", "-"))


@pytest.mark.parametrize(
    ("key", "toml_value"),
    [("metrics_port", "0"), ("metrics_port", "70000"), ("auto_register", "3"),
     ("spool_max_bytes", "-1"), ("archive_gzip", "0.5")],
)
def test_bad_typed_toml_value(home: Path, tmp_path: Path, key: str, toml_value: str) -> None:
    path = write_toml(tmp_path / "iotmeter.toml", f"{key} = {toml_value}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, config_file=path)
    assert_one_line_naming(caught.value, f"{path}: {key}")


@pytest.mark.parametrize(
    ("key", "good"),
    [("metrics_port", "1"), ("metrics_port", "65535"), ("auto_register", "YES"),
     ("auto_register", "off"), ("archive_gzip", "0"), ("log_level", "error"),
     ("db_url", "postgres://iot@db/iot"), ("tsdb_url", "influxdbs://influx:8086/iot-metrics"),
     ("s3_endpoint", "http://127.0.0.1:9000"), ("spool_max_bytes", "4096"),
     ("firmware_listen", "0.0.0.0:9109"), ("firmware_listen", "[::1]:0"),
     ("firmware_listen", "collector.example.net:80"),
     ("firmware_base_url", "https://fw.example.net/iotmeter"),
     ("firmware_url_secret", "s" * 32), ("firmware_max_downloads", "1"),
     ("firmware_idle_timeout_s", "0.5"),
     ("firmware_public_key", "COUZQ+CTjg+Pp26nLk46TqXQccaRXX/2UGDQLxI0UHU="),
     ("retention_raw", "1h"), ("retention_1m", "52W"), ("retention_1h", "INF")],
)
def test_good_edge_values(home: Path, key: str, good: str) -> None:
    load_settings(env={BY_KEY[key].env: good})


def test_unknown_toml_key_is_rejected(home: Path, tmp_path: Path) -> None:
    path = write_toml(tmp_path / "iotmeter.toml", 'metrics_port = 9108\nmqtt_uri = "mqtt://b"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, config_file=path)
    assert_one_line_naming(caught.value, f"{path}: mqtt_uri")
    assert "unknown setting" in str(caught.value)


def test_missing_config_file(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"IOTMETER_CONFIG": str(missing)})
    assert_one_line_naming(caught.value, "IOTMETER_CONFIG")
    assert "does not exist" in str(caught.value)


def test_config_file_that_is_not_toml(home: Path, tmp_path: Path) -> None:
    path = write_toml(tmp_path / "iotmeter.toml", "metrics_port = = 9108\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, config_file=path)
    assert_one_line_naming(caught.value, "IOTMETER_CONFIG")


def test_config_file_that_is_a_directory(home: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, config_file=tmp_path)
    assert_one_line_naming(caught.value, "IOTMETER_CONFIG")


# --- docs stay honest ----------------------------------------------------------------------

def documented_default(setting: Setting) -> str:
    """How docs/configuration.md shows a default."""
    if setting.default is None:
        return "unset"
    if isinstance(setting.default, bool):
        return str(setting.default).lower()
    return str(setting.default).replace("{home}", "$IOTMETER_HOME")


def doc_rows() -> dict[str, list[str]]:
    rows = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\| `(IOTMETER_[A-Z0-9_]+)` \|", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in line.strip("|").split("|")]
    return rows


def test_docs_document_every_setting() -> None:
    rows = doc_rows()
    assert set(rows) == {setting.env for setting in SETTINGS} | {"IOTMETER_CONFIG"}
    for setting in SETTINGS:
        _, toml_key, default, description = rows[setting.env]
        assert toml_key == f"`{setting.key}`", setting.env
        assert default.strip("`") == documented_default(setting), setting.env
        assert description, setting.env


def test_client_id_follows_the_broker_user_unless_set() -> None:
    """The shipped broker makes the user the client id (use_username_as_clientid): the
    collector's own name for its session and spool follows it."""
    url = "mqtt://collector-1:pw@broker:1883"
    assert load_settings({"IOTMETER_MQTT_URL": url}).client_id == "collector-1"
    assert load_settings({"IOTMETER_MQTT_URL": url,
                          "IOTMETER_CLIENT_ID": "mine"}).client_id == "mine"
    assert load_settings({"IOTMETER_MQTT_URL": "mqtt://broker"}).client_id == (
        "iotmeter-collector")


def test_tls_ca_file_must_hold_a_pem_certificate(tmp_path: Path) -> None:
    from iotmeter_tui.backend import tls

    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=r"^IOTMETER_TLS_CA_FILE: cannot read"):
        load_settings({"IOTMETER_TLS_CA_FILE": str(missing)})
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^IOTMETER_TLS_CA_FILE: .* holds no PEM"):
        load_settings({"IOTMETER_TLS_CA_FILE": str(junk)})
    good = tmp_path / "ca.pem"
    good.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    try:
        assert load_settings({"IOTMETER_TLS_CA_FILE": str(good)}).tls_ca_file == good
        assert tls.ca_file() == good
    finally:
        load_settings({})
    assert tls.ca_file() is None


def test_keymap_from_the_environment_and_a_toml_table(home: Path, tmp_path: Path) -> None:
    env = {"IOTMETER_KEYMAP": "app.quit=ctrl+x; fleet.sort=o,O"}
    assert load_settings(env=env).keymap == {"app.quit": "ctrl+x", "fleet.sort": "o,O"}
    path = write_toml(tmp_path / "c.toml", '[keymap]\n"app.quit" = "f10"\n')
    assert load_settings(env={}, config_file=path).keymap == {"app.quit": "f10"}
