"""Real services on loopback for tests and benches: private mosquitto, influxd, an S3 endpoint
(moto) and PostgreSQL. Plain context managers, no pytest, so benches reuse them."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.broker import (
    LOOPBACK,
    BrokerError,
    EmbeddedBroker,
    find_mosquitto,
    free_port,
    log_tail,
    tcp_accepts,
    wait_until_ready,
)

# mosquitto's 10 s comes from its own contract; the others import or initialise more and share
# the machine with parallel test runs, so they get more room before we call them broken.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
SHARED_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


# A proxy from the environment must never see loopback traffic.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServiceError(RuntimeError):
    """A test service is missing or would not start; the message says what to install or fix."""


# Safety net for scripts and benches that forget to close: no server or database outlives
# the interpreter. Strong references, so a server dropped without close() is still found.
_OPEN: set[Any] = set()


@atexit.register
def _close_leftovers() -> None:
    for resource in list(_OPEN):
        with contextlib.suppress(Exception):
            resource.close()


def _require_binary(name: str, fallback: str, install: str) -> str:
    found = shutil.which(name) or (fallback if os.access(fallback, os.X_OK) else None)
    if found is None:
        raise ServiceError(f"{name} not found: install it with `{install}`")
    return found


def _end_process(process: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _Service(ABC):
    """start()/stop() keep ports and data for a restart; close() kills and deletes everything.
    As a context manager it starts on entry and closes on exit, also when start() fails."""

    def __init__(self) -> None:
        _OPEN.add(self)

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def _release(self) -> None:
        """Kill the server, whatever its state, and delete its files."""

    def close(self) -> None:
        """Kill the server and delete its files; safe to call more than once."""
        try:
            self._release()
        finally:
            _OPEN.discard(self)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MosquittoServer(_Service):
    """The product's EmbeddedBroker in a temporary directory; restart() keeps port and sessions."""

    def __init__(self, *, max_packet_size: int = protocol.BROKER_MAX_PACKET_BYTES,
                 credentials: bool = False) -> None:
        """`max_packet_size` 0: no packet limit, as on a broker iotmeter did not configure.
        `credentials`: as the product's embedded broker (its URL carries them); off by default
        so tools like mosquitto_sub in benches connect as they are."""
        try:
            binary = find_mosquitto()
        except BrokerError as exc:
            raise ServiceError(str(exc)) from None
        self.data_dir = Path(tempfile.mkdtemp(prefix="iotmeter-mosquitto-"))
        self.broker = EmbeddedBroker(self.data_dir, binary=binary,
                                     max_packet_size=max_packet_size, credentials=credentials)
        super().__init__()

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def url(self) -> str:
        return self.broker.url

    @property
    def log_path(self) -> Path:
        return self.broker.log_path

    @property
    def running(self) -> bool:
        return self.broker.running

    def start(self) -> None:
        try:
            self.broker.start()
        except BrokerError as exc:
            raise ServiceError(str(exc)) from None

    def stop(self) -> None:
        """SIGTERM: mosquitto saves persistent sessions and their queued messages."""
        self.broker.stop()

    def kill(self) -> None:
        """SIGKILL: a crash; messages queued since the last save are lost."""
        self.broker.kill()

    def _release(self) -> None:
        self.broker.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def influxd_config(http_port: int, rpc_port: int, data_dir: Path) -> str:
    """influxd 1.x config for a private, quiet instance keeping everything under `data_dir`."""

    # TOML basic strings take the same escapes as JSON strings.
    def q(value: str | Path) -> str:
        return json.dumps(str(value))

    return f"""\
# Written by iotmeter's test fixtures: a private influxd on loopback.
reporting-disabled = true
# The RPC port serves backup/restore; the default 8088 would clash between instances.
bind-address = {q(f"{LOOPBACK}:{rpc_port}")}

[meta]
  dir = {q(data_dir / "meta")}
  logging-enabled = false

[data]
  dir = {q(data_dir / "data")}
  wal-dir = {q(data_dir / "wal")}
  query-log-enabled = false

[monitor]
  # Self-monitoring would write an _internal database every 10 s that no test asked for.
  store-enabled = false

[http]
  bind-address = {q(f"{LOOPBACK}:{http_port}")}
  log-enabled = false

[logging]
  suppress-logo = true
"""


class InfluxServer(_Service):
    """A private influxd 1.x; restart() keeps ports and data. Logs go to `log_path`."""

    host = LOOPBACK
    database = "iot-metrics"

    def __init__(self) -> None:
        self.binary = _require_binary("influxd", "/usr/bin/influxd", "apt-get install influxdb")
        self.port = free_port()
        self.rpc_port = free_port()
        while self.rpc_port == self.port:
            self.rpc_port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="iotmeter-influxd-"))
        self._process: subprocess.Popen[bytes] | None = None
        super().__init__()

    @property
    def url(self) -> str:
        """The product's IOTMETER_TSDB_URL for this server."""
        return f"influxdb://{self.host}:{self.port}/{self.database}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "influxdb.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "influxd.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.config_path.write_text(influxd_config(self.port, self.rpc_port, self.data_dir))
        # INFLUXDB_* variables override the config file; one left in the environment could
        # move our ports or directories onto someone else's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, "run", "-config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        wait_until_ready(
            self._process,
            self._ping,
            name="influxd",
            log_path=self.log_path,
            timeout_s=START_TIMEOUT_S,
            error=ServiceError,
        )

    def _ping(self) -> bool:
        try:
            with _HTTP.open(f"{self.http_url}/ping", timeout=0.5) as response:
                return bool(response.status == 204)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        _end_process(self._process, signal.SIGTERM)
        self._process = None

    def kill(self) -> None:
        _end_process(self._process, signal.SIGKILL)
        self._process = None

    def _release(self) -> None:
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


# Runs in the child: moto's server on a thread, started and stopped by lines on stdin. The
# listener closes on "stop" while the process, and so every bucket, lives on; stdin's EOF
# (our end closed, or this process gone) ends the child.
_MOTO_CHILD = """\
import sys
from moto.server import ThreadedMotoServer

host, port = sys.argv[1], int(sys.argv[2])
server = None
for line in sys.stdin:
    command = line.strip()
    if command == "start" and server is None:
        server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        server.start()
    elif command == "stop" and server is not None:
        server.stop()
        server = None
    print("ok", flush=True)
"""


class S3Server(_Service):
    """An S3 endpoint: moto's ThreadedMotoServer, hosted in a child Python process.

    Why a child: moto keeps its state in module globals, so two servers in one process (the
    session's and a test's private one) would share their buckets, and any `mock_aws` in a unit
    test would wipe them. stop()/start() close and reopen the listener (connections are refused
    meanwhile) and keep every bucket and object; kill() ends the child, which, being an
    in-memory store, loses all data, and the next start() begins empty.
    """

    host = LOOPBACK
    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self) -> None:
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="iotmeter-s3-"))
        self._child: subprocess.Popen[bytes] | None = None
        self._serving = False
        super().__init__()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "moto.log"

    @property
    def running(self) -> bool:
        return self._serving and self._child is not None and self._child.poll() is None

    def start(self) -> None:
        if self.running:
            return
        if self._child is None or self._child.poll() is not None:
            with self.log_path.open("ab") as log:
                self._child = subprocess.Popen(
                    [sys.executable, "-c", _MOTO_CHILD, self.host, str(self.port)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
        self._command("start")
        self._serving = True
        if not tcp_accepts(self.host, self.port):
            raise ServiceError(
                f"moto S3 server on port {self.port} accepts no connections; "
                f"log:\n{log_tail(self.log_path)}"
            )

    def stop(self) -> None:
        if self.running:
            self._command("stop")
        self._serving = False

    def kill(self) -> None:
        child, self._child = self._child, None
        self._serving = False
        if child is None:
            return
        _end_process(child, signal.SIGKILL)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _release(self) -> None:
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _command(self, command: str) -> None:
        child = self._child
        assert child is not None and child.stdin is not None and child.stdout is not None
        answer = b""
        with contextlib.suppress(OSError):
            child.stdin.write(f"{command}\n".encode())
            child.stdin.flush()
            # The first answer waits for moto's import, which takes a second or more.
            readable, _, _ = select.select([child.stdout], [], [], START_TIMEOUT_S)
            if readable:
                answer = child.stdout.readline()
        if answer.strip() != b"ok":
            self.kill()
            raise ServiceError(
                f"moto S3 server did not {command} on port {self.port}; "
                f"log:\n{log_tail(self.log_path)}"
            )


class PostgresDatabase:
    """A fresh database with a unique name on a running PostgreSQL, dropped by close()."""

    def __init__(self, admin_url: str = SHARED_POSTGRES_URL, *, prefix: str = "iotmeter_test_"):
        self.admin_url = admin_url
        self.name = f"{prefix}{secrets.token_hex(6)}"
        self._created = False

    @property
    def url(self) -> str:
        return urlsplit(self.admin_url)._replace(path=f"/{self.name}").geturl()

    def create(self) -> None:
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        self._created = True
        _OPEN.add(self)

    def close(self) -> None:
        """Drop the database, disconnecting whoever still uses it."""
        if not self._created:
            return
        self._admin(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
        )
        self._created = False
        _OPEN.discard(self)

    def _admin(self, statement: sql.Composed) -> None:
        try:
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(statement)
        except psycopg.OperationalError as exc:
            raise ServiceError(
                f"PostgreSQL not usable at {self.admin_url}: {str(exc).strip()} "
                "(start the server, e.g. `pg_ctlcluster 15 main start`)"
            ) from exc

    def __enter__(self) -> Self:
        self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _postgres_bin_dir() -> Path:
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        return Path(on_path).parent

    # Debian keeps server binaries per major version, off PATH; take the newest.
    def major(bin_dir: Path) -> int:
        return int(bin_dir.parent.name) if bin_dir.parent.name.isdigit() else 0

    found = sorted((p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")), key=major)
    if not found:
        raise ServiceError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install "
            "them with `apt-get install postgresql`"
        )
    return found[-1]


class PrivatePostgres(_Service):
    """A PostgreSQL cluster of its own (initdb + pg_ctl) for tests that stop the database.

    initdb refuses to run as root, so under root every cluster command runs as the `postgres`
    OS user, which owns the temporary directory. fsync is off for speed: the cluster is thrown
    away, and no committed row is lost to a stop or a kill, only to an OS crash.
    """

    host = LOOPBACK

    def __init__(self, *, tls: tuple[Path, Path] | None = None) -> None:
        """`tls`: (certificate, key) PEM files to serve TLS with (ssl = on)."""
        self.tls = tls
        self.bin_dir = _postgres_bin_dir()
        self._run_as: list[str] = []
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                owner = None
            if runuser is None or owner is None:
                raise ServiceError(
                    "PrivatePostgres under root needs `runuser` and a `postgres` "
                    "OS user (apt-get install postgresql creates it)"
                )
            self._run_as = [runuser, "-u", "postgres", "--"]
        self.port = free_port()
        self.base_dir = Path(tempfile.mkdtemp(prefix="iotmeter-postgres-"))
        if owner is not None:
            os.chown(self.base_dir, owner.pw_uid, owner.pw_gid)
        self._running = False
        super().__init__()

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        if self._running:
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._pg_ctl("-l", str(self.log_path), "-w", "-t", str(int(START_TIMEOUT_S)), "start")
        self._running = True

    def stop(self) -> None:
        """A clean, fast shutdown: sessions are cut, committed data is on disk."""
        if self._running:
            self._pg_ctl("-m", "fast", "-w", "stop")
        self._running = False

    def kill(self) -> None:
        """An immediate shutdown, as after a crash: the next start replays the WAL."""
        if self._running:
            self._pg_ctl("-m", "immediate", "-w", "stop")
        self._running = False

    def _release(self) -> None:
        # Also after a failed start: a postmaster may be up even though pg_ctl gave up on it.
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(ServiceError, OSError, subprocess.SubprocessError):
                self._pg_ctl("-m", "immediate", "-w", "stop")
        self._running = False
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _initdb(self) -> None:
        initdb = str(self.bin_dir / "initdb")
        self._run(
            initdb,
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        socket_dir = str(self.base_dir).replace("'", "''")
        settings = [
            f"port = {self.port}",
            f"listen_addresses = '{self.host}'",
            # The socket stays private: the default /var/run/postgresql is the shared server's.
            f"unix_socket_directories = '{socket_dir}'",
            # Both only guard against an OS crash; a killed postmaster still loses no commit,
            # so kill() stays a faithful crash. synchronous_commit stays on for that reason.
            "fsync = off",
            "full_page_writes = off",
        ]
        if self.tls is not None:
            # The server reads its key only when the key file is the server user's, 0600.
            for source, name in zip(self.tls, ("server.crt", "server.key"), strict=True):
                target = self.data_dir / name
                shutil.copyfile(source, target)
                target.chmod(0o600)
                if self._run_as:
                    owner = pwd.getpwnam("postgres")
                    os.chown(target, owner.pw_uid, owner.pw_gid)
            settings += ["ssl = on", "ssl_cert_file = 'server.crt'",
                         "ssl_key_file = 'server.key'"]
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# iotmeter test cluster\n" + "\n".join(settings) + "\n")

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args)

    def _run(self, *argv: str) -> None:
        # cwd: a directory the postgres user may enter (root's home is not one).
        result = subprocess.run(
            [*self._run_as, *argv],
            cwd=self.base_dir,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=START_TIMEOUT_S * 2,
            check=False,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace").strip()
            raise ServiceError(
                f"{Path(argv[0]).name} {' '.join(argv[1:])} failed "
                f"({result.returncode}): {output}\nlog:\n{log_tail(self.log_path)}"
            )
