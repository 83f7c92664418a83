"""Helpers the bench scripts share: process figures from /proc, the open-file limit, the
broker's own client count. Imported by the scripts in this directory (`from _common import
...`: a script's own directory is first on sys.path)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from pathlib import Path

from iotmeter_tui.backend.broker import LOOPBACK


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children, from /proc (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    """Resident set size (VmRSS) of a process in MiB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def open_file_limit(pid: int) -> int | None:
    """The soft open-file limit a running process has (from /proc/PID/limits)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return -1 if soft == "unlimited" else int(soft)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def raise_file_limit() -> int:
    """Lift this process's soft RLIMIT_NOFILE to the hard limit, so children started from
    here (broker, simulator) inherit it: one descriptor per MQTT connection. Returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def broker_sys(port: int, *topics: str, wait_s: float = 15.0) -> dict[str, str]:
    """Values of the given $SYS topics of a mosquitto on loopback (retained, so they come at
    once once the broker has published them; it does so every sys_interval)."""
    binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
    argv = [binary, "-h", LOOPBACK, "-p", str(port), "-C", str(len(topics)),
            "-W", str(int(wait_s)), "-v"]
    for topic in topics:
        argv += ["-t", topic]
    try:
        out = subprocess.run(argv, capture_output=True, timeout=wait_s + 5, check=False,
                             text=True).stdout
    except subprocess.TimeoutExpired:
        return {}
    values = {}
    for line in out.splitlines():
        topic, _, value = line.partition(" ")
        values[topic] = value.strip()
    return values


def broker_clients(port: int) -> int | None:
    """Clients connected to a mosquitto, as its $SYS tree says (published every
    sys_interval; the reader itself is not yet counted in the value it reads)."""
    topic = "$SYS/broker/clients/connected"
    try:
        return int(broker_sys(port, topic)[topic])
    except (KeyError, ValueError):
        return None
