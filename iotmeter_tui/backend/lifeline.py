"""Child processes that die with this one: the embedded broker must not outlive a dashboard
that was SIGKILLed (or lost its SSH session), or the next start finds an orphan holding the
data directory's sessions."""

from __future__ import annotations

import ctypes
import os
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


def spawn_watched(popen: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """Run `popen` on a thread of its own, which then waits for the child to exit.
    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process, and
    the dashboard starts its runtime on a short-lived thread (`app.RuntimeStarter`): forked
    there, the broker would be SIGTERMed seconds after start. A thread that waits for its child
    lives exactly as long as the child, whichever thread asked for it."""
    started: Future[subprocess.Popen[bytes]] = Future()

    def watch() -> None:
        try:
            process = popen()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(process)
        process.wait()

    threading.Thread(target=watch, daemon=True, name="iotmeter-child-watch").start()
    return started.result()
