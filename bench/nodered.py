"""The Node-RED peer of bench/ingest.py: what a common MQTT -> InfluxDB flow carries on the
same load, so the collector's rate reads against a tool many sites would otherwise use.

The flow: `mqtt in` (QoS 1, JSON) on iot/+/telemetry -> a function from the envelope to a
point (tags device_id, fields = data + boot + seq, time = ts) -> `join` of 1,000 messages or
0.5 s -> `influxdb batch` into a database of its own. It acknowledges each message as it
arrives, keeps no archive and does no deduplication: less work than the collector does.

npm `node-red` and `node-red-contrib-influxdb` are installed by the bench itself (the npm
registry, on first use) into a private cache directory, never into the repository:
$IOTMETER_BENCH_CACHE/node-red, default ~/.cache/iotmeter-bench/node-red.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from iotmeter_tui.backend.broker import free_port

PACKAGES = ("node-red@4", "node-red-contrib-influxdb@0.7")
BATCH_MESSAGES = 1000
BATCH_SECONDS = 0.5


def cache_dir() -> Path:
    base = os.environ.get("IOTMETER_BENCH_CACHE") or Path.home() / ".cache" / "iotmeter-bench"
    return Path(base) / "node-red"


def install(directory: Path | None = None) -> Path:
    """node-red's red.js, installing the packages first when they are not there yet."""
    directory = directory or cache_dir()
    red = directory / "node_modules" / "node-red" / "red.js"
    plugin = directory / "node_modules" / "node-red-contrib-influxdb" / "package.json"
    if red.exists() and plugin.exists():
        return red
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("the Node-RED peer needs node and npm (apt-get install nodejs npm)")
    directory.mkdir(parents=True, exist_ok=True)
    package = directory / "package.json"
    if not package.exists():
        package.write_text(json.dumps({"name": "iotmeter-bench-node-red", "private": True}))
    print(f"installing {' '.join(PACKAGES)} into {directory} …", flush=True)
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error", *PACKAGES],
                   cwd=directory, check=True, timeout=1200)
    return red


def flow(broker_host: str, broker_port: int, influx_host: str, influx_port: int,
         database: str) -> list[dict[str, object]]:
    """The flow, as Node-RED's flows.json holds it."""
    to_point = (
        "const m = msg.payload;\n"
        "if (!m || typeof m.data !== 'object') { return null; }\n"
        "const fields = Object.assign({}, m.data);\n"
        "fields.boot = m.boot; fields.seq = m.seq;\n"
        "msg.payload = {measurement: 'iot_telemetry', tags: {device_id: m.device_id},\n"
        "               fields: fields, timestamp: new Date(m.ts)};\n"
        "return msg;"
    )
    return [
        {"id": "tab", "type": "tab", "label": "iotmeter peer"},
        {"id": "broker", "type": "mqtt-broker", "name": "bench broker",
         "broker": broker_host, "port": str(broker_port), "clientid": "bench-node-red",
         "autoConnect": True, "usetls": False, "protocolVersion": "4", "keepalive": "60",
         "cleansession": True},
        {"id": "influx", "type": "influxdb", "hostname": influx_host, "port": str(influx_port),
         "protocol": "http", "database": database, "name": "bench influxdb",
         "usetls": False, "influxdbVersion": "1.x"},
        {"id": "in", "type": "mqtt in", "z": "tab", "name": "telemetry",
         "topic": "iot/+/telemetry", "qos": "1", "datatype": "json", "broker": "broker",
         "nl": False, "rap": True, "rh": 0, "inputs": 0, "x": 100, "y": 100,
         "wires": [["point"]]},
        {"id": "point", "type": "function", "z": "tab", "name": "envelope to point",
         "func": to_point, "outputs": 1, "x": 300, "y": 100, "wires": [["join"]]},
        {"id": "join", "type": "join", "z": "tab", "name": "batch", "mode": "custom",
         "build": "array", "property": "payload", "propertyType": "msg", "key": "topic",
         "joiner": "\\n", "joinerType": "str", "accumulate": False,
         "timeout": str(BATCH_SECONDS), "count": str(BATCH_MESSAGES), "reduceRight": False,
         "x": 500, "y": 100, "wires": [["write"]]},
        {"id": "write", "type": "influxdb batch", "z": "tab", "influxdb": "influx",
         "precision": "", "retentionPolicy": "", "name": "write", "x": 700, "y": 100,
         "wires": []},
    ]


class NodeRed:
    """A private Node-RED running the flow; its log in `directory`/node-red.log."""

    def __init__(self, directory: Path, broker_host: str, broker_port: int, influx_host: str,
                 influx_port: int, database: str) -> None:
        self.red = install()
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "flows.json").write_text(json.dumps(
            flow(broker_host, broker_port, influx_host, influx_port, database), indent=1))
        (directory / "settings.js").write_text(
            "module.exports = {\n"
            f"  uiPort: {self.port}, uiHost: '127.0.0.1',\n"
            f"  userDir: {json.dumps(str(directory))}, flowFile: 'flows.json',\n"
            "  credentialSecret: false, editorTheme: {tours: false},\n"
            "  logging: {console: {level: 'info', metrics: false, audit: false}},\n"
            "};\n")
        self.log_path = directory / "node-red.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        """Start it and wait until its flow runs and its MQTT node has subscribed."""
        node = shutil.which("node") or "node"
        self.process = subprocess.Popen(
            [node, str(self.red), "--userDir", str(self.directory),
             "--settings", str(self.directory / "settings.js")],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            cwd=self.directory)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node-red exited: see {self.log_path}")
            log = self.log_path.read_text(errors="replace")
            if "Connected to broker" in log and "Started flows" in log:
                time.sleep(1.0)  # the subscription follows the connection
                return
            time.sleep(0.5)
        raise RuntimeError(f"node-red did not start and connect in {timeout_s:g} s: "
                           f"see {self.log_path}")

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=5):
                return True
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
