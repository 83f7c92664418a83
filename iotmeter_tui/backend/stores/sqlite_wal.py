"""What both SQLite adapters need when they open a file: WAL mode, switched on safely."""

from __future__ import annotations

import sqlite3
import time


def switch_to_wal(connection: sqlite3.Connection, timeout_s: float) -> None:
    """journal_mode is a property of the file and cannot change inside a transaction.
    Switching a new file to WAL does not wait on busy_timeout: while another connection (a
    thread or process opening the same new file) makes the same switch, it fails at once, so
    it is retried here for as long as a write would wait."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0)
            if code & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)
