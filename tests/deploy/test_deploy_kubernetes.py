"""deploy/kubernetes: the base and every overlay, rendered by the real `kubectl kustomize` (what
`kubectl apply -k` sends) and checked offline: the Kubernetes API schemas (kubernetes-validate,
strict), and across objects: every reference resolves, every secret file a pod reads is in the
Secret it mounts, the settings are valid, selectors and named ports agree, Pod Security
"restricted" holds for every pod, NetworkPolicies cover every pod, images are pinned.

The staging overlay generates its Secrets from files deploy/make-secrets.sh writes: it is
rendered from a copy of deploy/kubernetes with those files in place. Custom resources
(PodMonitor, PrometheusRule, ExternalSecret) have no schema offline: their fields are checked
against what the base uses."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import DEPLOY, K8S, known_variable, load_entrypoint, need, render

from iotmeter_tui.backend.config import load_settings

KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")  # oldest the manifests support, and a recent one
NAMESPACE = "iotmeter"
IMAGE_UID = 10001  # deploy/Dockerfile's USER (tests/deploy/test_deploy.py checks it)
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),  # the observability work's, for API and relay
    ("external-secrets.io/v1", "ExternalSecret"),
}
# The Secrets the base mounts and leaves to the overlays.
BASE_SECRETS = {"iotmeter-stores", "iotmeter-collector", "iotmeter-alert-relay"}
PROTOCOL_READS = {"iot/+/telemetry", "iot/+/hello", "iot/+/status", "iot/+/command/ack",
                  "iot/+/ota/status"}
PROTOCOL_WRITES = {"iot/+/command", "iot/+/ota"}
entrypoint = load_entrypoint()

Objects = list[dict[str, Any]]


def overlay_names() -> list[str]:
    return sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Objects]:
    """name -> rendered objects, for the base and every overlay."""
    copy = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets"))
    (copy.parent / "secrets").mkdir(mode=0o700)
    (copy.parent / "secrets" / "github_token").write_text("ghp_the-operators-token\n")
    result = subprocess.run(
        ["sh", str(DEPLOY / "make-secrets.sh"), "--kubernetes"], capture_output=True, text=True,
        env={"PATH": os.environ["PATH"], "SECRETS_DIR": str(copy.parent / "secrets"),
             "KUBERNETES_SECRETS_DIR": str(copy / "overlays" / "staging" / "secrets")})
    assert result.returncode == 0, result.stderr
    out = {"base": render(copy / "base")}
    for name in overlay_names():
        out[name] = render(copy / "overlays" / name)
    return out


def by_kind(objects: Objects, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workloads(objects: Objects) -> Iterator[dict[str, Any]]:
    for o in objects:
        if o["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}:
            yield o


def pod_specs(objects: Objects) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    """(workload name, pod spec, pod labels)."""
    for w in workloads(objects):
        template = w["spec"]["template"]
        yield w["metadata"]["name"], template["spec"], template["metadata"]["labels"]


def containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def label_selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if not matches(selector.get("matchLabels", {}), labels):
        return False
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def secret_keys(objects: Objects) -> dict[str, set[str]]:
    """Secret name (before kustomize's hash suffix) -> its keys, from Secrets or ExternalSecrets."""
    keys: dict[str, set[str]] = {}
    for o in objects:
        if o["kind"] == "Secret":
            name = re.sub(r"-[a-z0-9]{10}$", "", o["metadata"]["name"])
            keys[name] = set(o.get("data", {})) | set(o.get("stringData", {}))
        elif o["kind"] == "ExternalSecret":
            keys[o["spec"]["target"]["name"]] = {d["secretKey"] for d in o["spec"]["data"]}
    return keys


def secret_names_of(volume: Mapping[str, Any]) -> list[str]:
    if "secret" in volume:
        return [volume["secret"]["secretName"]]
    if "projected" in volume:
        return [s["secret"]["name"] for s in volume["projected"]["sources"] if "secret" in s]
    return []


def unhashed(name: str) -> str:
    return re.sub(r"-[a-z0-9]{10}$", "", name)


# --- rendering and schemas ------------------------------------------------------------------


def test_every_overlay_is_rendered() -> None:
    assert overlay_names() == ["production", "production-emqx", "staging"]


def test_rendered_objects_validate_against_the_api_schemas(
        rendered: dict[str, Objects]) -> None:
    kubernetes_validate = need("kubernetes_validate", "kubernetes-validate")
    for overlay, objects in rendered.items():
        for o in objects:
            if (o["apiVersion"], o["kind"]) in CUSTOM_RESOURCES:
                continue  # no schema offline: test_custom_resources
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(o, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"{overlay}: {o['kind']}/{o['metadata']['name']} on "
                                f"Kubernetes {version}: {exc.message}")


def test_only_known_custom_resources(rendered: dict[str, Objects]) -> None:
    builtin = re.compile(r"^(v1|apps/v1|policy/v1|autoscaling/v2|networking\.k8s\.io/v1)$")
    for overlay, objects in rendered.items():
        for o in objects:
            known = (o["apiVersion"], o["kind"]) in CUSTOM_RESOURCES
            assert known or builtin.match(o["apiVersion"]), f"{overlay}: {o['kind']}"


def test_everything_is_in_one_namespace(rendered: dict[str, Objects]) -> None:
    for overlay, objects in rendered.items():
        assert NAMESPACE in by_kind(objects, "Namespace"), overlay
        for o in objects:
            if o["kind"] != "Namespace":
                assert o["metadata"]["namespace"] == NAMESPACE, f"{overlay}: {o['kind']}"
        labels = by_kind(objects, "Namespace")[NAMESPACE]["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# --- references ----------------------------------------------------------------------------


def test_references_resolve(rendered: dict[str, Objects]) -> None:
    for overlay, objects in rendered.items():
        config_maps = set(by_kind(objects, "ConfigMap")) | {
            unhashed(n) for n in by_kind(objects, "ConfigMap")}
        secrets = set(secret_keys(objects)) | set(by_kind(objects, "Secret"))
        accounts = set(by_kind(objects, "ServiceAccount"))
        missing_secrets = set()
        for name, spec, _ in pod_specs(objects):
            if "serviceAccountName" in spec:
                assert spec["serviceAccountName"] in accounts, f"{overlay}/{name}"
            for volume in spec.get("volumes", []):
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in config_maps, f"{overlay}/{name}"
                for secret in secret_names_of(volume):
                    if secret not in secrets and unhashed(secret) not in secrets:
                        missing_secrets.add(secret)
            for c in containers(spec):
                for source in c.get("envFrom", []):
                    assert source["configMapRef"]["name"] in config_maps, f"{overlay}/{name}"
                for item in c.get("env", []):
                    ref = item.get("valueFrom", {}).get("secretKeyRef")
                    if ref and ref["name"] not in secrets:
                        missing_secrets.add(ref["name"])
        if overlay == "base":
            assert missing_secrets == BASE_SECRETS, "the base leaves exactly these to overlays"
        elif overlay == "production-emqx":
            # The EMQX dashboard's password: created out of band (components/emqx).
            assert missing_secrets == {"emqx"}
        else:
            assert not missing_secrets, f"{overlay}: no Secret {sorted(missing_secrets)}"


def test_every_secret_file_a_pod_reads_is_in_the_secrets_it_mounts(
        rendered: dict[str, Objects]) -> None:
    """IOTMETER_<X>_FILE=/run/secrets/<dir>/IOTMETER_<X>: a key of a Secret mounted there."""
    for overlay in ("staging", "production"):
        objects = rendered[overlay]
        keys = secret_keys(objects)
        for name, spec, _ in pod_specs(objects):
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for c in containers(spec):
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                for item in c.get("env", []):
                    if not item["name"].endswith("_FILE") or "value" not in item:
                        continue
                    directory, _, key = item["value"].rpartition("/")
                    if not item["name"].startswith("IOTMETER_"):
                        continue
                    assert key == item["name"].removesuffix("_FILE"), f"{name}: {item}"
                    volume = volumes[mounts[directory]]
                    available = set().union(*(keys[unhashed(s)] for s in
                                              secret_names_of(volume)))
                    assert key in available, f"{overlay}/{name}: {key} not in its Secrets"


def env_of(objects: Objects, workload: str, secrets_dir: Path) -> dict[str, str]:
    """The environment the entry point hands to iotmeter in a pod of `workload` (staging:
    the generated Secrets' values written where the pod would read them)."""
    w = next(x for x in workloads(objects) if x["metadata"]["name"] == workload)
    container = w["spec"]["template"]["spec"]["containers"][0]
    config_maps = by_kind(objects, "ConfigMap")
    values: dict[str, str] = {}
    for o in objects:
        if o["kind"] == "Secret":
            for key, value in o.get("data", {}).items():
                values[key] = base64.b64decode(value).decode()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item and item["name"].endswith("_FILE"):
            key = item["value"].rpartition("/")[2]
            path = secrets_dir / key
            path.write_text(values[key] + "\n")
            env[item["name"]] = str(path)
        elif "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = f"{workload}-0"  # the pod name, from the downward API
    return entrypoint.secrets_from_files(env)


def test_staging_settings_point_at_the_in_cluster_stores(
        rendered: dict[str, Objects], tmp_path: Path) -> None:
    objects = rendered["staging"]
    services = by_kind(objects, "Service")
    for workload in ("iotmeter-collector", "iotmeter-api", "iotmeter-alert-relay"):
        env = env_of(objects, workload, tmp_path)
        assert all(known_variable(k) for k in env if k.startswith("IOTMETER_")), env.keys()
        settings = load_settings(env=env)
        if workload == "iotmeter-alert-relay":
            continue
        assert not settings.embedded
        for url in (settings.db_url, settings.tsdb_url, settings.s3_endpoint or "",
                    settings.mqtt_url or "mqtt://mosquitto:1883"):
            host, port = re.match(r"\w+://(?:[^@/]*@)?([\w.-]+):(\d+)", url).groups()  # type: ignore[union-attr]
            assert host in services, f"{workload}: {url} names no Service of the overlay"
            assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}
    collector = load_settings(env=env_of(objects, "iotmeter-collector", tmp_path))
    assert collector.mqtt_url and collector.share_group
    assert collector.client_id == "iotmeter-collector-0"


SECRET_VARIABLES = {"IOTMETER_MQTT_URL", "IOTMETER_DB_URL", "IOTMETER_INFLUX_TOKEN",
                    "IOTMETER_S3_ACCESS_KEY", "IOTMETER_S3_SECRET_KEY", "IOTMETER_GITHUB_TOKEN",
                    "IOTMETER_ALERT_RELAY_TOKEN"}


def test_no_secret_in_a_config_map(rendered: dict[str, Objects]) -> None:
    secret_names = (*SECRET_VARIABLES, "PASSWORD")
    for overlay, objects in rendered.items():
        for name, config_map in by_kind(objects, "ConfigMap").items():
            for key in config_map.get("data", {}):
                assert not key.endswith(secret_names), f"{overlay}: {name}/{key} is a secret"
        for w_name, spec, _ in pod_specs(objects):
            for c in containers(spec):
                for item in c.get("env", []):
                    if item["name"].endswith(secret_names):
                        assert "valueFrom" in item, f"{overlay}/{w_name}: {item['name']} inline"


# --- selectors, ports, scaling -------------------------------------------------------------


def test_selectors_and_named_ports_agree(rendered: dict[str, Objects]) -> None:
    for overlay, objects in rendered.items():
        pods = list(pod_specs(objects))
        for w in workloads(objects):
            labels = w["spec"]["template"]["metadata"]["labels"]
            assert label_selector_matches(w["spec"]["selector"], labels), w["metadata"]["name"]
        for name, service in by_kind(objects, "Service").items():
            selected = [(spec, labels) for _, spec, labels in pods
                        if matches(service["spec"]["selector"], labels)]
            assert selected, f"{overlay}: Service {name} selects no pod"
            for port in service["spec"]["ports"]:
                target = port["targetPort"]
                for spec, _ in selected:
                    named = {p["name"]: p["containerPort"] for c in spec["containers"]
                             for p in c.get("ports", [])}
                    assert target in named, f"{overlay}: Service {name} port {target}"
        for name, pdb in by_kind(objects, "PodDisruptionBudget").items():
            assert any(label_selector_matches(pdb["spec"]["selector"], labels)
                       for _, _, labels in pods), f"{overlay}: PDB {name} selects no pod"
        for name, hpa in by_kind(objects, "HorizontalPodAutoscaler").items():
            target = hpa["spec"]["scaleTargetRef"]
            assert target["name"] in by_kind(objects, target["kind"]), f"{overlay}: HPA {name}"
            deployment = by_kind(objects, target["kind"])[target["name"]]
            resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
            assert resources["requests"]["cpu"], "a CPU target needs a CPU request"
            assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= (
                hpa["spec"]["maxReplicas"])
        for sts in by_kind(objects, "StatefulSet").values():
            governing = by_kind(objects, "Service").get(sts["spec"]["serviceName"])
            if sts["metadata"]["name"] in {"iotmeter-collector", "emqx"}:
                assert governing and governing["spec"]["clusterIP"] == "None"


def test_base_parts(rendered: dict[str, Objects]) -> None:
    objects = rendered["base"]
    assert set(by_kind(objects, "StatefulSet")) == {"iotmeter-collector"}
    assert set(by_kind(objects, "Deployment")) == {"iotmeter-api", "iotmeter-alert-relay"}
    assert set(by_kind(objects, "HorizontalPodAutoscaler")) == {"iotmeter-api"}
    assert {"iotmeter-collector", "iotmeter-api"} <= set(by_kind(objects, "PodDisruptionBudget"))
    roles = {w["metadata"]["name"]: w["spec"]["template"]["spec"]["containers"][0]["args"]
             for w in workloads(objects)}
    assert roles == {"iotmeter-collector": ["collector"], "iotmeter-api": ["api"],
                     "iotmeter-alert-relay": ["alert-relay"]}
    assert all(args[0] in entrypoint.ROLES for args in roles.values())
    ports = {w["metadata"]["name"]: {p["containerPort"] for c in
                                     w["spec"]["template"]["spec"]["containers"]
                                     for p in c["ports"]} for w in workloads(objects)}
    assert ports == {"iotmeter-collector": {9108, 9109}, "iotmeter-api": {8080},
                     "iotmeter-alert-relay": {9095}}
    for w in workloads(objects):
        c = w["spec"]["template"]["spec"]["containers"][0]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_collector_identity_and_spool(rendered: dict[str, Objects]) -> None:
    for overlay, objects in rendered.items():
        sts = by_kind(objects, "StatefulSet")["iotmeter-collector"]
        pod = sts["spec"]["template"]["spec"]
        container = pod["containers"][0]
        client_id = next(e for e in container["env"] if e["name"] == "IOTMETER_CLIENT_ID")
        assert client_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert pod["terminationGracePeriodSeconds"] >= 15
        home = by_kind(objects, "ConfigMap")["iotmeter-collector"]["data"]["IOTMETER_HOME"]
        claims = {t["metadata"]["name"]: t for t in sts["spec"]["volumeClaimTemplates"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts[home] in claims, "the spool must be on the pod's own persistent volume"
        size = claims[mounts[home]]["spec"]["resources"]["requests"]["storage"]
        spool_max = int(by_kind(objects, "ConfigMap")["iotmeter-collector"]["data"][
            "IOTMETER_SPOOL_MAX_BYTES"])
        assert size.endswith("Gi") and spool_max + (64 << 20) < int(size[:-2]) << 30, overlay
        assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
            "whenDeleted": "Retain", "whenScaled": "Retain"}


# --- security ------------------------------------------------------------------------------


def test_every_pod_passes_pod_security_restricted(rendered: dict[str, Objects]) -> None:
    for overlay, objects in rendered.items():
        for name, spec, labels in pod_specs(objects):
            where = f"{overlay}/{name}"
            security = spec["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert spec["automountServiceAccountToken"] is False, where
            assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
            for c in containers(spec):
                cs = c["securityContext"]
                assert cs["allowPrivilegeEscalation"] is False, f"{where}/{c['name']}"
                assert cs["capabilities"]["drop"] == ["ALL"], f"{where}/{c['name']}"
                assert not cs.get("privileged"), f"{where}/{c['name']}"
                assert "add" not in cs["capabilities"], f"{where}/{c['name']}"
            if labels.get("app.kubernetes.io/name") == "iotmeter":
                assert security["runAsUser"] == IMAGE_UID == security["fsGroup"], where
                assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"]


def test_images_are_pinned(rendered: dict[str, Objects]) -> None:
    for overlay, objects in rendered.items():
        for name, spec, _ in pod_specs(objects):
            for c in containers(spec):
                repository, _, tag = c["image"].rpartition(":")
                assert repository and re.search(r"\d+\.\d+", tag), f"{overlay}/{name}: {c['image']}"


def policies_for(objects: Objects, labels: Mapping[str, str]) -> list[dict[str, Any]]:
    return [p for p in by_kind(objects, "NetworkPolicy").values()
            if label_selector_matches(p["spec"]["podSelector"], labels)]


def test_network_policies_cover_every_pod(rendered: dict[str, Objects]) -> None:
    """Deny by default; each pod has a policy of its own that opens what it needs, on ports
    it has (named ports must exist on the selected pods)."""
    for overlay, objects in rendered.items():
        policies = by_kind(objects, "NetworkPolicy")
        deny = policies["default-deny"]["spec"]
        assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
        assert "ingress" not in deny and "egress" not in deny
        for name, spec, labels in pod_specs(objects):
            own = [p for p in policies_for(objects, labels) if p["spec"]["podSelector"]]
            assert own, f"{overlay}/{name}: no NetworkPolicy of its own"
            ports = {p.get("name") for c in spec["containers"] for p in c.get("ports", [])}
            numbers = {p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}
            for policy in own:
                for rule in policy["spec"].get("ingress", []):
                    for port in rule.get("ports", []):
                        value = port["port"]
                        if isinstance(value, str):
                            assert value in ports, f"{overlay}/{name}: no port named {value}"
                        elif policy["metadata"]["name"] != "stores":  # one policy, three stores
                            assert value in numbers, f"{overlay}/{name}: no port {value}"


def test_the_collector_may_reach_only_broker_and_stores(rendered: dict[str, Objects]) -> None:
    objects = rendered["base"]
    policy = by_kind(objects, "NetworkPolicy")["iotmeter-collector"]["spec"]
    egress = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress == {1883, 8883, 5432, 8086, 443, 8333}
    relay = by_kind(objects, "NetworkPolicy")["iotmeter-alert-relay"]["spec"]
    assert {p["port"] for rule in relay["egress"] for p in rule["ports"]} == {443}


# --- staging -------------------------------------------------------------------------------


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key, []).append(value.strip())
    return out


def test_staging_broker_is_no_weaker_than_the_compose_broker() -> None:
    staging = directives((K8S / "overlays/staging/mosquitto/mosquitto.conf").read_text())
    shipped = directives((DEPLOY / "mosquitto/mosquitto.conf").read_text())
    for key in ("max_inflight_messages", "max_queued_messages"):
        assert int(staging[key][0]) >= int(shipped[key][0]), key
    for key in ("persistence", "max_queued_bytes", "allow_anonymous", "autosave_interval"):
        assert staging[key] == shipped[key], key
    assert staging["listener"] == ["1883"]


def test_staging_acl_grants_each_user_exactly_its_topics() -> None:
    """The collector reads what devices send, its dispatcher writes commands and offers,
    devices only their own topics; nothing else (as deploy/mosquitto/acl)."""
    acl = (K8S / "overlays/staging/mosquitto/acl").read_text()
    blocks = {name: acl.split(f"user {name}\n")[1].split("\n\n")[0]
              for name in ("collector", "dispatcher")}
    grants = {name: {(kind, topic) for kind, topic in
                     re.findall(r"^topic (\w+) (\S+)$", block, re.MULTILINE)}
              for name, block in blocks.items()}
    assert grants["collector"] == {("read", t) for t in PROTOCOL_READS}
    assert grants["dispatcher"] == {("write", t) for t in PROTOCOL_WRITES}
    device_writes = set(re.findall(r"^pattern write (\S+)$", acl, re.MULTILINE))
    assert device_writes == {t.replace("+", "%u") for t in PROTOCOL_READS}
    device_reads = set(re.findall(r"^pattern read (\S+)$", acl, re.MULTILINE))
    assert device_reads == {t.replace("+", "%u") for t in PROTOCOL_WRITES}
    assert "readwrite" not in acl


def test_staging_broker_has_a_user_for_each_connection(rendered: dict[str, Objects]) -> None:
    """The broker makes the username the client id: the collector's intake and dispatcher
    connect as the users the init container creates, with the passwords of the Secrets."""
    conf = directives((K8S / "overlays/staging/mosquitto/mosquitto.conf").read_text())
    assert conf["use_username_as_clientid"] == ["true"]
    objects = rendered["staging"]
    mosquitto = by_kind(objects, "StatefulSet")["mosquitto"]["spec"]["template"]["spec"]
    script = mosquitto["initContainers"][0]["args"][0]
    created = dict(re.findall(r"mosquitto_passwd -b \S+ (\w+) \\\s*\"\$\(cat \S+/(\w+)\)\"",
                              script))
    assert created == {"collector": "MQTT_COLLECTOR_PASSWORD",
                       "dispatcher": "MQTT_DISPATCHER_PASSWORD"}
    values = {}
    for o in objects:
        if o["kind"] == "Secret":
            values.update({k: base64.b64decode(v).decode() for k, v in o["data"].items()})
    for variable, user in (("IOTMETER_MQTT_URL", "collector"),
                           ("IOTMETER_MQTT_DISPATCH_URL", "dispatcher")):
        password = values[created[user]]
        assert values[variable] == f"mqtt://{user}:{password}@mosquitto:1883"
    assert by_kind(objects, "StatefulSet")["iotmeter-collector"]["spec"]["replicas"] == 1


def test_staging_has_the_stores_in_the_cluster(rendered: dict[str, Objects]) -> None:
    objects = rendered["staging"]
    images = {name: spec["containers"][0]["image"] for name, spec, _ in pod_specs(objects)}
    assert images["postgres"].startswith("postgres:15.")
    assert images["influxdb"].startswith("influxdb:2.7.")
    assert images["seaweedfs"].startswith("chrislusf/seaweedfs:")
    assert images["mosquitto"].startswith("eclipse-mosquitto:2.")
    influx = next(s for n, s, _ in pod_specs(objects) if n == "influxdb")["containers"][0]
    env = {e["name"]: e.get("value") for e in influx["env"]}
    assert env["DOCKER_INFLUXDB_INIT_ORG"] == "iot-org"
    assert env["DOCKER_INFLUXDB_INIT_BUCKET"] == "iot-metrics"
    secrets = {unhashed(o["metadata"]["name"]) for o in objects if o["kind"] == "Secret"}
    assert secrets == BASE_SECRETS | {"iotmeter-staging-stores"}


# --- production ----------------------------------------------------------------------------


def test_production_takes_secrets_from_the_external_store(rendered: dict[str, Objects]) -> None:
    objects = rendered["production"]
    assert not by_kind(objects, "Secret"), "no Secret in git: the operator syncs them"
    external = by_kind(objects, "ExternalSecret")
    assert {e["spec"]["target"]["name"] for e in external.values()} == BASE_SECRETS
    for name, e in external.items():
        assert e["spec"]["secretStoreRef"]["kind"] in {"SecretStore", "ClusterSecretStore"}
        assert e["spec"]["refreshInterval"]
        for item in e["spec"]["data"]:
            assert known_variable(item["secretKey"]), f"{name}: {item['secretKey']}"
            assert item["remoteRef"]["key"] and item["remoteRef"]["property"]


def test_production_scale_and_tls_ingress(rendered: dict[str, Objects]) -> None:
    objects = rendered["production"]
    assert by_kind(objects, "StatefulSet")["iotmeter-collector"]["spec"]["replicas"] >= 3
    assert by_kind(objects, "HorizontalPodAutoscaler")["iotmeter-api"]["spec"]["minReplicas"] >= 3
    services = by_kind(objects, "Service")
    ingresses = by_kind(objects, "Ingress")
    assert "iotmeter-api" in ingresses
    for name, ingress in ingresses.items():
        tls_hosts = {h for t in ingress["spec"]["tls"] for h in t["hosts"]}
        for rule in ingress["spec"]["rules"]:
            assert rule["host"] in tls_hosts, f"{name}: {rule['host']} without TLS"
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in services
                assert backend["port"]["name"] in {
                    p["name"] for p in services[backend["name"]]["spec"]["ports"]}
    for c in (by_kind(objects, "StatefulSet")["iotmeter-collector"]["spec"]["template"]["spec"]
              ["containers"]):
        assert c["image"].startswith("registry.example.net/iotmeter:")


# --- a clustered broker --------------------------------------------------------------------


def test_emqx_component_has_what_the_collectors_need(rendered: dict[str, Objects]) -> None:
    objects = rendered["production-emqx"]
    emqx = by_kind(objects, "StatefulSet")["emqx"]
    assert emqx["spec"]["replicas"] >= 3
    env = {e["name"]: e.get("value") for e in emqx["spec"]["template"]["spec"]["containers"][0]
           ["env"]}
    shipped = directives((DEPLOY / "mosquitto/mosquitto.conf").read_text())
    assert int(env["EMQX_MQTT__MAX_MQUEUE_LEN"]) >= int(shipped["max_queued_messages"][0])
    assert int(env["EMQX_MQTT__MAX_INFLIGHT"]) >= int(shipped["max_inflight_messages"][0])
    assert env["EMQX_MQTT__SESSION_EXPIRY_INTERVAL"].endswith("d")
    assert env["EMQX_MQTT__SHARED_SUBSCRIPTION_STRATEGY"] == "round_robin"
    assert env["EMQX_AUTHORIZATION__NO_MATCH"] == "deny"
    assert env["EMQX_CLUSTER__DISCOVERY_STRATEGY"] == "dns"
    headless = emqx["spec"]["serviceName"]
    assert env["EMQX_CLUSTER__DNS__NAME"] == f"{headless}.{NAMESPACE}.svc.cluster.local"
    assert env["EMQX_NODE__NAME"].endswith(f".{headless}.{NAMESPACE}.svc.cluster.local")
    acl_dir = env["EMQX_AUTHORIZATION__SOURCES__1__PATH"].rpartition("/")[0]
    mounts = {m["mountPath"]: m["name"] for m in
              emqx["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert acl_dir in mounts
    # The ACL grants the collector exactly the protocol's topics, devices only their own.
    acl = (K8S / "components/emqx/acl.conf").read_text()
    collector_sub = re.search(r'\{allow, \{username, "collector"\}, subscribe,\s*\[([^\]]*)\]', acl)
    collector_pub = re.search(r'\{allow, \{username, "collector"\}, publish, \[([^\]]*)\]', acl)
    assert collector_sub and collector_pub
    assert set(re.findall(r'"([^"]+)"', collector_sub.group(1))) == PROTOCOL_READS
    assert set(re.findall(r'"([^"]+)"', collector_pub.group(1))) == PROTOCOL_WRITES
    assert acl.rstrip().endswith("{deny, all}.")
    # The collectors keep their share group; the broker's Service is what their URL names.
    assert by_kind(objects, "ConfigMap")["iotmeter-collector"]["data"]["IOTMETER_SHARE_GROUP"]
    assert 1883 in {p["port"] for p in by_kind(objects, "Service")["emqx"]["spec"]["ports"]}


# --- monitoring ----------------------------------------------------------------------------


def test_monitoring_objects_watch_the_collectors(rendered: dict[str, Objects]) -> None:
    objects = rendered["base"]
    pod_monitor = next(iter(by_kind(objects, "PodMonitor").values()))
    sts = by_kind(objects, "StatefulSet")["iotmeter-collector"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert matches(pod_monitor["spec"]["selector"]["matchLabels"], labels)
    port_names = {p["name"] for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in port_names
    # ServiceMonitors (the API's and the relay's) select a Service with the port they name.
    services = by_kind(objects, "Service")
    for name, monitor in by_kind(objects, "ServiceMonitor").items():
        selected = [s for s in services.values() if label_selector_matches(
            monitor["spec"]["selector"], s["metadata"].get("labels", {}))]
        assert selected, f"ServiceMonitor {name} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
                       for s in selected), f"ServiceMonitor {name}: port {endpoint['port']}"
    rules = next(iter(by_kind(objects, "PrometheusRule").values()))
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    # kustomize re-serialises block scalars (a blank line may appear in an expression).
    assert normalised(rules["spec"]["groups"]) == normalised(alerts["groups"]), (
        "monitoring/prometheusrule.yaml differs from prometheus/alerts.yml: copy the groups")


def normalised(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**g, "rules": [{**r, "expr": " ".join(str(r["expr"]).split())}
                            for r in g["rules"]]} for g in groups]
