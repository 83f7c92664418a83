"""deploy/entrypoint.py, the image's entry point: roles, secrets from files, a client-id slot per
compose replica, and the health check. The slots are exercised with real collectors on a real
broker sharing one IOTMETER_HOME, as `docker compose up --scale collector=2` runs them."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_helpers import DEPLOY, known_variable, load_entrypoint

from iotmeter_tui.backend.broker import free_port
from iotmeter_tui.backend.config import load_settings
from testsupport.services import MosquittoServer

entrypoint = load_entrypoint()
SCRIPT = DEPLOY / "entrypoint.py"
VENV_BIN = str(Path(sys.executable).parent)


def run_entrypoint(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=30)


# --- roles ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "command"), [
    ([], ["iotmeter", "--collector-only"]),
    (["collector"], ["iotmeter", "--collector-only"]),
    (["api"], ["iotmeter", "api", "--host", "0.0.0.0", "--port", "8080"]),
    (["api", "--workers", "4"], ["iotmeter", "api", "--host", "0.0.0.0", "--port", "8080",
                                 "--workers", "4"]),
    (["alert-relay"], ["iotmeter", "alert-relay", "--host", "0.0.0.0", "--port", "9095"]),
    (["simulator", "--devices", "5"], ["iotmeter", "simulate", "--devices", "5"]),
    (["dashboard", "--simulate", "no"], ["iotmeter", "--simulate", "no"]),
    (["web"], ["iotmeter", "serve", "--host", "0.0.0.0", "--port", "8000"]),
    (["migrate"], ["iotmeter", "migrate"]),  # anything else is an iotmeter command
    (["--simulate", "yes"], ["iotmeter", "--simulate", "yes"]),
])
def test_roles_become_iotmeter_commands(argv: list[str], command: list[str]) -> None:
    planned, env = entrypoint.plan(argv, {"IOTMETER_CLIENT_ID": "fixed"})
    assert planned == command
    assert env["IOTMETER_CLIENT_ID"] == "fixed"


def test_secrets_are_read_from_files(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("postgresql://iot:s3cret@db:5432/iotmeter\n")
    (tmp_path / "token").write_text("tok")  # no trailing newline
    env = entrypoint.secrets_from_files({
        "IOTMETER_DB_URL_FILE": str(tmp_path / "url"),
        "IOTMETER_INFLUX_TOKEN_FILE": str(tmp_path / "token"),
        "OTHER_FILE": "/not/ours",  # another program's convention: left alone
    })
    assert env == {"IOTMETER_DB_URL": "postgresql://iot:s3cret@db:5432/iotmeter",
                   "IOTMETER_INFLUX_TOKEN": "tok", "OTHER_FILE": "/not/ours"}
    load_settings(env=env)  # what the entry point hands on is valid configuration


def test_a_file_setting_of_iotmeter_is_left_to_it(tmp_path: Path) -> None:
    """A _FILE variable that is itself a setting (the relay's IOTMETER_GITHUB_TOKEN_FILE, say)
    is read by iotmeter: the entry point passes it on untouched."""
    (tmp_path / "token").write_text("tok\n")
    env = {"IOTMETER_GITHUB_TOKEN_FILE": str(tmp_path / "token")}
    assert entrypoint.secrets_from_files(env, frozenset(env)) == env
    assert entrypoint.secrets_from_files(env) == {"IOTMETER_GITHUB_TOKEN": "tok"}
    # What the image consults: the settings of this iotmeter.
    assert "IOTMETER_MQTT_URL" in entrypoint.read_by_iotmeter()


@pytest.mark.parametrize(("content", "problem"), [
    (None, "cannot read"),
    ("", "exactly one line"),
    ("\n", "exactly one line"),
    ("a\nb\n", "exactly one line"),
])
def test_bad_secret_files_stop_with_one_line(tmp_path: Path, content: str | None,
                                             problem: str) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    result = run_entrypoint("collector", env={"PATH": os.environ["PATH"],
                                              "IOTMETER_CLIENT_ID": "x",
                                              "IOTMETER_DB_URL_FILE": str(path)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "IOTMETER_DB_URL_FILE" in lines[0] and problem in lines[0]
    assert "Traceback" not in result.stderr


def test_a_secret_set_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    result = run_entrypoint("api", env={"PATH": os.environ["PATH"],
                                        "IOTMETER_INFLUX_TOKEN": "from-env",
                                        "IOTMETER_INFLUX_TOKEN_FILE": str(tmp_path / "token")})
    assert result.returncode == 2
    assert "IOTMETER_INFLUX_TOKEN is set as well" in result.stderr
    assert "from-file" not in result.stderr and "from-env" not in result.stderr


def test_every_role_and_variable_it_sets_is_known() -> None:
    assert set(entrypoint.ROLES) == {"collector", "api", "alert-relay", "simulator",
                                     "dashboard", "web"}
    assert known_variable("IOTMETER_MQTT_URL_FILE")
    assert known_variable("IOTMETER_GITHUB_TOKEN_FILE")
    assert not known_variable("IOTMETER_NO_SUCH_THING_FILE")


# --- slots: one client id per compose replica -------------------------------------------------


def test_replicas_claim_distinct_slots_until_they_exit(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "IOTMETER_HOME": str(tmp_path), "ENTRYPOINT_DRY_RUN": "1"}
    # A dry run exits at once, releasing its slot: the same slot every time.
    for _ in range(2):
        result = run_entrypoint("collector", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["iotmeter", "--collector-only", "iotmeter-collector"]
    # A process holding slot 1 (here: one that inherited the lock and sleeps) pushes the next
    # replica to slot 2.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import importlib.util, sys, time\n"
         f"spec = importlib.util.spec_from_file_location('e', {str(SCRIPT)!r})\n"
         "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
         f"m.claim_slot(__import__('pathlib').Path({str(tmp_path)!r}))\n"
         "print('held', flush=True); time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = run_entrypoint("collector", env=env)
        assert result.stdout.split()[-1] == "iotmeter-collector-2"
    finally:
        holder.kill()
        holder.wait()
    result = run_entrypoint("collector", env=env)
    assert result.stdout.split()[-1] == "iotmeter-collector", "the slot was not released"


@pytest.mark.parametrize(("slot", "intake", "dispatch"), [
    (1, "mqtt://collector:pw@mosquitto:1883", "mqtts://dispatcher:p%40ss@mosquitto:8883"),
    (3, "mqtt://collector-3:pw@mosquitto:1883", "mqtts://dispatcher-3:p%40ss@mosquitto:8883"),
])
def test_a_slot_is_a_broker_identity(slot: int, intake: str, dispatch: str) -> None:
    """The shipped broker makes the username the client id: replica N > 1 connects as
    <user>-N, and its client id (and spool) follow the intake user."""
    env = {"IOTMETER_MQTT_URL": "mqtt://collector:pw@mosquitto:1883",
           "IOTMETER_MQTT_DISPATCH_URL": "mqtts://dispatcher:p%40ss@mosquitto:8883"}
    entrypoint.replica_identity(env, slot)
    assert env == {"IOTMETER_MQTT_URL": intake, "IOTMETER_MQTT_DISPATCH_URL": dispatch,
                   "IOTMETER_CLIENT_ID": "collector" if slot == 1 else f"collector-{slot}"}
    load_settings(env={k: v for k, v in env.items() if k != "IOTMETER_MQTT_DISPATCH_URL"})
    no_user = {"IOTMETER_MQTT_URL": "mqtt://mosquitto:1883"}
    entrypoint.replica_identity(no_user, slot)
    assert no_user["IOTMETER_MQTT_URL"] == "mqtt://mosquitto:1883"


def test_an_explicit_client_id_claims_no_slot(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "IOTMETER_HOME": str(tmp_path), "ENTRYPOINT_DRY_RUN": "1",
           "IOTMETER_CLIENT_ID": "iotmeter-collector-0"}
    result = run_entrypoint("collector", env=env)
    assert result.stdout.split()[-1] == "iotmeter-collector-0"
    assert not (tmp_path / "slots").exists()


def test_an_unwritable_home_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "file"
    home.write_text("not a directory")
    result = run_entrypoint("collector", env={"PATH": os.environ["PATH"],
                                              "IOTMETER_HOME": str(home)})
    assert result.returncode == 2
    assert result.stderr.startswith("iotmeter-entrypoint: IOTMETER_HOME: cannot create")
    assert len(result.stderr.strip().splitlines()) == 1


def collector_env(home: Path, broker: MosquittoServer, url_file: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")},
        "PATH": VENV_BIN + os.pathsep + os.environ["PATH"],
        "IOTMETER_HOME": str(home),
        "IOTMETER_MQTT_URL_FILE": str(url_file),
        "IOTMETER_SHARE_GROUP": "iotmeter",
        "IOTMETER_METRICS_PORT": str(free_port()),
        "IOTMETER_FIRMWARE_LISTEN": "127.0.0.1:0",
    }


def connected(env: dict[str, str]) -> bool:
    url = f"http://127.0.0.1:{env['IOTMETER_METRICS_PORT']}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return "iotmeter_broker_connected 1" in response.read().decode()
    except OSError:
        return False


def client_id_of(process: subprocess.Popen[bytes]) -> str:
    environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
    found = [e for e in environ if e.startswith(b"IOTMETER_CLIENT_ID=")]
    return found[0].split(b"=", 1)[1].decode()


@pytest.fixture
def collectors() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_scaled_collectors_share_a_volume_with_their_own_sessions(
        private_mosquitto: MosquittoServer, tmp_path: Path,
        collectors: list[subprocess.Popen[bytes]]) -> None:
    """Two replicas of the compose `collector` service: same configuration, one volume, the
    broker URL (with its password) from a secret file. Each runs as its own client id with its
    own spool; a replacement for a stopped replica takes over the freed slot."""
    home = tmp_path / "shared-volume"
    url_file = tmp_path / "collector_mqtt_url"
    host, port = private_mosquitto.host, private_mosquitto.port
    url_file.write_text(f"mqtt://collector:s3cret@{host}:{port}\n")

    envs = []
    for _ in range(2):
        env = collector_env(home, private_mosquitto, url_file)
        collectors.append(subprocess.Popen([sys.executable, str(SCRIPT), "collector"], env=env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        envs.append(env)
        deadline = time.monotonic() + 30
        while not connected(env):  # one at a time: the second must find slot 1 taken
            assert collectors[-1].poll() is None, "a collector exited"
            assert time.monotonic() < deadline, "a collector did not connect"
            time.sleep(0.1)
    ids = [client_id_of(p) for p in collectors]
    assert ids == ["collector", "collector-2"]
    # The secret reached the process that needs it, and nothing else set it.
    environ = Path(f"/proc/{collectors[0].pid}/environ").read_bytes()
    assert b"IOTMETER_MQTT_URL=mqtt://collector:s3cret@" in environ
    assert b"IOTMETER_MQTT_URL_FILE=" not in environ
    second = Path(f"/proc/{collectors[1].pid}/environ").read_bytes()
    assert b"IOTMETER_MQTT_URL=mqtt://collector-2:s3cret@" in second

    collectors[0].send_signal(signal.SIGTERM)
    assert collectors[0].wait(15) == 0
    replacement_env = collector_env(home, private_mosquitto, url_file)
    collectors.append(subprocess.Popen([sys.executable, str(SCRIPT), "collector"],
                                       env=replacement_env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 30
    while not connected(replacement_env):
        assert collectors[-1].poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    assert client_id_of(collectors[-1]) == "collector"
    for process in collectors[1:]:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    # One spool per client id, side by side on the shared volume.
    assert {p.name for p in (home / "spool").iterdir()} == set(ids)


# --- health check ---------------------------------------------------------------------------


@pytest.mark.parametrize(("cmdline", "env", "url"), [
    (["/opt/iotmeter/bin/python", "/opt/iotmeter/bin/iotmeter", "--collector-only"], {},
     "http://127.0.0.1:9108/healthz"),
    (["python", "/opt/iotmeter/bin/iotmeter", "--collector-only"],
     {"IOTMETER_METRICS_PORT": "9200"}, "http://127.0.0.1:9200/healthz"),
    (["iotmeter", "--collector-only", "--metrics-port", "9300"], {},
     "http://127.0.0.1:9300/healthz"),
    (["python", "/x/iotmeter", "api", "--host", "0.0.0.0", "--port", "8080"], {},
     "http://127.0.0.1:8080/healthz"),
    (["python", "/x/iotmeter", "alert-relay", "--host", "0.0.0.0", "--port=9096"], {},
     "http://127.0.0.1:9096/healthz"),
    (["python", "/x/iotmeter", "serve", "--port", "8000"], {}, "http://127.0.0.1:8000/healthz"),
    (["python", "/x/iotmeter", "simulate", "--devices", "5"], {}, None),
    (["python", "/x/iotmeter", "--simulate", "no"], {}, None),
])
def test_health_url_follows_what_runs(cmdline: list[str], env: dict[str, str],
                                      url: str | None) -> None:
    assert entrypoint.health_url(cmdline, env) == url


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # the name http.server calls
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "expected"), [(200, 0), (503, 1)])
def test_healthcheck_against_a_real_server(tmp_path: Path, status: int, expected: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cmdline = tmp_path / "cmdline"
        cmdline.write_bytes(b"python\0/opt/iotmeter/bin/iotmeter\0--collector-only\0")
        monkeypatch.setenv("IOTMETER_METRICS_PORT", str(server.server_port))
        assert entrypoint.healthcheck(cmdline) == expected
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_fails_when_nothing_listens(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"python\0/x/iotmeter\0api\0--port\0" + str(free_port()).encode())
    monkeypatch.delenv("IOTMETER_METRICS_PORT", raising=False)
    assert entrypoint.healthcheck(cmdline) == 1
