"""Settings from the environment and an optional TOML file, validated once at start-up.

Every setting is declared once in `SETTINGS` with its variable, parser, default and the text
that documents it; `iotmeter config` prints that table and a test keeps README.md in step.
A bad value raises `ConfigError`, which the CLI prints as one line naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from iotmeter_tui.backend import tls
from iotmeter_tui.backend.redaction import redact

ENV_PREFIX = "IOTMETER_"


class ConfigError(ValueError):
    """A setting has a bad value. `str()` is the one line shown to the operator."""

    def __init__(self, variable: str, problem: str) -> None:
        # A bad URL is quoted back to say what was wrong with it: never with its password.
        super().__init__(f"{variable}: {redact(problem)}")
        self.variable = variable


# --- parsers: str -> value, raising ValueError with a short reason -------------------------

def _shown(text: str) -> str:
    """A URL as quoted in an error: its password redacted, and with no scheme to find the
    password by, nothing before the last '@'."""
    if "://" not in text and "@" in text:
        return "***@" + text.rpartition("@")[2]
    return redact(text)


_ENCODE_HINT = " (a password's '@', ':' and '/' must be %-encoded: %40, %3A, %2F)"


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        shown = _shown(text)
        try:
            parts = urlsplit(text)
        except ValueError as exc:  # an unbalanced '[' in the host
            raise ValueError(f"{shown!r} is not a URL: {exc}") from None
        if parts.scheme not in schemes:
            scheme = parts.scheme or "none"
            raise ValueError(f"unsupported scheme {scheme!r} in {shown!r}; "
                             f"use {', '.join(schemes)}")
        if parts.scheme == "sqlite":
            if not parts.path or parts.path == "/":
                raise ValueError(f"{shown!r} has no file path (sqlite:///path/to/file.db)")
        elif parts.scheme == "file":
            if not parts.path:
                raise ValueError(f"{shown!r} has no directory path (file:///path/to/dir)")
        elif parts.scheme == "s3":
            if not parts.netloc:
                raise ValueError(f"{shown!r} names no bucket (s3://bucket)")
        elif not parts.hostname:
            raise ValueError(f"{shown!r} names no host{_ENCODE_HINT if '@' in text else ''}")
        try:
            parts.port  # noqa: B018 - raises on a non-numeric port
        except ValueError:
            hint = _ENCODE_HINT if "@" in text else ""
            raise ValueError(f"bad port in {shown!r}{hint}") from None
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


def _github_repo(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}", text):
        raise ValueError(f"{text!r} is not OWNER/NAME of a GitHub repository")
    return text


def _name(text: str) -> str:
    # Goes into an MQTT topic filter ($share/<name>/...): no wildcards, no levels.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", text):
        raise ValueError(f"{text!r} is not a name (letters, digits, '_', '.', '-')")
    return text


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= 64:
        raise ValueError(f"{text!r} is not between 0 (sized to the machine) and 64")
    return value


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


def _host(text: str) -> str:
    # An address or host name to bind: no port, no scheme. A ':' only in an IPv6 address.
    ok = re.fullmatch(r"[A-Za-z0-9._-]+", text) is not None
    if not ok and ":" in text:
        try:
            ipaddress.IPv6Address(text)
            ok = True
        except ValueError:
            pass
    if not ok:
        raise ValueError(f"{text!r} is not a host or address (e.g. 127.0.0.1, 0.0.0.0, ::)")
    return text


def _sensitivity(text: str) -> str:
    # Checked here, parsed where the detector is built (collector/anomaly.py).
    from iotmeter_tui.backend.collector.anomaly import parse_sensitivity

    parse_sensitivity(text)
    return text


def _text(text: str) -> str:
    return text


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise ValueError(f"{text!r} must be a finite number of 0 or more")
    return value


def _origins(text: str) -> tuple[str, ...]:
    # Browsers send Origin as scheme://host[:port], nothing more; a typo would silently
    # allow nobody, so anything else is refused. "*" is refused too: keys ride along.
    origins = tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError(f"{origin!r} is not an origin (https://host[:port])")
    return origins


def _url_secret(text: str) -> str:
    # An HMAC key: short ones can be guessed offline from one signed URL.
    if len(text.encode()) < 32:
        raise ValueError("too short: give at least 32 characters (e.g. openssl rand -hex 32)")
    return text


def _public_key(text: str) -> str:
    # Imported here: config must stay importable without the crypto library loaded.
    from iotmeter_tui.backend.control.signing import parse_public_key

    parse_public_key(text)
    return text


def _ca_file(text: str) -> Path:
    path = Path(os.path.expanduser(text))
    try:
        head = path.read_bytes()[:4096]
    except OSError as exc:
        raise ValueError(f"cannot read {text!r}: {exc.strerror or exc}") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise ValueError(f"{text!r} holds no PEM certificate")
    return path


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"{text!r} is not one of DEBUG, INFO, WARNING, ERROR")
    return level


def _simulate(text: str) -> str:
    choice = text.strip().lower()
    if choice not in {"auto", "yes", "no"}:
        raise ValueError(f"{text!r} is not one of auto, yes, no")
    return choice


_KEYMAP_ID = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?")
_KEY_NAME = re.compile(r"[A-Za-z0-9_+]+")


def _keymap(text: str) -> dict[str, str]:
    """'app.quit=ctrl+x; fleet.sort=o,O' -> {binding id: keys}; keys as Textual names them,
    several separated by commas."""
    keymap: dict[str, str] = {}
    for entry in text.split(";"):
        if not entry.strip():
            continue
        binding_id, sep, keys = (part.strip() for part in entry.partition("="))
        if not sep or not _KEYMAP_ID.fullmatch(binding_id):
            raise ValueError(f"{entry.strip()!r}: write binding-id=keys (app.quit=ctrl+x)")
        names = [k.strip() for k in keys.split(",")]
        if not all(_KEY_NAME.fullmatch(k) for k in names):
            raise ValueError(f"{entry.strip()!r}: keys are names such as x, ctrl+x, f5, "
                             "separated by commas")
        keymap[binding_id] = ",".join(names)
    return keymap


def _retention(text: str) -> str:
    # Imported here: the stores package imports this module at its top.
    from iotmeter_tui.backend.stores.rollups import parse_retention

    parse_retention(text)
    return text.strip().lower()


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
    Setting("client_id", _text, None,
            "MQTT client id of the collector's persistent session (one per collector); "
            "unset: the user of IOTMETER_MQTT_URL, else iotmeter-collector."),
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
    # --- api ---
    Setting("api_host", _host, "127.0.0.1",
            "Address `iotmeter api` binds (0.0.0.0 for every interface)."),
    Setting("api_port", _port, 8080, "Port of `iotmeter api`."),
    Setting("api_workers", _positive(int), 1,
            "gunicorn worker processes of `iotmeter api` (rate limits are per worker)."),
    Setting("api_rate_limit", _non_negative_float, 50.0,
            "Requests per second each API key (or JWT subject) may make; 0 turns the limit off."),
    Setting("api_rate_burst", _positive(int), 100,
            "Requests a key may make at once before the rate limit applies."),
    Setting("api_cors_origins", _origins, None,
            "Comma-separated origins allowed to call the API from a browser "
            "(https://ops.example.net); none by default."),
    Setting("api_max_body_bytes", _positive(int), 1 << 20,
            "Largest request body the API accepts (413 above); firmware uploads excepted."),
    Setting("api_max_firmware_bytes", _positive(int), 64 << 20,
            "Largest firmware image the API accepts in one upload (413 above)."),
    Setting("api_jwks_url", _url(("http", "https")), None,
            "JWKS URL of an identity provider: JWT bearer tokens signed by its keys are "
            "accepted. Unset: API keys only."),
    Setting("api_jwt_audience", _text, None, "Audience (aud) a JWT must carry."),
    Setting("api_jwt_issuer", _text, None, "Issuer (iss) a JWT must carry."),
    Setting("api_jwt_role_claim", _text, "iotmeter_role",
            "JWT claim holding the role: viewer, operator or admin."),
    # --- obs ---
    Setting("health_interval_s", _positive(float), 15.0,
            "Seconds between the collector's store probes (/readyz, iotmeter_store_up) and "
            "its fleet figures queries (iotmeter_fleet_*)."),
    Setting("github_repo", _github_repo, None,
            "alert-relay: OWNER/NAME of the repository that gets one issue per alert group."),
    Setting("github_token", _text, None, "alert-relay: GitHub token (issues: read and write)."),
    Setting("github_token_file", _text, None,
            "alert-relay: file holding the GitHub token (instead of IOTMETER_GITHUB_TOKEN)."),
    Setting("github_api_url", _url(("http", "https")), "https://api.github.com",
            "alert-relay: GitHub REST API base URL (GitHub Enterprise: https://HOST/api/v3)."),
    Setting("alert_relay_token", _text, None,
            "alert-relay: bearer token Alertmanager's webhook must carry (http_config)."),
    Setting("alert_relay_token_file", _text, None,
            "alert-relay: file holding the webhook bearer token."),
    Setting("dashboard_url", _url(("http", "https")), None,
            "alert-relay: Grafana dashboard URL every issue links to, e.g. "
            "https://grafana.example.net/d/iotmeter-overview."),
    # --- firmware ---
    Setting("firmware_url_secret", _url_secret, None,
            "Secret (32+ characters) that signs the firmware endpoint's expiring download "
            "URLs; unset: generated once into $IOTMETER_HOME/firmware-url.secret (0600). "
            "Collectors behind one firmware address need the same one."),
    Setting("firmware_max_downloads", _positive(int), 16,
            "Firmware downloads served at once; more are answered 503 with Retry-After."),
    Setting("firmware_idle_timeout_s", _positive(float), 60.0,
            "Seconds a firmware download may make no progress (per read or write) before "
            "it is cut; the whole transfer may take as long as it needs."),
    Setting("firmware_public_key", _public_key, None,
            "Ed25519 public key firmware must be signed with (base64, or a file holding it "
            "or a PEM key): uploads without a valid signature are refused, and simulated "
            "meters pin it."),
    # --- broker identities ---
    Setting("mqtt_dispatch_url", _url(("mqtt", "mqtts")), None,
            "Broker URL of the collector's dispatcher (commands, firmware offers) with a "
            "user of its own; unset: IOTMETER_MQTT_URL. Required by a broker that ties "
            "client ids to users (the shipped use_username_as_clientid, dynamic security)."),
    Setting("mqtt_sys_url", _url(("mqtt", "mqtts")), None,
            "Broker URL of a user allowed to read $SYS/broker/#, for the collector's broker "
            "metrics; unset: IOTMETER_MQTT_URL, or no broker metrics when "
            "IOTMETER_MQTT_DISPATCH_URL is set (the broker ties client ids to users)."),
    Setting("mqtt_admin_url", _url(("mqtt", "mqtts")), None,
            "Broker URL with the dynamic security admin user: `device add` creates the "
            "device's own broker client and shows its password once; `device rm` revokes it."),
    Setting("tls_ca_file", _ca_file, None,
            "PEM file of a private CA trusted besides the system's, for mqtts://, "
            "influxdbs://, https:// S3 and PostgreSQL (sslrootcert, with sslmode=verify-full)."),
    # --- ux ---
    Setting("simulate", _simulate, "auto",
            "Dashboard demo fleet of simulated meters: auto (on the embedded defaults, at "
            "every start), yes (always), no (never); --simulate overrides it."),
    Setting("planned_reboot_s", _positive(float), 300.0,
            "Seconds a meter may stay offline after a planned reboot (an OTA install or a "
            "reboot command) before it raises an offline alert."),
    Setting("offline_group_min", _positive(int), 5,
            "This many meters or more going offline within one check raise one grouped "
            "offline alert (how many, where) instead of one alert each."),
    Setting("serve_token", _text, None,
            "Token `iotmeter serve` requires when bound to a non-loopback address; unset: "
            "one is made up at start and printed in the URL."),
    Setting("keymap", _keymap, None,
            "Dashboard keys: 'binding-id=keys; ...', e.g. 'app.quit=ctrl+x; fleet.sort=o' "
            "(binding ids in docs/dashboard.md)."),
    # --- security (collector and operator host) ---
    Setting("metrics_host", _host, "127.0.0.1",
            "Address the collector's Prometheus /metrics endpoint binds; 0.0.0.0 (or ::) "
            "for a scraper on another host."),
    Setting("field_budget", _positive(int), 64,
            "Distinct telemetry field names each device type may use (learned since the "
            "collector started); a message bringing more is rejected as field_budget."),
    # --- rollups and retention ---
    # On by default: a collector outside any share group folds InfluxDB rollups as it goes
    # and keeps up with 5,000 meters; in a share group (the shipped deployments) InfluxDB
    # recomputes every touched bucket, which did not keep up with 5,000 meters on 2 cores,
    # so those deployments set it off (docs/performance.md, round four).
    Setting("rollups", _bool, True,
            "Keep 1-minute and 1-hour rollups in the time-series store (the collector's rollup "
            "sink, off the write path), so long chart windows read them."),
    Setting("retention_raw", _retention, "inf",
            "How long raw time-series points are kept: 30d, 12h, 52w or inf (at least 1h)."),
    Setting("retention_1m", _retention, "inf",
            "How long 1-minute rollups are kept (like retention_raw)."),
    Setting("retention_1h", _retention, "inf",
            "How long 1-hour rollups are kept (like retention_raw)."),
    # --- anomaly ---
    Setting("anomaly_sensitivity", _sensitivity, "power_meter_dc=1,power_meter_ac=1",
            "Anomaly detector sensitivity per device type, TYPE=NUMBER,...: 2 halves the "
            "bands, 0 turns it off; a device's `anomaly_sensitivity` config wins."),
    # --- collector workers ---
    Setting("collector_workers", _workers, 1,
            "Collector processes of `iotmeter --collector-only` and the dashboard, on one "
            "shared subscription; 0: one per CPU, at most 8. --workers wins. One by "
            "default: with several, sequence-gap alerts are off (the broker splits a "
            "device's messages across workers)."),
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
    # --- api ---
    api_host: str
    api_port: int
    api_workers: int
    api_rate_limit: float
    api_rate_burst: int
    api_cors_origins: tuple[str, ...] | None  # None: no browser origin is allowed
    api_max_body_bytes: int
    api_max_firmware_bytes: int
    api_jwks_url: str | None
    api_jwt_audience: str | None
    api_jwt_issuer: str | None
    api_jwt_role_claim: str
    # --- obs ---
    health_interval_s: float
    github_repo: str | None
    github_token: str | None
    github_token_file: str | None
    github_api_url: str
    alert_relay_token: str | None
    alert_relay_token_file: str | None
    dashboard_url: str | None
    # --- firmware ---
    firmware_url_secret: str | None
    firmware_max_downloads: int
    firmware_idle_timeout_s: float
    firmware_public_key: str | None
    mqtt_dispatch_url: str | None
    mqtt_sys_url: str | None
    mqtt_admin_url: str | None
    tls_ca_file: Path | None
    simulate: str
    planned_reboot_s: float
    offline_group_min: int
    serve_token: str | None
    keymap: dict[str, str] | None
    # --- security (collector and operator host) ---
    metrics_host: str
    field_budget: int
    rollups: bool
    retention_raw: str
    retention_1m: str
    retention_1h: str
    anomaly_sensitivity: str
    collector_workers: int

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
    if values["client_id"] is None:
        # The collector's client id follows its broker identity, as the shipped broker
        # forces it (use_username_as_clientid): one user, one session, one spool.
        user = urlsplit(values["mqtt_url"] or "").username
        values["client_id"] = unquote(user) if user else "iotmeter-collector"
    tls.use_ca_file(values["tls_ca_file"])
    return Settings(**values)


def _parse(setting: Setting, origin: str, value: Any) -> Any:
    if isinstance(value, dict):  # a TOML table ([keymap]): the same text as the variable
        value = "; ".join(f"{k}={v}" for k, v in value.items())
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
