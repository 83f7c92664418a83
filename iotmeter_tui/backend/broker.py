"""The embedded MQTT broker: a private `mosquitto` child process on a free loopback port, used
when IOTMETER_MQTT_URL is unset. The test fixtures run the very same config."""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.errors import IotmeterError
from iotmeter_tui.backend.lifeline import parent_death_signal, spawn_watched

LOOPBACK = "127.0.0.1"
# Debian installs the broker in /usr/sbin, which is not on a normal user's PATH.
MOSQUITTO_FALLBACK = Path("/usr/sbin/mosquitto")
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
# Written into the data directory while the broker runs, so other iotmeter processes on the
# same IOTMETER_HOME (the `command` and `ota` subcommands) can find it.
PORT_FILE = "port"
# The embedded broker admits only the user named in this file (0600, "user:password"), with a
# password made at each start: any local user of a shared host could otherwise read the fleet,
# inject devices or take the collector's client id. The broker itself gets
# the hashed form (PASSWORD_FILE); iotmeter processes on the same IOTMETER_HOME read this one.
CREDENTIALS_FILE = "credentials"
PASSWORD_FILE = "passwd"
EMBEDDED_USER = "iotmeter"
# mosquitto 2's "$7$" hash: PBKDF2-HMAC-SHA512, its default 101 iterations, a 12-byte salt.
_PBKDF2_ITERATIONS = 101


class BrokerError(IotmeterError, RuntimeError):
    """The embedded broker is missing or would not start; the message says what to do."""


def find_mosquitto() -> str:
    """The mosquitto binary's path, or a BrokerError telling the operator how to install it."""
    found = shutil.which("mosquitto")
    if found is None and os.access(MOSQUITTO_FALLBACK, os.X_OK):
        found = str(MOSQUITTO_FALLBACK)
    if found is None:
        raise BrokerError("mosquitto not found: install it with `apt-get install mosquitto`")
    return found


def free_port(host: str = LOOPBACK) -> int:
    """A port the kernel says is free right now (bind to port 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a child's log, to put in an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def wait_until_ready(
    process: subprocess.Popen[bytes],
    probe: Callable[[], bool],
    *,
    name: str,
    log_path: Path,
    timeout_s: float = READY_TIMEOUT_S,
    error: type[Exception] = BrokerError,
) -> None:
    """Poll `probe` until it answers True; fail fast if the child dies, kill it on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = process.poll()
        if code is not None:
            raise error(
                f"{name} exited with code {code} while starting; log:\n{log_tail(log_path)}"
            )
        if probe():
            return
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise error(f"{name} not ready after {timeout_s:.0f} s; log:\n{log_tail(log_path)}")
        time.sleep(0.02)


def tcp_accepts(host: str, port: int) -> bool:
    """True once something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def mosquitto_password_line(username: str, password: str) -> str:
    """One line of a mosquitto password file, hashed as `mosquitto_passwd` does (never a
    password on a command line, where other local users could read it)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS, 64)
    return (f"{username}:$7${_PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}\n")


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def mosquitto_config(port: int, data_dir: str | Path, *,
                     max_packet_size: int = protocol.BROKER_MAX_PACKET_BYTES,
                     password_file: Path | None = None) -> str:
    """The mosquitto.conf for a private loopback broker keeping its state in `data_dir`.
    `max_packet_size` 0 sets no limit (only tests want that: a broker configured by someone
    else, which the collector must survive too). With a `password_file` only its users get
    in; without one any local client does (the test broker, for tools like mosquitto_sub)."""
    location = str(Path(data_dir).resolve())
    if "\n" in location:
        raise BrokerError(f"broker data directory {location!r} contains a newline")
    # mosquitto started as root drops to the `mosquitto` user, which cannot write our data
    # directory; naming the current user keeps it as is (the option is ignored for non-root).
    user = pwd.getpwuid(os.geteuid()).pw_name
    return "\n".join(
        [
            "# Written by iotmeter for its embedded broker; regenerated on every start.",
            f"listener {port} {LOOPBACK}",
            *(["allow_anonymous false", f"password_file {password_file}"]
              if password_file is not None else ["allow_anonymous true"]),
            # Persistent sessions (the collector's fixed client id) and their queued QoS 1 messages
            # survive a broker restart. mosquitto saves them on a clean shutdown, not on SIGKILL.
            "persistence true",
            f"persistence_location {location}/",
            "persistence_file mosquitto.db",
            # A fleet publishing while the collector is away must queue, not drop: the defaults
            # (20 in flight, 1000 queued per client) would lose messages within seconds. A wide
            # window keeps messages coming while the collector's group commit is written.
            "max_inflight_messages 10000",
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            # A device's oversized packet is refused (and that device disconnected) at the
            # broker: it never reaches the collector nor sits in its queue.
            *([f"max_packet_size {max_packet_size}"] if max_packet_size else []),
            "log_dest stderr",
            f"user {user}",
            "",
        ]
    )


def running_broker_url(data_dir: str | Path) -> str | None:
    """The URL of the embedded broker running on `data_dir` (with its credentials when it has
    them), or None if none answers there."""
    try:
        port = int((Path(data_dir) / PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    userinfo = ""
    try:
        user, _, password = (Path(data_dir) / CREDENTIALS_FILE).read_text().strip().partition(":")
        userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    except OSError:
        pass  # a broker without credentials (or not ours to read: it will refuse us)
    # The file outlives a crashed broker; only a listening port counts.
    return f"mqtt://{userinfo}{LOOPBACK}:{port}" if tcp_accepts(LOOPBACK, port) else None


class EmbeddedBroker:
    """A private mosquitto on 127.0.0.1 that keeps its port and data directory across restarts."""

    host = LOOPBACK

    def __init__(
        self, data_dir: str | Path, port: int | None = None, *, binary: str | None = None,
        max_packet_size: int = protocol.BROKER_MAX_PACKET_BYTES, credentials: bool = True,
    ) -> None:
        self.binary = binary or find_mosquitto()
        self.max_packet_size = max_packet_size
        # Made once per instance, so a restart() keeps what connected clients hold.
        self.username: str | None = EMBEDDED_USER if credentials else None
        self.password: str | None = secrets.token_urlsafe(24) if credentials else None
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The broker's URL, with the credentials every embedded client needs. Redacted
        wherever it is shown (backend/redaction.py)."""
        if self.username is None or self.password is None:
            return f"mqtt://{self.host}:{self.port}"
        return (f"mqtt://{quote(self.username, safe='')}:{quote(self.password, safe='')}@"
                f"{self.host}:{self.port}")

    @property
    def config_path(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the broker and return once it accepts connections; a no-op if it runs."""
        if self.running:
            return
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        password_file = None
        if self.username is not None and self.password is not None:
            password_file = (self.data_dir / PASSWORD_FILE).resolve()
            _write_private(password_file, mosquitto_password_line(self.username,
                                                                  self.password))
            _write_private(self.data_dir / CREDENTIALS_FILE,
                           f"{self.username}:{self.password}\n")
        _write_private(self.config_path, mosquitto_config(
            self.port, self.data_dir, max_packet_size=self.max_packet_size,
            password_file=password_file))
        self._process = spawn_watched(self._spawn)
        wait_until_ready(
            self._process,
            lambda: tcp_accepts(self.host, self.port),
            name="mosquitto",
            log_path=self.log_path,
        )
        self._port_file.write_text(f"{self.port}\n")

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Appending keeps the log of earlier runs, which is what one wants after a restart.
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=parent_death_signal(),
            )

    @property
    def _port_file(self) -> Path:
        return self.data_dir / PORT_FILE

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Clean shutdown (SIGTERM): mosquitto writes its persistence file on the way out."""
        self._end(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """Crash the broker (SIGKILL): whatever was not yet saved to disk is lost."""
        self._end(signal.SIGKILL, STOP_TIMEOUT_S)

    def _end(self, sig: signal.Signals, timeout_s: float) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        self._port_file.unlink(missing_ok=True)
        (self.data_dir / CREDENTIALS_FILE).unlink(missing_ok=True)
        process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
