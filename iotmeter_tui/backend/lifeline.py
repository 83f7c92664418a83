"""Child processes that die with this one: the embedded broker must not outlive a dashboard
that was SIGKILLed (or lost its SSH session), or the next start finds an orphan holding the
data directory's sessions."""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def parent_death_signal() -> Callable[[], None] | None:
    """A `preexec_fn` asking the kernel to SIGTERM the child when its parent dies, SIGKILL
    included (mosquitto then saves its sessions and exits); None where that does not exist.
    Linux only: elsewhere there is no PR_SET_PDEATHSIG, and a broker whose parent is SIGKILLed
    keeps running as an orphan (a parent that exits normally still stops it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    # Runs in the child between fork and exec, where only this thread exists: it takes no lock
    # and imports nothing (prctl is looked up above), which keeps preexec_fn safe here.
    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        # A parent that died before the prctl above sends no signal: the child has already been
        # handed to init (or a subreaper) and must not exec at all.
        if os.getppid() != parent:
            os._exit(1)

    return die_with_parent


_Spawn = tuple[Callable[[], subprocess.Popen[bytes]], Future[subprocess.Popen[bytes]]]
_spawn_lock = threading.Lock()
_spawn_jobs: queue.SimpleQueue[_Spawn] | None = None
_spawn_owner = 0  # the pid that started the spawn thread: a forked child needs its own


def spawn_long_lived(popen: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """Run `popen` on a thread that lives as long as this process. PR_SET_PDEATHSIG fires when
    the *thread* that forked the child ends, not the process, and the dashboard starts its
    runtime on a short-lived thread (`app.RuntimeStarter`): forked there, the broker would be
    SIGTERMed seconds after start. So the main thread forks directly (it lasts until the process
    exits) and any other thread hands the fork to one daemon thread that never returns."""
    global _spawn_jobs, _spawn_owner
    if threading.current_thread() is threading.main_thread():
        return popen()
    with _spawn_lock:
        if _spawn_jobs is None or _spawn_owner != os.getpid():
            _spawn_jobs, _spawn_owner = queue.SimpleQueue(), os.getpid()
            threading.Thread(target=_serve_spawns, args=(_spawn_jobs,), daemon=True,
                             name="iotmeter-broker-spawn").start()
        jobs = _spawn_jobs
    done: Future[subprocess.Popen[bytes]] = Future()
    jobs.put((popen, done))
    return done.result()


def _serve_spawns(jobs: queue.SimpleQueue[_Spawn]) -> None:
    while True:
        popen, done = jobs.get()
        try:
            done.set_result(popen())
        except BaseException as exc:
            done.set_exception(exc)
