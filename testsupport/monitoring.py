"""A private Prometheus (Debian `prometheus`) and Alertmanager (Debian
`prometheus-alertmanager`) for the monitoring tests: free loopback ports, temporary storage,
configs the test writes, logs kept for the failure message."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from iotmeter_tui.backend.broker import free_port
from testsupport.services import ServiceError

LOOPBACK = "127.0.0.1"


def _binary(name: str, package: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/bin", name), Path("/usr/sbin", name)) if p.exists()), None)
    if found is None:
        raise ServiceError(f"{name} not found: apt-get install {package} "
                           "(scripts/system-deps.sh test)")
    return found


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


class _Daemon:
    name = ""
    package = ""

    def __init__(self, config: str) -> None:
        self.binary = _binary(self.name, self.package)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"iotmeter-{self.name}-"))
        self.config_path = self.dir / "config.yml"
        self.config_path.write_text(config)
        self.log_path = self.dir / "log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def args(self) -> list[str]:
        raise NotImplementedError

    def ready_path(self) -> str:
        return "/-/ready"

    def start(self, timeout_s: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen([self.binary, *self.args()], stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log, cwd=self.dir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + self.ready_path(), timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.close()
        raise ServiceError(f"{self.name} did not start: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> _Daemon:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class PrometheusServer(_Daemon):
    name = "prometheus"
    package = "prometheus"

    def args(self) -> list[str]:
        return [f"--config.file={self.config_path}", f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.port}", "--log.level=warn"]

    def query(self, expr: str) -> dict[str, Any]:
        """The raw /api/v1/query answer (status "error" with errorType "bad_data" when the
        expression does not parse)."""
        from urllib.parse import urlencode

        try:
            return dict(get_json(f"{self.url}/api/v1/query?{urlencode({'query': expr})}"))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read()))


class AlertmanagerServer(_Daemon):
    name = "prometheus-alertmanager"
    package = "prometheus-alertmanager"

    def args(self) -> list[str]:
        return [f"--config.file={self.config_path}", f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.port}", "--cluster.listen-address=",
                "--log.level=warn"]

    def alerts(self) -> list[dict[str, Any]]:
        return list(get_json(f"{self.url}/api/v2/alerts"))

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        request = urllib.request.Request(f"{self.url}/api/v2/alerts", method="POST",
                                         data=json.dumps(alerts).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
