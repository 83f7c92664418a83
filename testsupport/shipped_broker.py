"""The shipped broker configuration (deploy/mosquitto/) on a real mosquitto, for tests.

The container's paths and ports are rewritten to a temporary directory and free ports, its
certificates come from a test CA, and the shipped init-passwords.sh writes the password file
from test secrets, so what runs is exactly the shipped mosquitto.conf and acl.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from iotmeter_tui.backend.broker import LOOPBACK, find_mosquitto, free_port, tcp_accepts
from testsupport.certs import TestCA

MOSQUITTO_DIR = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"
START_TIMEOUT_S = 10.0
DYNSEC_PLUGIN_PATHS = ("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
                       "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
                       "/usr/lib/mosquitto_dynamic_security.so")

# The secrets init-passwords.sh is given.
COLLECTOR_PASSWORD = "collector-secret"
DISPATCHER_PASSWORD = "dispatcher-secret"
DEVICE_CREDENTIALS = {"dc-0101": "device-secret", "dc-0102": "other-device-secret"}


def dynsec_plugin() -> str:
    """The dynamic security plugin of the installed mosquitto (Debian: multiarch dir)."""
    for candidate in DYNSEC_PLUGIN_PATHS:
        if Path(candidate).is_file():
            return candidate
    raise AssertionError("mosquitto's dynamic security plugin is missing: install Debian's "
                         "`mosquitto` (scripts/system-deps.sh)")


class ShippedBroker:
    """mosquitto on the shipped mosquitto.conf + acl. Ports: `port` (plain, 1883 in the
    container), `tls_port` (8883), `ws_port` (9001, MQTT over WebSockets over TLS). `extra`
    is appended to the configuration (another listener, a plugin); `env` is added to
    init-passwords.sh's environment. With `dynsec_admin_password`, the broker runs
    mosquitto-dynsec.conf instead, its plugin file made by init-dynsec.sh."""

    def __init__(self, tmp: Path, *, ca: TestCA | None = None, extra: str = "",
                 env: Mapping[str, str] | None = None,
                 dynsec_admin_password: str | None = None) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.ca = ca or TestCA(tmp / "ca")
        self.port, self.tls_port, self.ws_port = free_port(), free_port(), free_port()
        self.auth = tmp / "auth"
        data = tmp / "data"
        data.mkdir(exist_ok=True)
        devices = tmp / "credentials"
        devices.write_text("# a comment\n" + "".join(
            f"{device}:{password}\n" for device, password in DEVICE_CREDENTIALS.items()))
        subprocess.run(
            ["sh", str(MOSQUITTO_DIR / "init-passwords.sh")], check=True, capture_output=True,
            env={"PATH": os.environ["PATH"], "AUTH_DIR": str(self.auth),
                 "DEVICE_CREDENTIALS": str(devices), "MOSQUITTO_UID": str(os.getuid()),
                 "MQTT_COLLECTOR_PASSWORD": COLLECTOR_PASSWORD,
                 "MQTT_DISPATCHER_PASSWORD": DISPATCHER_PASSWORD, **(env or {})})
        server = self.ca.server()
        if dynsec_admin_password is None:
            text = (MOSQUITTO_DIR / "mosquitto.conf").read_text()
        else:
            text = (MOSQUITTO_DIR / "mosquitto-dynsec.conf").read_text()
            subprocess.run(
                ["sh", str(MOSQUITTO_DIR / "init-dynsec.sh")], check=True, capture_output=True,
                env={"PATH": os.environ["PATH"], "MQTT_ADMIN_PASSWORD": dynsec_admin_password,
                     "DYNSEC_FILE": str(data / "dynamic-security.json"),
                     "MOSQUITTO_UID": str(os.getuid())})
            text = text.replace("/usr/lib/mosquitto_dynamic_security.so", dynsec_plugin())
        text = text.replace("\nlistener 1883\n", f"\nlistener {self.port} {LOOPBACK}\n")
        text = text.replace("\nlistener 8883\n", f"\nlistener {self.tls_port} {LOOPBACK}\n")
        # mosquitto 2.0's websockets listener (libwebsockets) cannot bind one address: it
        # listens on every interface, IPv4 only here, for the test's lifetime.
        text = text.replace("\nlistener 9001\n", f"\nlistener {self.ws_port}\nsocket_domain ipv4\n")
        text = text.replace("/mosquitto/certs/server.crt", str(server.cert))
        text = text.replace("/mosquitto/certs/server.key", str(server.key))
        text = text.replace("/mosquitto/certs/ca.crt", str(self.ca.cert))
        text = text.replace("/mosquitto/auth/", f"{self.auth}/")
        text = text.replace("/mosquitto/config/acl", str(MOSQUITTO_DIR / "acl"))
        text = text.replace("/mosquitto/data/", f"{data}/")
        live = [line for line in text.splitlines() if not line.startswith("#")]
        left = [line for line in live if re.search(r"(^|\s)/mosquitto/", line)]
        if left:
            raise AssertionError(f"container paths left in the test copy: {left}")
        # As broker.py does: keep the current user (mosquitto ignores it unless root).
        text += f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n{extra}\n"
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(text)
        self.log = tmp / "mosquitto.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([find_mosquitto(), "-c", str(self.conf)],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (tcp_accepts(LOOPBACK, self.port) and tcp_accepts(LOOPBACK, self.tls_port)):
            if self.process.poll() is not None:
                raise AssertionError(f"mosquitto exited: {self.log.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"mosquitto did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def url(self, user: str, password: str, *, tls: bool = False) -> str:
        if tls:
            return f"mqtts://{user}:{password}@localhost:{self.tls_port}"
        return f"mqtt://{user}:{password}@{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
