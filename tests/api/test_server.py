"""`iotmeter api` as the process operators run: gunicorn started by the command, bound to
loopback by default, draining in-flight requests on SIGTERM and exiting 0, and with several
workers still one set of metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from iotmeter_tui.backend.apikeys import ApiKeyService
from iotmeter_tui.backend.broker import free_port
from iotmeter_tui.backend.config import load_settings
from iotmeter_tui.backend.stores import open_stores

START_S = 30.0


class ApiProcess:
    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.env = {**os.environ, "IOTMETER_HOME": str(home), **(env or {})}
        settings = load_settings(env={"IOTMETER_HOME": str(home), **(env or {})})
        stores = open_stores(settings)
        try:
            stores.metadata.migrate()
            self.key = ApiKeyService(stores.metadata).create("ops", "admin")[1]
            stores.metadata.create_device("dc-1", "power_meter_dc")
        finally:
            stores.close()
        # Logs to files: a pipe nobody reads could fill and stall the server.
        self.log = home / "api.log"
        with self.log.open("wb") as out, (home / "api.err").open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "iotmeter_tui", "api", "--port", str(self.port),
                 *args], env=self.env, stdout=out, stderr=err)
        self.errors = home / "api.err"
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + START_S
        while True:
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass  # not listening yet, or the worker still loading the app
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.wait(10)
                raise AssertionError("iotmeter api did not start: "
                                     f"{self.errors.read_text()[-2000:]}")
            time.sleep(0.1)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[type[ApiProcess]]:
    started: list[ApiProcess] = []

    class Started(ApiProcess):
        def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
            home = tmp_path / f"home-{len(started)}"
            home.mkdir()
            super().__init__(home, *args, env=env)
            started.append(self)

    yield Started
    for api in started:
        if api.process.poll() is None:
            api.process.kill()
            api.process.wait(10)


def _listening(port: int) -> set[str]:
    """Local addresses listening on `port`, from /proc/net/tcp (hex, little-endian IPv4)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if int(port_hex, 16) == port and state == "0A":  # LISTEN
            found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_serves_on_loopback_on_the_embedded_defaults(start_api: type[ApiProcess]) -> None:
    api = start_api()
    assert _listening(api.port) == {"127.0.0.1"}
    response = requests.get(api.url + "/api/v1/devices", headers=api.auth(), timeout=10)
    assert response.status_code == 200
    assert [d["device_id"] for d in response.json()["items"]] == ["dc-1"]
    assert requests.get(api.url + "/readyz", timeout=10).status_code == 200
    # A command logs as JSON lines carrying the request's id.
    sent = requests.post(api.url + "/api/v1/devices/dc-1/commands", json={"name": "ping"},
                         headers={**api.auth(), "X-Request-ID": "trace-77"}, timeout=10)
    assert sent.status_code == 202
    assert api.stop() == 0
    lines = [json.loads(x) for x in api.log.read_text().splitlines() if x.startswith("{")]
    queued = [x for x in lines if x.get("event") == "command_queued"]
    assert queued and queued[0]["request_id"] == "trace-77"


def test_sigterm_drains_in_flight_requests(start_api: type[ApiProcess]) -> None:
    api = start_api()
    result: dict[str, requests.Response] = {}

    def slow_call() -> None:
        # dc-1 never answers: the request waits its full 3 s for an outcome.
        result["r"] = requests.post(api.url + "/api/v1/devices/dc-1/commands?wait=3",
                                    json={"name": "ping"}, headers=api.auth(), timeout=30)

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(1.0)
    started = time.monotonic()
    api.process.send_signal(signal.SIGTERM)
    caller.join(30)
    assert result["r"].status_code == 202
    assert result["r"].json()["state"] == "queued"
    assert api.process.wait(timeout=30) == 0
    assert time.monotonic() - started >= 1.0  # it waited for the request, then left
    with pytest.raises(requests.ConnectionError):
        requests.get(api.url + "/healthz", timeout=2)


def test_several_workers_share_one_metrics_view(start_api: type[ApiProcess],
                                                tmp_path: Path) -> None:
    samples = tmp_path / "metrics"
    samples.mkdir()
    api = start_api("--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(samples)})
    for _ in range(20):
        # A new connection each time, so both workers answer some.
        assert requests.get(api.url + "/api/v1/devices", headers=api.auth(),
                            timeout=10).status_code == 200
    totals = set()
    for _ in range(4):
        metrics = requests.get(api.url + "/metrics", timeout=10).text
        line = next(x for x in metrics.splitlines() if x.startswith(
            'iotmeter_api_requests_total{method="GET",route="/api/v1/devices",status="200"}'))
        totals.add(float(line.split()[-1]))
    assert totals == {20.0}  # every scrape, whichever worker answers, sees all 20
    # Both workers write their own samples, which /metrics sums.
    assert len({p.stem.rsplit("_", 1)[-1] for p in samples.glob("counter_*.db")}) == 2
    assert api.stop() == 0


def test_a_bad_setting_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "iotmeter_tui", "api"], capture_output=True, text=True,
        env={**os.environ, "IOTMETER_HOME": str(tmp_path), "IOTMETER_API_PORT": "http"},
        timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "iotmeter: IOTMETER_API_PORT: 'http' is not a int"]
