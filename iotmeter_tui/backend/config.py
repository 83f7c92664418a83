"""Settings from the environment and an optional TOML file, validated once at start-up.

Every setting is declared once in `SETTINGS` with its variable, parser, default and the text
that documents it; `iotmeter config` prints that table and a test keeps README.md in step.
A bad value raises `ConfigError`, which the CLI prints as one line naming the variable.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ENV_PREFIX = "IOTMETER_"


class ConfigError(ValueError):
    """A setting has a bad value. `str()` is the one line shown to the operator."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


# --- parsers: str -> value, raising ValueError with a short reason -------------------------

def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        parts = urlsplit(text)
        if parts.scheme not in schemes:
            shown = parts.scheme or "none"
            raise ValueError(f"unsupported scheme {shown!r} in {text!r}; use {', '.join(schemes)}")
        if parts.scheme == "sqlite":
            if not parts.path or parts.path == "/":
                raise ValueError(f"{text!r} has no file path (sqlite:///path/to/file.db)")
        elif parts.scheme == "file":
            if not parts.path:
                raise ValueError(f"{text!r} has no directory path (file:///path/to/dir)")
        elif parts.scheme == "s3":
            if not parts.netloc:
                raise ValueError(f"{text!r} names no bucket (s3://bucket)")
        elif not parts.hostname:
            raise ValueError(f"{text!r} names no host")
        try:
            parts.port  # noqa: B018 - raises on a non-numeric port
        except ValueError as exc:
            raise ValueError(f"bad port in {text!r}") from exc
        return text

    return parse


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0 or value == float("inf"):  # `not >` also catches NaN
            raise ValueError(f"{text!r} must be a finite number greater than 0")
        return value

    return parse


def _name(text: str) -> str:
    # Goes into an MQTT topic filter ($share/<name>/...): no wildcards, no levels.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", text):
        raise ValueError(f"{text!r} is not a name (letters, digits, '_', '.', '-')")
    return text


def _port(text: str) -> int:
    value = _positive(int)(text)
    if value > 65535:
        raise ValueError(f"{text!r} is not a TCP port (1-65535)")
    return int(value)


def _host_port(text: str) -> str:
    # host:port for a listening socket; [v6]:port for IPv6. Port 0 lets the kernel pick one.
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9109)")
    bracketed = host.startswith("[") and host.endswith("]")
    bare = host[1:-1] if bracketed else host
    # An IPv6 address must be bracketed, or "::1:9109" would be ambiguous.
    if not re.fullmatch(r"[A-Za-z0-9.:_-]+", bare) or (":" in bare and not bracketed):
        raise ValueError(f"{text!r} has no valid host before the port")
    return text


def _sensitivity(text: str) -> str:
    # Checked here, parsed where the detector is built (collector/anomaly.py).
    from iotmeter_tui.backend.collector.anomaly import parse_sensitivity

    parse_sensitivity(text)
    return text


def _text(text: str) -> str:
    return text


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"{text!r} is not one of DEBUG, INFO, WARNING, ERROR")
    return level


@dataclass(frozen=True, slots=True)
class Setting:
    key: str  # attribute of Settings and key in the TOML file
    parse: Callable[[str], Any]
    default: Any  # None: unset; a str containing {home} is expanded after IOTMETER_HOME
    doc: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("home", _text, "~/.local/share/iotmeter",
            "Directory for the embedded stores, the collector's spool and device state."),
    Setting("mqtt_url", _url(("mqtt", "mqtts")), None,
            "Broker URL, mqtt://user:pass@host:1883 (mqtts:// for TLS). "
            "Unset: a private mosquitto child process on a free loopback port."),
    Setting("db_url", _url(("postgresql", "postgres", "sqlite")), "sqlite:///{home}/iotmeter.db",
            "Metadata store: postgresql://user:pass@host:5432/db or sqlite:///path."),
    Setting("tsdb_url", _url(("influxdb", "influxdbs", "sqlite")),
            "sqlite:///{home}/timeseries.db",
            "Time-series store: influxdb://host:8086/iot-metrics (influxdbs:// for TLS) "
            "or sqlite:///path."),
    Setting("archive_url", _url(("s3", "file")), "file://{home}/archive",
            "Raw archive: s3://bucket (see the S3 settings) or file:///path/to/dir."),
    Setting("influx_token", _text, None,
            "InfluxDB token, sent as 'Authorization: Token ...' (InfluxDB 2.x/3.x; "
            "user:password for 1.x with auth)."),
    Setting("s3_endpoint", _url(("http", "https")), None,
            "S3 endpoint URL, e.g. https://s3.example.net; unset means AWS S3."),
    Setting("s3_access_key", _text, None, "S3 access key."),
    Setting("s3_secret_key", _text, None, "S3 secret key."),
    Setting("s3_region", _text, "us-east-1", "S3 region."),
    Setting("auto_register", _bool, True,
            "Register unknown devices on their first valid message; false rejects them "
            "as unknown_device."),
    Setting("reorder_timeout_s", _positive(float), 5.0,
            "Seconds a missing seq may still arrive out of order before it counts as a gap."),
    Setting("share_group", _name, None,
            "Subscribe through $share/<group>/... so several collectors split the load."),
    Setting("client_id", _text, "iotmeter-collector",
            "MQTT client id of the collector's persistent session (one per collector)."),
    Setting("spool_max_bytes", _positive(int), 1 << 30,
            "Bound of the write-ahead spool; when full the collector stops acknowledging "
            "and the broker holds the messages."),
    Setting("archive_gzip", _bool, True, "Gzip archive objects (.ndjson.gz)."),
    Setting("archive_window_s", _positive(float), 60.0,
            "Seconds of messages per archive object, per device and category."),
    Setting("metrics_port", _port, 9108, "Port of the Prometheus /metrics endpoint."),
    Setting("redeliver_after_s", _positive(float), 10.0,
            "Seconds without an answer after which a command is published again or a "
            "firmware offer repeated (devices act once per id)."),
    Setting("firmware_listen", _host_port, "127.0.0.1:9109",
            "HOST:PORT the collector's firmware endpoint (GET /firmware/<version>) binds; "
            "it runs unless the archive is S3 and no firmware base URL is set."),
    Setting("firmware_base_url", _url(("http", "https")), None,
            "How devices reach the firmware endpoint, e.g. https://fw.example.net; unset: a "
            "presigned S3 URL when the archive is S3, else http://<firmware_listen>."),
    Setting("log_level", _log_level, "INFO", "DEBUG, INFO, WARNING or ERROR."),
    # --- anomaly ---
    Setting("anomaly_sensitivity", _sensitivity, "power_meter_dc=1,power_meter_ac=1",
            "Anomaly detector sensitivity per device type, TYPE=NUMBER,...: 2 halves the "
            "bands, 0 turns it off; a device's `anomaly_sensitivity` config wins."),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated configuration. Store URLs are always set: defaults are expanded."""

    home: Path
    mqtt_url: str | None
    db_url: str
    tsdb_url: str
    archive_url: str
    influx_token: str | None
    s3_endpoint: str | None
    s3_access_key: str | None
    s3_secret_key: str | None
    s3_region: str
    auto_register: bool
    reorder_timeout_s: float
    share_group: str | None
    client_id: str
    spool_max_bytes: int
    archive_gzip: bool
    archive_window_s: float
    metrics_port: int
    redeliver_after_s: float
    firmware_listen: str
    firmware_base_url: str | None
    log_level: str
    anomaly_sensitivity: str

    @property
    def embedded(self) -> bool:
        """True when every store is the embedded default kind (SQLite, local directory)."""
        return (
            self.db_url.startswith("sqlite:")
            and self.tsdb_url.startswith("sqlite:")
            and self.archive_url.startswith("file:")
        )

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"


assert {s.key for s in SETTINGS} == {f.name for f in fields(Settings)}


def load_settings(
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read settings: TOML file (IOTMETER_CONFIG or `config_file`), then the environment,
    then `overrides` (from command-line flags). Raises ConfigError on the first bad value."""
    env = os.environ if env is None else env
    raw: dict[str, tuple[str, Any]] = {}  # key -> (where it came from, value)

    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path:
        raw.update(_read_toml(Path(path)))
    by_key = {s.key: s for s in SETTINGS}
    for setting in SETTINGS:
        if setting.env in env and env[setting.env] != "":
            raw[setting.key] = (setting.env, env[setting.env])
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = (f"--{key.replace('_', '-')}", value)

    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.key in raw:
            origin, value = raw[setting.key]
            values[setting.key] = _parse(by_key[setting.key], origin, value)
        else:
            values[setting.key] = setting.default

    home = Path(os.path.expanduser(str(values["home"]))).resolve()
    values["home"] = home
    for setting in SETTINGS:
        value = values[setting.key]
        if isinstance(value, str) and "{home}" in value:
            values[setting.key] = value.replace("{home}", str(home))
    if values["archive_url"].startswith("s3:") and values["s3_endpoint"] is None:
        # AWS S3 itself: the minio SDK needs a host; pick the region's endpoint.
        values["s3_endpoint"] = f"https://s3.{values['s3_region']}.amazonaws.com"
    return Settings(**values)


def _parse(setting: Setting, origin: str, value: Any) -> Any:
    if not isinstance(value, str):
        # TOML gives typed values; parse their text so one parser validates both sources.
        value = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        return setting.parse(value)
    except ValueError as exc:
        raise ConfigError(origin, str(exc)) from None


def _read_toml(path: Path) -> dict[str, tuple[str, Any]]:
    variable = ENV_PREFIX + "CONFIG"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(variable, f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(variable, f"cannot read {str(path)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(variable, f"{str(path)!r} is not valid TOML: {exc}") from None
    known = {s.key for s in SETTINGS}
    out: dict[str, tuple[str, Any]] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{path}: {key}", "unknown setting")
        out[key] = (f"{path}: {key}", value)
    return out


def local_path(url: str) -> Path:
    """The file or directory a sqlite:// or file:// URL names, %-escapes decoded (the one
    place that reads such a URL). `sqlite:///abs/path` and `sqlite:////abs/path` (what
    `sqlite:///$IOTMETER_HOME/...` expands to) are the same file. Raises ValueError when the
    URL names no path."""
    path = unquote(urlsplit(url).path)
    if path.startswith("//"):
        path = path[1:]
    if path in ("", "/"):
        raise ValueError(f"{url!r} names no path (sqlite:///path/to/file.db, file:///path/to/dir)")
    return Path(path)
