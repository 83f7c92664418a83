#!/usr/bin/env python3
"""The image's entry point: picks the role, reads secrets from files, then becomes `iotmeter`.

    iotmeter-entrypoint collector|api|alert-relay|simulator|dashboard|web [ARGS...]
    iotmeter-entrypoint healthcheck        (the image's HEALTHCHECK)
    iotmeter-entrypoint <anything else>    runs `iotmeter <anything else>` (migrate, config, ...)

Secrets as files: for every variable `IOTMETER_<NAME>_FILE` the file's content (one trailing
newline dropped) becomes `IOTMETER_<NAME>` in the environment of the process it starts, so a
Docker or Kubernetes secret never has to be in the container's configuration.

A `_FILE` variable that iotmeter reads itself (a setting such as IOTMETER_GITHUB_TOKEN_FILE) is
left for it.

Replicas of one compose service (`docker compose up --scale collector=N`) share one
configuration, but each collector needs its own broker identity: its persistent session and
its spool directory belong to it, and the shipped broker makes the username the client id
(use_username_as_clientid). When `IOTMETER_CLIENT_ID` is unset, the collector role claims the
lowest free slot N under `$IOTMETER_HOME/slots/` (an exclusive lock held by the collector
process for its whole life, released by the kernel when it exits). Slot 1 runs with the broker
users of IOTMETER_MQTT_URL and IOTMETER_MQTT_DISPATCH_URL as they are (`collector`,
`dispatcher`); slot N > 1 as `<user>-N` (`collector-2`, `dispatcher-2`, same passwords), and
the client id is the intake user. A replica that restarts takes a free slot again and, with
it, that slot's session and spool, which live on the shared volume.

Standard library and the package's own setting list only: it runs before anything else.
"""

from __future__ import annotations

import fcntl
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PREFIX = "IOTMETER_"
SLOT_PREFIX = "iotmeter-collector"
MAX_SLOTS = 256

# role -> (iotmeter arguments, port its /healthz is on or None when it serves none). The
# servers bind every interface: inside a container only the published ports reach them.
ROLES: dict[str, list[str]] = {
    "collector": ["--collector-only"],
    "api": ["api", "--host", "0.0.0.0", "--port", "8080"],
    "alert-relay": ["alert-relay", "--host", "0.0.0.0", "--port", "9095"],
    "simulator": ["simulate"],
    "dashboard": [],
    # Bound beyond loopback inside the container, `iotmeter serve` requires its token.
    "web": ["serve", "--host", "0.0.0.0", "--port", "8000"],
}


class EntrypointError(Exception):
    """A problem the operator must fix: printed as one line, exit status 2."""


def read_by_iotmeter() -> frozenset[str]:
    """The variables iotmeter itself reads: a `_FILE` among them is a setting, not ours."""
    try:
        from iotmeter_tui.backend.config import SETTINGS
    except ImportError:  # run outside the image's environment
        return frozenset()
    return frozenset(s.env for s in SETTINGS)


def secrets_from_files(env: Mapping[str, str],
                       settings: frozenset[str] = frozenset()) -> dict[str, str]:
    """`IOTMETER_X_FILE=/path` -> `IOTMETER_X=<content>`; those _FILE variables are dropped.
    A _FILE variable in `settings` is iotmeter's own and stays as it is."""
    out = dict(env)
    for name, path in env.items():
        if not (name.startswith(PREFIX) and name.endswith("_FILE")) or name == PREFIX + "FILE":
            continue
        if name in settings:
            continue
        target = name[: -len("_FILE")]
        if env.get(target):
            raise EntrypointError(f"{name}: {target} is set as well; set one of them")
        try:
            value = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise EntrypointError(f"{name}: cannot read {path!r}: {exc.strerror}") from None
        value = value[:-1] if value.endswith("\n") else value
        if not value or "\n" in value:
            raise EntrypointError(f"{name}: {path!r} must hold exactly one line")
        out[target] = value
        del out[name]
    return out


def claim_slot(home: Path) -> tuple[int, int]:
    """Lock the lowest free slot under home/slots/; returns (slot, lock fd). The fd is made
    inheritable so the lock lives as long as the process this one execs into."""
    slots = home / "slots"
    try:
        slots.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EntrypointError(f"IOTMETER_HOME: cannot create {slots}: {exc.strerror}") from None
    for slot in range(1, MAX_SLOTS + 1):
        fd = os.open(slots / f"{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.set_inheritable(fd, True)
        return slot, fd
    raise EntrypointError(f"IOTMETER_HOME: all {MAX_SLOTS} collector slots are taken")


def with_user_suffix(url: str, suffix: str) -> str:
    """The broker URL with `suffix` appended to its username (password, host kept)."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=f"{user}{suffix}{colon}{password}@{hostport}"))


def replica_identity(env: dict[str, str], slot: int) -> None:
    """Slot N's broker users and client id, in place (see the module's docstring)."""
    suffix = "" if slot == 1 else f"-{slot}"
    for name in (PREFIX + "MQTT_URL", PREFIX + "MQTT_DISPATCH_URL"):
        if env.get(name) and suffix:
            env[name] = with_user_suffix(env[name], suffix)
    user = urlsplit(env.get(PREFIX + "MQTT_URL", "")).username
    env[PREFIX + "CLIENT_ID"] = user if user else f"{SLOT_PREFIX}{suffix}"


def plan(argv: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The `iotmeter` command line and environment for an entry point invocation."""
    env = secrets_from_files(env, read_by_iotmeter())
    if not argv:
        argv = ["collector"]
    role, rest = argv[0], list(argv[1:])
    command = [*ROLES[role], *rest] if role in ROLES else list(argv)
    if role == "collector" and not env.get(PREFIX + "CLIENT_ID"):
        home = Path(env.get(PREFIX + "HOME") or "/var/lib/iotmeter")
        slot, _fd = claim_slot(home)
        replica_identity(env, slot)
    return ["iotmeter", *command], env


# --- health check ---------------------------------------------------------------------------


def option(args: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def health_url(cmdline: Sequence[str], env: Mapping[str, str]) -> str | None:
    """Where the running process (PID 1's command line) serves /healthz; None for the
    dashboard and the simulator, which serve nothing."""
    args = list(cmdline)
    for i, arg in enumerate(args):  # drop the interpreter and the script's path
        if arg == "iotmeter" or arg.endswith("/iotmeter"):
            args = args[i + 1:]
            break
    if "--collector-only" in args:
        port = option(args, "--metrics-port") or env.get(PREFIX + "METRICS_PORT") or "9108"
    elif args and args[0] in {"api", "alert-relay", "serve"}:
        default = {"api": "8080", "alert-relay": "9095", "serve": "8000"}[args[0]]
        port = option(args, "--port") or default
    else:
        return None
    return f"http://127.0.0.1:{port}/healthz"


def healthcheck(proc_cmdline: Path = Path("/proc/1/cmdline")) -> int:
    cmdline = proc_cmdline.read_bytes().decode(errors="replace").split("\0")
    url = health_url([arg for arg in cmdline if arg], os.environ)
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (OSError, urllib.error.URLError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["healthcheck"]:
        return healthcheck()
    try:
        command, env = plan(argv, os.environ)
    except EntrypointError as exc:
        print(f"iotmeter-entrypoint: {exc}", file=sys.stderr)
        return 2
    if env.get("ENTRYPOINT_DRY_RUN"):  # tests: what would run, secrets not shown
        print(" ".join(command), env.get(PREFIX + "CLIENT_ID", ""))
        return 0
    os.execvpe(command[0], command, env)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
