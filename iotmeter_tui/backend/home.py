"""IOTMETER_HOME is private to its user: the databases, the spool (every message not yet
stored), logs, the archive and the embedded broker's credentials live there, and on a shared
host (several operators on one SSH server) nobody else may read them.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

# Files and directories created from here on, by our code or by libraries (SQLite and its WAL,
# the spool, mosquitto's persistence file and log, the archive): 0600 and 0700.
PRIVATE_UMASK: Final = 0o077


def keep_files_private() -> None:
    """Set the process's umask (inherited by its children: the collector worker, mosquitto,
    the simulators)."""
    os.umask(PRIVATE_UMASK)


def prepare_home(home: Path) -> None:
    """Create `home` 0700; an existing one of ours that others can enter is closed to them.
    (Files an older version created inside keep their modes: `chmod -R go= $IOTMETER_HOME`.)"""
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = home.stat()
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            os.chmod(home, stat.S_IMODE(info.st_mode) & 0o700)
            # Info, not a warning: a directory made by mkdir under the usual umask is the
            # common case, and the fix is done.
            log.info("IOTMETER_HOME was open to other users; now 0700",
                        extra={"event": "home_tightened", "home": str(home)})
    except OSError:
        pass  # the command that needs it says why it cannot use it, in its own words
