"""SQLite adapter of the metadata port: one database file shared by the dashboard and the
collector process.

WAL mode lets readers run beside the one writer; writers start with BEGIN IMMEDIATE, so a
transaction that will write waits (busy_timeout) for the write lock up front instead of failing
half-way; synchronous=NORMAL is durable across application crashes, which is what WAL needs.
Each transaction borrows a connection from a small free list, so threads never share one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import ClassVar, Final

from iotmeter_tui.backend.config import local_path
from iotmeter_tui.backend.errors import StoreError, StoreRejected, StoreUnavailable
from iotmeter_tui.backend.stores.metadata_sql import Cursor, SqlMetadataStore
from iotmeter_tui.backend.stores.sqlite_wal import switch_to_wal

STORE: Final = "sqlite"
DEFAULT_TIMEOUT_S: Final = 10.0

# Primary result codes that mean "another process holds the file, or the disk is in
# trouble, right now": worth a retry, unlike a constraint or a schema error.
_RETRYABLE_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)


class SqliteBackend:
    """The SqlBackend for SQLite 3.35+ (RETURNING, NULLS LAST, partial-index upserts)."""

    name: ClassVar[str] = STORE
    ddl_types: ClassVar[Mapping[str, str]] = {
        "serial": "INTEGER PRIMARY KEY",
        "json": "TEXT",
        "key": "TEXT",
    }

    def __init__(self, path: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._path = path
        self._timeout_s = timeout_s
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def placeholders(self, sql: str) -> str:
        return sql  # sqlite3 reads :name natively

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Cursor]:
        try:
            conn = self._acquire()
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            cursor = conn.cursor()
            try:
                yield cursor
                conn.execute("COMMIT")
            finally:
                cursor.close()
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        finally:
            self._release(conn)

    def has_table(self, cursor: Cursor, table: str) -> bool:
        cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name",
                       {"name": table})
        return cursor.fetchone() is not None

    def lock_migrations(self, cursor: Cursor) -> None:
        """Nothing to add: the migration runs in a BEGIN IMMEDIATE transaction, which
        already keeps every other writer out until it commits."""

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _acquire(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise StoreRejected(STORE, "the metadata store is closed")
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _release(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            # Ended by an exception: roll back, and drop the connection if even that fails.
            try:
                conn.rollback()
            except sqlite3.Error:
                conn.close()
                return
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the module opens no transactions itself; ours are explicit.
        conn = sqlite3.connect(
            self._path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout_s * 1000)}")
            switch_to_wal(conn, self._timeout_s)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            with suppress(sqlite3.Error):
                conn.close()
            raise
        return conn

    def _translate(self, exc: sqlite3.Error) -> StoreError:
        message = f"{self._path}: {exc}"
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _RETRYABLE_CODES:
            return StoreUnavailable(STORE, message, retry_after=0.5)
        return StoreRejected(STORE, message)


def open_sqlite_metadata(url: str, *, timeout_s: float | None = None) -> SqlMetadataStore:
    """The metadata store in the file a sqlite:///path URL names (config.local_path); raises
    ValueError when it names none."""
    return SqlMetadataStore(
        SqliteBackend(
            local_path(url), timeout_s=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
        )
    )
