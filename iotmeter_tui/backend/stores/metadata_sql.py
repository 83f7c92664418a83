"""The one SQL implementation of the metadata port, shared by the PostgreSQL and SQLite adapters.

Queries are portable SQL (upserts with ON CONFLICT, RETURNING, partial indexes, NULLS LAST)
written with `:name` placeholders; an `SqlBackend` supplies connections, transactions, the
placeholder style, the few DDL type differences and the lock that serialises migrations. All
timestamps are BIGINT milliseconds since the Unix epoch (UTC).

The schema is a list of numbered, forward-only `Migration`s. `migrate()` applies each missing
one in its own transaction holding the backend's migration lock, so processes starting at
once wait for each other instead of racing; `schema_migrations` records what was applied.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Protocol

from iotmeter_tui.backend.errors import AlreadyExists, StoreRejected, StoreUnavailable
from iotmeter_tui.backend.stores.metadata import (
    ALERT_STATES,
    API_KEY_ROLES,
    COMMAND_FINAL_STATES,
    COMMAND_OPEN_STATES,
    COMMAND_STATES,
    CONNECTION_STATUSES,
    DEFAULT_TARGET_TIMEOUT_S,
    DEVICE_ORDER_COLUMNS,
    TARGET_FINAL_STATES,
    UNKNOWN,
    UNSET,
    Alert,
    ApiKey,
    AuditEntry,
    Campaign,
    Command,
    Device,
    DeviceDeletion,
    DeviceQuality,
    DeviceUpdate,
    Firmware,
    FleetFigures,
    OtaTarget,
    SeqState,
    Unset,
    decode_device_cursor,
    merge_seq_states,
)

Params = Mapping[str, Any]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- what a backend provides ----------------------------------------------------------------


class Cursor(Protocol):
    """The DB-API subset both drivers share (sqlite3.Cursor, psycopg.Cursor)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Params, /) -> Any: ...

    def executemany(self, sql: str, params: Iterable[Params], /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class SqlBackend(Protocol):
    """A dialect plus its connections. `transaction` translates driver errors into
    StoreUnavailable/StoreRejected and commits on success, rolls back on any exception."""

    @property
    def name(self) -> str:
        """Names the store in error messages: "postgresql" | "sqlite"."""

    @property
    def ddl_types(self) -> Mapping[str, str]:
        """Fills the {serial}, {json} and {key} tokens of migrations."""

    def placeholders(self, sql: str) -> str:
        """`:name` placeholders -> the driver's style."""

    def transaction(self, *, write: bool) -> AbstractContextManager[Cursor]: ...

    def has_table(self, cursor: Cursor, table: str) -> bool:
        """Whether `table` exists (a runtime role that may not CREATE checks before)."""
        ...

    def lock_migrations(self, cursor: Cursor) -> None:
        """Inside the migration transaction: wait until no other process migrates."""

    def close(self) -> None: ...


class _Tx:
    """A transaction's cursor with the placeholder translation applied."""

    __slots__ = ("_cursor", "_sql")

    def __init__(self, cursor: Cursor, translate: Callable[[str], str]) -> None:
        self._cursor = cursor
        self._sql = translate

    def run(self, sql: str, params: Params | None = None) -> int:
        self._cursor.execute(self._sql(sql), params or {})
        return self._cursor.rowcount

    def many(self, sql: str, rows: Sequence[Params]) -> None:
        if rows:
            self._cursor.executemany(self._sql(sql), rows)

    def one(self, sql: str, params: Params | None = None) -> Any:
        self._cursor.execute(self._sql(sql), params or {})
        return self._cursor.fetchone()

    def all(self, sql: str, params: Params | None = None) -> list[Any]:
        self._cursor.execute(self._sql(sql), params or {})
        return self._cursor.fetchall()


# --- schema ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """One forward-only schema step, applied in one transaction together with the
    `schema_migrations` row that records it. Never edit a released step: add a new one."""

    version: int
    description: str
    statements: tuple[str, ...] = field(repr=False)


def _in(values: Iterable[str]) -> str:
    """A SQL list of our own constants (never user input) for CHECKs and guards."""
    return ", ".join(f"'{value}'" for value in values)


MIGRATIONS_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at BIGINT NOT NULL)"
)

# {key}: identifiers and enums, compared byte-wise in both dialects so that sorting and
# paging give the same order (PostgreSQL's locale collations ignore punctuation).
MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "initial schema",
        (
            f"""CREATE TABLE devices (
            device_id {{key}} PRIMARY KEY,
            device_type {{key}} NOT NULL DEFAULT '{UNKNOWN}',
            connection_status {{key}} NOT NULL DEFAULT '{UNKNOWN}'
                CHECK (connection_status IN ({_in(CONNECTION_STATUSES)})),
            fw_version {{key}},
            last_seen BIGINT,
            boot BIGINT,
            heartbeat_s DOUBLE PRECISION,
            status_changed_at BIGINT,
            created_at BIGINT NOT NULL)""",
            "CREATE INDEX devices_connection_status_idx ON devices (connection_status)",
            "CREATE INDEX devices_last_seen_idx ON devices (last_seen)",
            "CREATE INDEX devices_device_type_idx ON devices (device_type)",
            """CREATE TABLE device_configs (
            device_id {key} NOT NULL,
            key {key} NOT NULL,
            value {json} NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (device_id, key))""",
            """CREATE TABLE collector_cursors (
            name {key} PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at BIGINT NOT NULL)""",
            """CREATE TABLE device_seq_tracking (
            device_id {key} NOT NULL,
            boot BIGINT NOT NULL,
            highest_seq BIGINT NOT NULL,
            received BIGINT NOT NULL,
            duplicates BIGINT NOT NULL,
            missing BIGINT NOT NULL,
            gaps {json} NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (device_id, boot))""",
            f"""CREATE TABLE device_alerts (
            id {{serial}},
            device_id {{key}} NOT NULL,
            rule {{key}} NOT NULL,
            severity {{key}} NOT NULL,
            state {{key}} NOT NULL CHECK (state IN ({_in(ALERT_STATES)})),
            value DOUBLE PRECISION,
            message TEXT NOT NULL,
            raised_at BIGINT NOT NULL,
            acknowledged_at BIGINT,
            cleared_at BIGINT,
            updated_at BIGINT NOT NULL)""",
            # The rule "one open alert per device and rule" lives in the database, so two
            # collectors raising the same alert at once cannot both insert.
            "CREATE UNIQUE INDEX device_alerts_open_uq ON device_alerts (device_id, rule)"
            " WHERE state <> 'cleared'",
            "CREATE INDEX device_alerts_state_idx ON device_alerts (state, raised_at)",
            "CREATE INDEX device_alerts_device_idx ON device_alerts (device_id, raised_at)",
            f"""CREATE TABLE device_commands (
            id {{key}} PRIMARY KEY,
            device_id {{key}} NOT NULL,
            name {{key}} NOT NULL,
            params {{json}} NOT NULL,
            state {{key}} NOT NULL CHECK (state IN ({_in(COMMAND_STATES)})),
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            expires_at BIGINT,
            attempts INTEGER NOT NULL DEFAULT 0,
            result TEXT,
            detail TEXT,
            sent_at BIGINT)""",
            "CREATE INDEX device_commands_state_idx ON device_commands (state, created_at)",
            "CREATE INDEX device_commands_device_idx ON device_commands (device_id, created_at)",
            "CREATE INDEX device_commands_created_idx ON device_commands (created_at)",
            """CREATE TABLE ota_firmware (
            version {key} PRIMARY KEY,
            size BIGINT NOT NULL CHECK (size >= 0),
            sha256 TEXT NOT NULL,
            key TEXT NOT NULL,
            uploaded_at BIGINT NOT NULL)""",
            """CREATE TABLE ota_campaigns (
            id {key} PRIMARY KEY,
            fw_version {key} NOT NULL REFERENCES ota_firmware (version),
            selector TEXT NOT NULL,
            batch_size INTEGER NOT NULL CHECK (batch_size > 0),
            max_failures_pct DOUBLE PRECISION NOT NULL
                CHECK (max_failures_pct >= 0 AND max_failures_pct <= 100),
            state {key} NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            detail TEXT)""",
            "CREATE INDEX ota_campaigns_created_idx ON ota_campaigns (created_at)",
            # The primary key (campaign_id first) is the "targets by campaign" index.
            """CREATE TABLE ota_targets (
            campaign_id {key} NOT NULL REFERENCES ota_campaigns (id) ON DELETE CASCADE,
            device_id {key} NOT NULL,
            state {key} NOT NULL,
            progress_pct DOUBLE PRECISION,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            started_at BIGINT,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (campaign_id, device_id))""",
            "CREATE INDEX ota_targets_device_idx ON ota_targets (device_id)",
        ),
    ),
    Migration(
        2,
        "OTA: per-target timeout of a campaign, campaigns by state",
        (
            # No CHECK here: SQLite cannot add a column with one to a table holding rows;
            # the OTA service validates the value.
            "ALTER TABLE ota_campaigns ADD COLUMN target_timeout_s DOUBLE PRECISION NOT NULL"
            f" DEFAULT {DEFAULT_TARGET_TIMEOUT_S!r}",
            # The dispatcher looks up the open campaigns every second.
            "CREATE INDEX ota_campaigns_state_idx ON ota_campaigns (state, created_at)",
        ),
    ),
    Migration(
        3,
        "devices: sort indexes that end in device_id, as the fleet view pages",
        (
            # The fleet view orders by a column then device_id (stable pages); an index on
            # exactly that order lets a page be read without sorting the whole fleet.
            "DROP INDEX devices_connection_status_idx",
            "DROP INDEX devices_device_type_idx",
            "DROP INDEX devices_last_seen_idx",
            "CREATE INDEX devices_status_order_idx ON devices (connection_status, device_id)",
            "CREATE INDEX devices_type_order_idx ON devices (device_type, device_id)",
            "CREATE INDEX devices_fw_order_idx ON devices (fw_version, device_id)",
            "CREATE INDEX devices_last_seen_order_idx ON devices (last_seen, device_id)",
        ),
    ),
    Migration(
        4,
        "device_seq_tracking: one row per collector (shared subscriptions)",
        (
            # SQLite cannot change a primary key in place: build, copy, swap.
            """CREATE TABLE device_seq_tracking_v4 (
            device_id {key} NOT NULL,
            boot BIGINT NOT NULL,
            highest_seq BIGINT NOT NULL,
            received BIGINT NOT NULL,
            duplicates BIGINT NOT NULL,
            missing BIGINT NOT NULL,
            gaps {json} NOT NULL,
            updated_at BIGINT NOT NULL,
            collector {key} NOT NULL DEFAULT '',
            PRIMARY KEY (device_id, boot, collector))""",
            "INSERT INTO device_seq_tracking_v4 (device_id, boot, highest_seq, received,"
            " duplicates, missing, gaps, updated_at, collector)"
            " SELECT device_id, boot, highest_seq, received, duplicates, missing, gaps,"
            " updated_at, '' FROM device_seq_tracking",
            "DROP TABLE device_seq_tracking",
            "ALTER TABLE device_seq_tracking_v4 RENAME TO device_seq_tracking",
        ),
    ),
    Migration(
        5,
        "device administration: names, locations, metadata; API keys; audit log; created_by",
        (
            "ALTER TABLE devices ADD COLUMN name TEXT",
            "ALTER TABLE devices ADD COLUMN location TEXT",
            "ALTER TABLE devices ADD COLUMN metadata {json} NOT NULL DEFAULT '{{}}'",
            "ALTER TABLE device_commands ADD COLUMN created_by TEXT",
            "ALTER TABLE ota_campaigns ADD COLUMN created_by TEXT",
            # A name is taken for good, revoked or not, so the audit log's actor names one key.
            f"""CREATE TABLE api_keys (
            name {{key}} PRIMARY KEY,
            role {{key}} NOT NULL CHECK (role IN ({_in(API_KEY_ROLES)})),
            key_hash {{key}} NOT NULL UNIQUE,
            created_at BIGINT NOT NULL,
            revoked_at BIGINT,
            last_used_at BIGINT)""",
            """CREATE TABLE audit_log (
            id {serial},
            at BIGINT NOT NULL,
            actor TEXT NOT NULL,
            role {key} NOT NULL,
            action {key} NOT NULL,
            target TEXT,
            result {key} NOT NULL,
            request_id TEXT,
            detail {json})""",
            # Newest first, by id: the log pages back with before_id.
            "CREATE INDEX audit_log_actor_idx ON audit_log (actor, id)",
            "CREATE INDEX audit_log_action_idx ON audit_log (action, id)",
            "CREATE INDEX audit_log_at_idx ON audit_log (at)",
            "CREATE INDEX device_alerts_open_severity_idx ON device_alerts (severity)"
            " WHERE state <> 'cleared'",
        ),
    ),
    Migration(
        6,
        "OTA: the Ed25519 signature of a firmware image, carried in offers",
        ("ALTER TABLE ota_firmware ADD COLUMN signature TEXT",),
    ),
    Migration(
        7,
        "device_quality: a data-quality score per device",
        (
            # Its own table, not columns of devices: written per registry batch by the
            # collector only, so it never contends with the registry's device upserts.
            """CREATE TABLE device_quality (
            device_id {key} PRIMARY KEY,
            score DOUBLE PRECISION NOT NULL,
            received DOUBLE PRECISION NOT NULL,
            gaps DOUBLE PRECISION NOT NULL,
            duplicates DOUBLE PRECISION NOT NULL,
            rejects DOUBLE PRECISION NOT NULL,
            counter_resets DOUBLE PRECISION NOT NULL,
            stuck_fields INTEGER NOT NULL,
            clock_skew_ms BIGINT NOT NULL,
            updated_at BIGINT NOT NULL)""",
        ),
    ),
)


def _check_migrations(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or (versions and versions[0] < 1):
        raise ValueError(f"migration versions must be positive and increasing: {versions}")


_check_migrations(MIGRATIONS)


# --- rows <-> records -----------------------------------------------------------------------


def _columns(record: type) -> str:
    return ", ".join(f.name for f in fields(record))


# The registry's own columns; `quality` is read from device_quality (DEVICE_SELECT).
DEVICE_COLUMNS: Final = ", ".join(f.name for f in fields(Device) if f.name != "quality")
# A device with its quality score, as a derived table: filters, keyset conditions and the
# order can name `quality` like any registry column.
DEVICE_SELECT: Final = (
    f"(SELECT {DEVICE_COLUMNS}, (SELECT q.score FROM device_quality q"
    " WHERE q.device_id = devices.device_id) AS quality FROM devices) AS devices")
# What the collector writes: the registry fields, never the operators' name/location/metadata.
_COLLECTOR_DEVICE_FIELDS: Final = (
    "device_id", "device_type", "connection_status", "fw_version", "last_seen", "boot",
    "heartbeat_s", "status_changed_at", "created_at",
)
API_KEY_COLUMNS: Final = _columns(ApiKey)
AUDIT_COLUMNS: Final = _columns(AuditEntry)
SEQ_COLUMNS: Final = _columns(SeqState)
ALERT_COLUMNS: Final = _columns(Alert)
COMMAND_COLUMNS: Final = _columns(Command)
FIRMWARE_COLUMNS: Final = _columns(Firmware)
CAMPAIGN_COLUMNS: Final = _columns(Campaign)
TARGET_COLUMNS: Final = _columns(OtaTarget)


def _seq_state(row: Sequence[Any]) -> SeqState:
    device_id, boot, highest_seq, received, duplicates, missing, gaps, updated_at, collector = row
    return SeqState(
        device_id,
        boot,
        highest_seq,
        received,
        duplicates,
        missing,
        tuple((int(first), int(last)) for first, last in json.loads(gaps)),
        updated_at,
        collector,
    )


def _device(row: Sequence[Any]) -> Device:
    (device_id, device_type, status, fw_version, last_seen, boot, heartbeat_s, changed_at,
     created_at, name, location, metadata) = row[:12]
    quality = row[12] if len(row) > 12 else None  # RETURNING rows carry no score
    return Device(device_id, device_type, status, fw_version, last_seen, boot, heartbeat_s,
                  changed_at, created_at, name, location,
                  json.loads(metadata) if metadata else {},
                  None if quality is None else float(quality))


def _audit(row: Sequence[Any]) -> AuditEntry:
    entry_id, at, actor, role, action, target, result, request_id, detail = row
    return AuditEntry(entry_id, at, actor, role, action, target, result, request_id,
                      None if detail is None else json.loads(detail))


def _alert(row: Sequence[Any]) -> Alert:
    alert = Alert(*row)
    if alert.value is None or isinstance(alert.value, float):
        return alert
    # SQLite's RETURNING hands back a REAL column's integral value as an int.
    return replace(alert, value=float(alert.value))


def _command(row: Sequence[Any]) -> Command:
    (
        command_id,
        device_id,
        name,
        params,
        state,
        created_at,
        updated_at,
        expires_at,
        attempts,
        result,
        detail,
        sent_at,
        created_by,
    ) = row
    return Command(
        command_id,
        device_id,
        name,
        json.loads(params),
        state,
        created_at,
        updated_at,
        expires_at,
        attempts,
        result,
        detail,
        sent_at,
        created_by,
    )


def _campaign(row: Sequence[Any]) -> Campaign:
    campaign = Campaign(*row)
    # SQLite may hand back a REAL column's integral value as an int.
    return replace(campaign, max_failures_pct=float(campaign.max_failures_pct),
                   target_timeout_s=float(campaign.target_timeout_s))


def _device_row(update: DeviceUpdate, now: int) -> dict[str, Any]:
    # A status without a time is as old as the message that carried it.
    status_at = None
    if update.connection_status is not None:
        status_at = update.status_at if update.status_at is not None else update.last_seen
    return {
        "device_id": update.device_id,
        "device_type": update.device_type or UNKNOWN,
        "connection_status": update.connection_status or UNKNOWN,
        "fw_version": update.fw_version,
        "last_seen": update.last_seen,
        "boot": update.boot,
        "heartbeat_s": update.heartbeat_s,
        "status_changed_at": status_at,
        "created_at": now,
    }


def _by_device(update: DeviceUpdate) -> str:
    return update.device_id


def _seq_row(state: SeqState) -> dict[str, Any]:
    return {
        "device_id": state.device_id,
        "boot": state.boot,
        "highest_seq": state.highest_seq,
        "received": state.received,
        "duplicates": state.duplicates,
        "missing": state.missing,
        # Most states have no open gap: json.dumps([]) is "[]", without the encoder's call.
        "gaps": json.dumps([list(gap) for gap in state.gaps]) if state.gaps else "[]",
        "updated_at": state.updated_at,
        "collector": state.collector,
    }


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# --- statements -----------------------------------------------------------------------------

# A status replaces the stored one only if it is not older (a Last Will delivered late must
# not turn a device that came back online offline again). excluded.status_changed_at is NULL
# when the update carries no status, which makes the comparison NULL, i.e. false.
_NEWER_STATUS: Final = (
    "excluded.status_changed_at >= COALESCE(devices.status_changed_at, excluded.status_changed_at)"
)
UPSERT_DEVICE: Final = f"""
    INSERT INTO devices ({", ".join(_COLLECTOR_DEVICE_FIELDS)})
    VALUES (:device_id, :device_type, :connection_status, :fw_version, :last_seen, :boot,
            :heartbeat_s, :status_changed_at, :created_at)
    ON CONFLICT (device_id) DO UPDATE SET
        device_type = CASE WHEN excluded.device_type = '{UNKNOWN}' THEN devices.device_type
                           ELSE excluded.device_type END,
        fw_version = COALESCE(excluded.fw_version, devices.fw_version),
        last_seen = CASE WHEN devices.last_seen IS NULL OR excluded.last_seen > devices.last_seen
                         THEN excluded.last_seen ELSE devices.last_seen END,
        boot = COALESCE(excluded.boot, devices.boot),
        heartbeat_s = COALESCE(excluded.heartbeat_s, devices.heartbeat_s),
        connection_status = CASE WHEN {_NEWER_STATUS}
                                 THEN excluded.connection_status
                                 ELSE devices.connection_status END,
        status_changed_at = CASE WHEN {_NEWER_STATUS}
                                 THEN excluded.status_changed_at
                                 ELSE devices.status_changed_at END"""

UPSERT_SEQ: Final = f"""
    INSERT INTO device_seq_tracking ({SEQ_COLUMNS})
    VALUES (:device_id, :boot, :highest_seq, :received, :duplicates, :missing, :gaps,
            :updated_at, :collector)
    ON CONFLICT (device_id, boot, collector) DO UPDATE SET
        highest_seq = excluded.highest_seq, received = excluded.received,
        duplicates = excluded.duplicates, missing = excluded.missing, gaps = excluded.gaps,
        updated_at = excluded.updated_at"""

# Named once: the registry saves a row per device seen with every batch, and fields() is
# worked out again on each call.
QUALITY_FIELDS: Final = tuple(f.name for f in fields(DeviceQuality))
QUALITY_COLUMNS: Final = ", ".join(QUALITY_FIELDS)
UPSERT_QUALITY: Final = f"""
    INSERT INTO device_quality ({QUALITY_COLUMNS})
    VALUES ({", ".join(":" + f.name for f in fields(DeviceQuality))})
    ON CONFLICT (device_id) DO UPDATE SET
    {", ".join(f"{f.name} = excluded.{f.name}" for f in fields(DeviceQuality)[1:])}"""

UPSERT_CURSOR: Final = """
    INSERT INTO collector_cursors (name, value, updated_at) VALUES (:name, :value, :at)
    ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"""

MARK_SILENT_OFFLINE: Final = """
    UPDATE devices SET connection_status = 'offline', status_changed_at = :now
    WHERE connection_status = 'online' AND heartbeat_s IS NOT NULL
      AND last_seen < :now - :factor * heartbeat_s * 1000
      AND (status_changed_at IS NULL OR status_changed_at <= :now)
    RETURNING device_id"""

UPSERT_CONFIG: Final = """
    INSERT INTO device_configs (device_id, key, value, updated_at)
    VALUES (:device_id, :key, :value, :at)
    ON CONFLICT (device_id, key) DO UPDATE SET
        value = excluded.value, updated_at = excluded.updated_at"""

INSERT_ALERT: Final = f"""
    INSERT INTO device_alerts (device_id, rule, severity, state, value, message, raised_at,
                               updated_at)
    VALUES (:device_id, :rule, :severity, 'active', :value, :message, :at, :at)
    ON CONFLICT (device_id, rule) WHERE state <> 'cleared' DO NOTHING
    RETURNING {ALERT_COLUMNS}"""

REFRESH_ALERT: Final = f"""
    UPDATE device_alerts SET severity = :severity, value = :value, message = :message,
                             updated_at = :at
    WHERE device_id = :device_id AND rule = :rule AND state <> 'cleared'
    RETURNING {ALERT_COLUMNS}"""

UPDATE_COMMAND: Final = f"""
    UPDATE device_commands SET
        state = :state, updated_at = :at,
        result = COALESCE(:result, result), detail = COALESCE(:detail, detail),
        sent_at = COALESCE(:sent_at, sent_at), attempts = attempts + :attempt
    WHERE id = :id AND state NOT IN ({_in(COMMAND_FINAL_STATES)})"""
# A device's acknowledgement may close only its own command: the id alone is not enough, since
# any device can send any command id (they are not secret).
UPDATE_DEVICE_COMMAND: Final = UPDATE_COMMAND + " AND device_id = :device_id"

# A new attempt starts clean: the previous attempt's error and progress do not carry over.
UPDATE_TARGET: Final = f"""
    UPDATE ota_targets SET
        state = :state, updated_at = :at,
        progress_pct = CASE WHEN :attempt = 1 THEN :progress_pct
                            ELSE COALESCE(:progress_pct, progress_pct) END,
        error = CASE WHEN :attempt = 1 THEN :error ELSE COALESCE(:error, error) END,
        started_at = COALESCE(:started_at, started_at), attempts = attempts + :attempt
    WHERE campaign_id = :campaign_id AND device_id = :device_id
      AND state NOT IN ({_in(TARGET_FINAL_STATES)})"""

# LIMIT takes a number in both dialects; "no limit" is spelled as a very large one.
_NO_LIMIT: Final = 2**62
_ALERT_RACE_ATTEMPTS: Final = 5
_IN_CHUNK: Final = 500  # ids per IN (...) list, well under both drivers' parameter limits


def _in_chunks(ids: Iterable[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """The distinct ids as `IN (...)` lists of at most _IN_CHUNK named parameters, each with
    its parameters: one statement a chunk."""
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), _IN_CHUNK):
        names = {f"i{n}": value for n, value in enumerate(unique[start : start + _IN_CHUNK])}
        yield ", ".join(f":{name}" for name in names), names


# --- the store ------------------------------------------------------------------------------


class SqlMetadataStore:
    """MetadataStore over any SqlBackend. Thread-safe as far as the backend's transactions are
    (both adapters hand each transaction its own connection)."""

    def __init__(
        self,
        backend: SqlBackend,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        _check_migrations(migrations)
        self._backend = backend
        self._migrations = tuple(migrations)
        self._clock = clock
        self._migrated = False
        self._migrate_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._backend.name

    # -- schema

    def migrate(self) -> list[int]:
        with self._migrate_lock:
            return self._migrate()

    def _migrate(self) -> list[int]:
        done: list[int] = []
        while (applied := self._apply_next()) is not None:
            done.append(applied)
        self._migrated = True
        return done

    def _apply_next(self) -> int | None:
        """Apply the lowest pending migration in its own transaction, under the migration
        lock; None when there is none. A failed step leaves the earlier ones in place."""
        step: Migration | None = None
        try:
            with self._backend.transaction(write=True) as cursor:
                tx = _Tx(cursor, self._backend.placeholders)
                self._backend.lock_migrations(cursor)
                # Even CREATE TABLE IF NOT EXISTS needs the CREATE right on PostgreSQL: a
                # least-privilege runtime role (docs/security.md) only reads the table.
                if not self._backend.has_table(cursor, "schema_migrations"):
                    tx.run(MIGRATIONS_TABLE)
                applied = {row[0] for row in tx.all("SELECT version FROM schema_migrations")}
                self._refuse_newer_schema(applied)
                step = next((m for m in self._migrations if m.version not in applied), None)
                if step is not None:
                    self._apply(tx, step)
        except StoreRejected as exc:
            if step is None:
                raise
            reason = str(exc).removeprefix(f"{exc.store}: ")
            raise StoreRejected(
                self.name, f"migration {step.version} ({step.description}) failed: {reason}"
            ) from exc
        return None if step is None else step.version

    def _refuse_newer_schema(self, applied: set[int]) -> None:
        newest = max(applied, default=0)
        known = self._migrations[-1].version if self._migrations else 0
        if newest > known:
            raise StoreRejected(
                self.name,
                f"the database schema is at version {newest}, newer than this iotmeter "
                f"knows ({known}); upgrade iotmeter",
            )

    def _apply(self, tx: _Tx, migration: Migration) -> None:
        for statement in migration.statements:
            tx.run(statement.format_map(self._backend.ddl_types))
        tx.run(
            "INSERT INTO schema_migrations (version, description, applied_at)"
            " VALUES (:version, :description, :at)",
            {
                "version": migration.version,
                "description": migration.description,
                "at": self._clock(),
            },
        )

    def schema_version(self) -> int:
        with self._tx() as tx:
            return int(tx.one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0])

    @contextmanager
    def _tx(self, *, write: bool = False) -> Iterator[_Tx]:
        if not self._migrated:
            # First use: the schema is prepared here, so opening a store never needs the DB.
            with self._migrate_lock:
                if not self._migrated:
                    self._migrate()
        with self._backend.transaction(write=write) as cursor:
            yield _Tx(cursor, self._backend.placeholders)

    # -- collector side

    def apply_collector_batch(
        self,
        devices: Sequence[DeviceUpdate],
        seq_states: Sequence[SeqState],
        cursor: tuple[str, str] | None = None,
    ) -> None:
        now = self._clock()
        # Rows are locked in device order, so two collectors sharing the load cannot deadlock
        # on each other's batches; the sort is stable, so several updates of one device still
        # apply in the order given. One executemany per statement kind.
        device_rows = [_device_row(u, now) for u in sorted(devices, key=_by_device)]
        seq_rows = [_seq_row(s) for s in sorted(
            seq_states, key=lambda s: (s.device_id, s.boot, s.collector))]
        with self._tx(write=True) as tx:
            tx.many(UPSERT_DEVICE, device_rows)
            tx.many(UPSERT_SEQ, seq_rows)
            if cursor is not None:
                tx.run(UPSERT_CURSOR, {"name": cursor[0], "value": cursor[1], "at": now})

    def get_cursor(self, name: str) -> str | None:
        with self._tx() as tx:
            row = tx.one("SELECT value FROM collector_cursors WHERE name = :name", {"name": name})
        return None if row is None else str(row[0])

    def load_seq_states(self, device_ids: Iterable[str] | None = None, *,
                        collector: str | None = None) -> list[SeqState]:
        select = f"SELECT {SEQ_COLUMNS} FROM device_seq_tracking WHERE "
        mine = {} if collector is None else {"collector": collector}
        select += "collector = :collector" if mine else "1 = 1"
        with self._tx() as tx:
            if device_ids is None:
                rows = tx.all(select, mine)
            else:
                rows = []
                for in_list, names in _in_chunks(device_ids):
                    rows += tx.all(f"{select} AND device_id IN ({in_list})", {**names, **mine})
        states = sorted((_seq_state(row) for row in rows),
                        key=lambda s: (s.device_id, s.boot, s.collector))
        return states if collector is not None else merge_seq_states(states)

    def save_quality(self, scores: Sequence[DeviceQuality]) -> None:
        rows = [{name: getattr(q, name) for name in QUALITY_FIELDS}
                for q in sorted(scores, key=lambda q: q.device_id)]
        if rows:
            with self._tx(write=True) as tx:
                tx.many(UPSERT_QUALITY, rows)

    def device_quality(self, device_ids: Iterable[str] | None = None
                       ) -> dict[str, DeviceQuality]:
        select = f"SELECT {QUALITY_COLUMNS} FROM device_quality"
        with self._tx() as tx:
            if device_ids is None:
                rows = tx.all(select)
            else:
                rows = []
                for in_list, names in _in_chunks(device_ids):
                    rows += tx.all(f"{select} WHERE device_id IN ({in_list})", names)
        return {str(row[0]): DeviceQuality(str(row[0]), float(row[1]), float(row[2]),
                                           float(row[3]), float(row[4]), float(row[5]),
                                           float(row[6]), int(row[7]), int(row[8]),
                                           int(row[9])) for row in rows}

    def device_types(self) -> dict[str, str]:
        with self._tx() as tx:
            return dict(tx.all("SELECT device_id, device_type FROM devices"))

    def mark_silent_offline(self, now_ms: int, factor: float = 3.0) -> list[str]:
        with self._tx(write=True) as tx:
            rows = tx.all(MARK_SILENT_OFFLINE, {"now": now_ms, "factor": float(factor)})
        return sorted(row[0] for row in rows)

    # -- registry / dashboard

    def get_device(self, device_id: str) -> Device | None:
        with self._tx() as tx:
            row = tx.one(
                f"SELECT {DEVICE_COLUMNS}, quality FROM {DEVICE_SELECT} WHERE device_id = :id",
                {"id": device_id},
            )
        return None if row is None else _device(row)

    def list_devices(
        self,
        *,
        search: str | None = None,
        status: str | None = None,
        device_type: str | None = None,
        order_by: str = "device_id",
        descending: bool = False,
        offset: int = 0,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[Device]:
        where, params = _device_filter(search, status, device_type)
        order = _device_order(order_by, descending)
        if after is not None:
            value, last_id = decode_device_cursor(after, order_by, descending)
            where += (" AND " if where else " WHERE ") + _after_clause(order_by, descending, value)
            params |= {"after_value": value, "after_id": last_id}
        params |= {"limit": _NO_LIMIT if limit is None else limit, "offset": offset}
        with self._tx() as tx:
            rows = tx.all(
                f"SELECT {DEVICE_COLUMNS}, quality FROM {DEVICE_SELECT}{where} ORDER BY {order}"
                " LIMIT :limit OFFSET :offset",
                params,
            )
        return [_device(row) for row in rows]

    def create_device(
        self,
        device_id: str,
        device_type: str = UNKNOWN,
        *,
        name: str | None = None,
        location: str | None = None,
        metadata: dict[str, Any] | None = None,
        at: int | None = None,
    ) -> Device:
        row = {
            "device_id": device_id,
            "device_type": device_type,
            "name": name,
            "location": location,
            "metadata": _json(self.name, "metadata", metadata or {}),
            "at": self._clock() if at is None else at,
        }
        with self._tx(write=True) as tx:
            created = tx.one(
                "INSERT INTO devices (device_id, device_type, connection_status, name, location,"
                " metadata, created_at) VALUES (:device_id, :device_type, 'unknown', :name,"
                f" :location, :metadata, :at) ON CONFLICT (device_id) DO NOTHING"
                f" RETURNING {DEVICE_COLUMNS}",
                row,
            )
        if created is None:
            raise AlreadyExists(self.name, f"device {device_id!r} is already registered")
        return _device(created)

    def update_device_info(
        self,
        device_id: str,
        *,
        name: str | Unset | None = UNSET,
        location: str | Unset | None = UNSET,
        metadata: dict[str, Any] | Unset = UNSET,
    ) -> Device | None:
        changes: dict[str, Any] = {}
        if not isinstance(name, Unset):
            changes["name"] = name
        if not isinstance(location, Unset):
            changes["location"] = location
        if not isinstance(metadata, Unset):
            changes["metadata"] = _json(self.name, "metadata", metadata)
        if not changes:
            return self.get_device(device_id)
        assignments = ", ".join(f"{column} = :{column}" for column in changes)
        with self._tx(write=True) as tx:
            row = tx.one(
                f"UPDATE devices SET {assignments} WHERE device_id = :id"
                f" RETURNING {DEVICE_COLUMNS}",
                changes | {"id": device_id},
            )
        return None if row is None else _device(row)

    def delete_device(self, device_id: str, *, at: int | None = None) -> DeviceDeletion | None:
        now = self._clock() if at is None else at
        params = {"id": device_id, "at": now, "detail": "device deleted"}
        with self._tx(write=True) as tx:
            if tx.run("DELETE FROM devices WHERE device_id = :id", params) == 0:
                return None
            configs = tx.run("DELETE FROM device_configs WHERE device_id = :id", params)
            seq_rows = tx.run("DELETE FROM device_seq_tracking WHERE device_id = :id", params)
            tx.run("DELETE FROM device_quality WHERE device_id = :id", params)
            # Kept as history, but closed: nobody will answer them, and an open command or
            # target would otherwise wait for a device that is no longer in the registry.
            commands = tx.run(
                "UPDATE device_commands SET state = 'failed', updated_at = :at,"
                " detail = :detail"
                f" WHERE device_id = :id AND state IN ({_in(COMMAND_OPEN_STATES)})",
                params,
            )
            targets = tx.run(
                "UPDATE ota_targets SET state = 'skipped', updated_at = :at, error = :detail"
                f" WHERE device_id = :id AND state NOT IN ({_in(TARGET_FINAL_STATES)})",
                params,
            )
            alerts = tx.run(
                "UPDATE device_alerts SET state = 'cleared', cleared_at = :at, updated_at = :at"
                " WHERE device_id = :id AND state <> 'cleared'",
                params,
            )
        return DeviceDeletion(device_id, configs, seq_rows, commands, targets, alerts)

    def count_devices_by_status_and_type(self) -> dict[tuple[str, str], int]:
        with self._tx() as tx:
            rows = tx.all(
                "SELECT connection_status, device_type, COUNT(*) FROM devices"
                " GROUP BY connection_status, device_type"
            )
        return {(status, kind): int(n) for status, kind, n in rows}

    def count_open_alerts_by_severity(self) -> dict[str, int]:
        with self._tx() as tx:
            rows = tx.all(
                "SELECT severity, COUNT(*) FROM device_alerts WHERE state <> 'cleared'"
                " GROUP BY severity"
            )
        return {severity: int(n) for severity, n in rows}

    def open_alert_counts(self, device_ids: Iterable[str] | None = None) -> dict[str, int]:
        # The partial unique index on open alerts (device_id, rule) answers this alone.
        select = "SELECT device_id, COUNT(*) FROM device_alerts WHERE state <> 'cleared'"
        group = " GROUP BY device_id"
        with self._tx() as tx:
            if device_ids is None:
                rows = tx.all(select + group)
            else:
                rows = []
                for in_list, names in _in_chunks(device_ids):
                    rows += tx.all(f"{select} AND device_id IN ({in_list}){group}", names)
        return {str(device_id): int(n) for device_id, n in rows}

    def count_devices(
        self,
        *,
        search: str | None = None,
        status: str | None = None,
        device_type: str | None = None,
    ) -> int:
        where, params = _device_filter(search, status, device_type)
        with self._tx() as tx:
            return int(tx.one(f"SELECT COUNT(*) FROM devices{where}", params)[0])

    def device_counts_by_status(self) -> dict[str, int]:
        with self._tx() as tx:
            rows = tx.all(
                "SELECT connection_status, COUNT(*) FROM devices GROUP BY connection_status"
            )
        return {status: 0 for status in CONNECTION_STATUSES} | {s: int(n) for s, n in rows}

    def fleet_figures(self) -> FleetFigures:
        with self._tx() as tx:
            def grouped(sql: str) -> dict[str, int]:
                return {str(key): int(n) for key, n in tx.all(sql)}

            return FleetFigures(
                devices={status: 0 for status in CONNECTION_STATUSES} | grouped(
                    "SELECT connection_status, COUNT(*) FROM devices GROUP BY connection_status"),
                open_alerts=grouped(
                    "SELECT severity, COUNT(*) FROM device_alerts WHERE state <> 'cleared'"
                    " GROUP BY severity"),
                commands={state: 0 for state in COMMAND_STATES} | grouped(
                    "SELECT state, COUNT(*) FROM device_commands GROUP BY state"),
                ota_targets=grouped("SELECT state, COUNT(*) FROM ota_targets GROUP BY state"),
                campaigns=grouped("SELECT state, COUNT(*) FROM ota_campaigns GROUP BY state"),
            )

    def get_config(self, device_id: str) -> dict[str, Any]:
        with self._tx() as tx:
            rows = tx.all(
                "SELECT key, value FROM device_configs WHERE device_id = :id ORDER BY key",
                {"id": device_id},
            )
        return {key: json.loads(value) for key, value in rows}

    def get_configs(self) -> dict[str, dict[str, Any]]:
        with self._tx() as tx:
            rows = tx.all(
                "SELECT device_id, key, value FROM device_configs ORDER BY device_id, key")
        configs: dict[str, dict[str, Any]] = {}
        for device_id, key, value in rows:
            configs.setdefault(device_id, {})[key] = json.loads(value)
        return configs

    def set_config(self, device_id: str, key: str, value: Any) -> None:
        try:
            encoded = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StoreRejected(self.name, f"config {key!r} is not JSON: {exc}") from None
        with self._tx(write=True) as tx:
            tx.run(
                UPSERT_CONFIG,
                {"device_id": device_id, "key": key, "value": encoded, "at": self._clock()},
            )

    def replace_config(self, device_id: str, values: dict[str, Any]) -> None:
        at = self._clock()
        rows = [{"device_id": device_id, "key": key, "value": _json(self.name, f"config {key!r}",
                                                                    value), "at": at}
                for key, value in values.items()]
        with self._tx(write=True) as tx:
            tx.run("DELETE FROM device_configs WHERE device_id = :id", {"id": device_id})
            tx.many(UPSERT_CONFIG, rows)

    # -- alerts

    def raise_alert(
        self,
        device_id: str,
        rule: str,
        severity: str,
        value: float | None,
        message: str,
        at: int,
    ) -> tuple[Alert, bool]:
        params = {
            "device_id": device_id,
            "rule": rule,
            "severity": severity,
            "value": value,
            "message": message,
            "at": at,
        }
        with self._tx(write=True) as tx:
            # Insert-or-refresh in two steps because neither dialect's upsert says whether
            # it inserted. Retried when another writer clears the open alert in between.
            for _ in range(_ALERT_RACE_ATTEMPTS):
                row = tx.one(INSERT_ALERT, params)
                if row is not None:
                    return _alert(row), True
                row = tx.one(REFRESH_ALERT, params)
                if row is not None:
                    return _alert(row), False
        raise StoreUnavailable(self.name, f"alert {rule!r} of {device_id!r} kept changing")

    def clear_alert(self, alert_id: int, at: int) -> bool:
        with self._tx(write=True) as tx:
            return (
                tx.run(
                    "UPDATE device_alerts SET state = 'cleared', cleared_at = :at, updated_at = :at"
                    " WHERE id = :id AND state <> 'cleared'",
                    {"id": alert_id, "at": at},
                )
                > 0
            )

    def acknowledge_alert(self, alert_id: int, at: int) -> bool:
        with self._tx(write=True) as tx:
            return (
                tx.run(
                    "UPDATE device_alerts SET state = 'acknowledged', acknowledged_at = :at,"
                    " updated_at = :at WHERE id = :id AND state = 'active'",
                    {"id": alert_id, "at": at},
                )
                > 0
            )

    def clear_alerts_for(self, device_id: str, rule: str, at: int) -> list[int]:
        with self._tx(write=True) as tx:
            rows = tx.all(
                "UPDATE device_alerts SET state = 'cleared', cleared_at = :at, updated_at = :at"
                " WHERE device_id = :device_id AND rule = :rule AND state <> 'cleared'"
                " RETURNING id",
                {"device_id": device_id, "rule": rule, "at": at},
            )
        return sorted(int(row[0]) for row in rows)

    def open_alerts(self, device_id: str | None = None) -> list[Alert]:
        where = "state <> 'cleared'"
        params: dict[str, Any] = {}
        if device_id is not None:
            where += " AND device_id = :device_id"
            params["device_id"] = device_id
        with self._tx() as tx:
            rows = tx.all(
                f"SELECT {ALERT_COLUMNS} FROM device_alerts WHERE {where} ORDER BY raised_at, id",
                params,
            )
        return [_alert(row) for row in rows]

    def list_alerts(
        self, *, state: str | None = None, device_id: str | None = None, limit: int = 500
    ) -> list[Alert]:
        where, params = _equal_filter(state=state, device_id=device_id)
        with self._tx() as tx:
            rows = tx.all(
                f"SELECT {ALERT_COLUMNS} FROM device_alerts{where}"
                " ORDER BY raised_at DESC, id DESC LIMIT :limit",
                params | {"limit": limit},
            )
        return [_alert(row) for row in rows]

    # -- commands

    def create_command(self, cmd: Command) -> None:
        row = {f.name: getattr(cmd, f.name) for f in fields(Command)}
        row["params"] = json.dumps(cmd.params)
        values = ", ".join(f":{name}" for name in row)
        with self._tx(write=True) as tx:
            tx.run(f"INSERT INTO device_commands ({COMMAND_COLUMNS}) VALUES ({values})", row)

    def get_command(self, command_id: str) -> Command | None:
        with self._tx() as tx:
            row = tx.one(
                f"SELECT {COMMAND_COLUMNS} FROM device_commands WHERE id = :id", {"id": command_id}
            )
        return None if row is None else _command(row)

    def list_commands(
        self, *, device_id: str | None = None, state: str | None = None, limit: int = 500
    ) -> list[Command]:
        where, params = _equal_filter(device_id=device_id, state=state)
        with self._tx() as tx:
            rows = tx.all(
                f"SELECT {COMMAND_COLUMNS} FROM device_commands{where}"
                " ORDER BY created_at DESC, id DESC LIMIT :limit",
                params | {"limit": limit},
            )
        return [_command(row) for row in rows]

    def update_command(
        self,
        command_id: str,
        *,
        state: str,
        at: int,
        result: str | None = None,
        detail: str | None = None,
        sent: bool = False,
        device_id: str | None = None,
    ) -> bool:
        params: dict[str, Any] = {
            "id": command_id,
            "state": state,
            "at": at,
            "result": result,
            "detail": detail,
            "sent_at": at if sent else None,
            "attempt": int(sent),
        }
        sql = UPDATE_COMMAND
        if device_id is not None:
            sql, params["device_id"] = UPDATE_DEVICE_COMMAND, device_id
        with self._tx(write=True) as tx:
            return tx.run(sql, params) > 0

    def pending_commands(self, device_id: str | None = None) -> list[Command]:
        where = f"state IN ({_in(COMMAND_OPEN_STATES)})"
        params: dict[str, Any] = {}
        if device_id is not None:
            where += " AND device_id = :device_id"
            params["device_id"] = device_id
        with self._tx() as tx:
            rows = tx.all(
                f"SELECT {COMMAND_COLUMNS} FROM device_commands WHERE {where}"
                " ORDER BY created_at, id",
                params,
            )
        return [_command(row) for row in rows]

    # -- API keys

    def add_api_key(self, key: ApiKey) -> None:
        row = {f.name: getattr(key, f.name) for f in fields(ApiKey)}
        values = ", ".join(f":{name}" for name in row)
        with self._tx(write=True) as tx:
            added = tx.run(
                f"INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES ({values})"
                " ON CONFLICT DO NOTHING",
                row,
            )
        if added == 0:
            raise AlreadyExists(self.name, f"an API key named {key.name!r} exists already")

    def get_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        with self._tx() as tx:
            row = tx.one(
                f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = :h", {"h": key_hash}
            )
        return None if row is None else ApiKey(*row)

    def get_api_key(self, name: str) -> ApiKey | None:
        with self._tx() as tx:
            row = tx.one(f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE name = :n", {"n": name})
        return None if row is None else ApiKey(*row)

    def list_api_keys(self) -> list[ApiKey]:
        with self._tx() as tx:
            rows = tx.all(f"SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY name")
        return [ApiKey(*row) for row in rows]

    def revoke_api_key(self, name: str, *, at: int | None = None) -> bool:
        with self._tx(write=True) as tx:
            return (
                tx.run(
                    "UPDATE api_keys SET revoked_at = :at WHERE name = :n AND revoked_at IS NULL",
                    {"n": name, "at": self._clock() if at is None else at},
                )
                > 0
            )

    def touch_api_key(self, name: str, *, at: int | None = None) -> None:
        with self._tx(write=True) as tx:
            tx.run(
                "UPDATE api_keys SET last_used_at = :at WHERE name = :n"
                " AND (last_used_at IS NULL OR last_used_at < :at)",
                {"n": name, "at": self._clock() if at is None else at},
            )

    # -- audit log

    def add_audit(self, entry: AuditEntry) -> AuditEntry:
        row = {f.name: getattr(entry, f.name) for f in fields(AuditEntry) if f.name != "id"}
        row["detail"] = None if entry.detail is None else _json(self.name, "detail",
                                                                entry.detail)
        columns = ", ".join(row)
        values = ", ".join(f":{name}" for name in row)
        with self._tx(write=True) as tx:
            new_id = tx.one(
                f"INSERT INTO audit_log ({columns}) VALUES ({values}) RETURNING id", row
            )[0]
        return replace(entry, id=int(new_id))

    def list_audit(
        self,
        *,
        limit: int = 100,
        before_id: int | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: int | None = None,
    ) -> list[AuditEntry]:
        where, params = _equal_filter(actor=actor, action=action)
        for clause, name, value in (("id < :before_id", "before_id", before_id),
                                    ("at >= :since", "since", since)):
            if value is not None:
                where += (" AND " if where else " WHERE ") + clause
                params[name] = value
        with self._tx() as tx:
            rows = tx.all(
                f"SELECT {AUDIT_COLUMNS} FROM audit_log{where} ORDER BY id DESC LIMIT :limit",
                params | {"limit": limit},
            )
        return [_audit(row) for row in rows]

    # -- OTA

    def add_firmware(self, fw: Firmware) -> None:
        with self._tx(write=True) as tx:
            tx.run(
                f"INSERT INTO ota_firmware ({FIRMWARE_COLUMNS})"
                " VALUES (:version, :size, :sha256, :key, :uploaded_at, :signature)",
                {f.name: getattr(fw, f.name) for f in fields(Firmware)},
            )

    def get_firmware(self, version: str) -> Firmware | None:
        with self._tx() as tx:
            row = tx.one(
                f"SELECT {FIRMWARE_COLUMNS} FROM ota_firmware WHERE version = :v", {"v": version}
            )
        return None if row is None else Firmware(*row)

    def list_firmware(self) -> list[Firmware]:
        with self._tx() as tx:
            rows = tx.all(
                f"SELECT {FIRMWARE_COLUMNS} FROM ota_firmware"
                " ORDER BY uploaded_at DESC, version DESC"
            )
        return [Firmware(*row) for row in rows]

    def create_campaign(self, c: Campaign, device_ids: Sequence[str]) -> None:
        targets = [
            {"campaign_id": c.id, "device_id": device_id, "at": c.created_at}
            for device_id in dict.fromkeys(device_ids)
        ]
        with self._tx(write=True) as tx:
            tx.run(
                f"INSERT INTO ota_campaigns ({CAMPAIGN_COLUMNS}) VALUES (:id, :fw_version,"
                " :selector, :batch_size, :max_failures_pct, :state, :created_at,"
                " :updated_at, :detail, :target_timeout_s, :created_by)",
                {f.name: getattr(c, f.name) for f in fields(Campaign)},
            )
            tx.many(
                "INSERT INTO ota_targets (campaign_id, device_id, state, attempts, updated_at)"
                " VALUES (:campaign_id, :device_id, 'pending', 0, :at)",
                targets,
            )

    def get_campaign(self, campaign_id: str) -> Campaign | None:
        with self._tx() as tx:
            row = tx.one(
                f"SELECT {CAMPAIGN_COLUMNS} FROM ota_campaigns WHERE id = :id", {"id": campaign_id}
            )
        return None if row is None else _campaign(row)

    def list_campaigns(self, limit: int = 100, *, state: str | None = None) -> list[Campaign]:
        where, params = _equal_filter(state=state)
        with self._tx() as tx:
            rows = tx.all(
                f"SELECT {CAMPAIGN_COLUMNS} FROM ota_campaigns{where}"
                " ORDER BY created_at DESC, id DESC LIMIT :limit",
                params | {"limit": limit},
            )
        return [_campaign(row) for row in rows]

    def update_campaign(
        self, campaign_id: str, *, state: str, at: int, detail: str | None = None
    ) -> bool:
        with self._tx(write=True) as tx:
            return (
                tx.run(
                    "UPDATE ota_campaigns SET state = :state, updated_at = :at,"
                    " detail = COALESCE(:detail, detail) WHERE id = :id",
                    {"id": campaign_id, "state": state, "at": at, "detail": detail},
                )
                > 0
            )

    def list_targets(self, campaign_id: str) -> list[OtaTarget]:
        with self._tx() as tx:
            rows = tx.all(
                f"SELECT {TARGET_COLUMNS} FROM ota_targets"
                " WHERE campaign_id = :id ORDER BY device_id",
                {"id": campaign_id},
            )
        return [OtaTarget(*row) for row in rows]

    def ota_target_counts(self, campaign_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        with self._tx() as tx:
            for in_list, names in _in_chunks(campaign_ids):
                for campaign_id, state, n in tx.all(
                        "SELECT campaign_id, state, COUNT(*) FROM ota_targets"
                        f" WHERE campaign_id IN ({in_list}) GROUP BY campaign_id, state", names):
                    counts.setdefault(str(campaign_id), {})[str(state)] = int(n)
        return counts

    def update_target(
        self,
        campaign_id: str,
        device_id: str,
        *,
        state: str,
        at: int,
        progress_pct: float | None = None,
        error: str | None = None,
        started: bool = False,
    ) -> bool:
        params = {
            "campaign_id": campaign_id,
            "device_id": device_id,
            "state": state,
            "at": at,
            "progress_pct": progress_pct,
            "error": error,
            "started_at": at if started else None,
            "attempt": int(started),
        }
        with self._tx(write=True) as tx:
            return tx.run(UPDATE_TARGET, params) > 0

    # -- lifecycle

    def check(self) -> None:
        with self._tx() as tx:
            tx.one("SELECT 1")

    def close(self) -> None:
        self._backend.close()


# --- query builders -------------------------------------------------------------------------


def _equal_filter(**columns: str | None) -> tuple[str, dict[str, Any]]:
    """WHERE clause for the given column = value pairs, leaving out the unset ones (a
    `:p IS NULL OR` form would leave PostgreSQL unable to type a NULL parameter)."""
    params = {column: value for column, value in columns.items() if value is not None}
    if not params:
        return "", {}
    return " WHERE " + " AND ".join(f"{column} = :{column}" for column in params), params


def _device_filter(
    search: str | None, status: str | None, device_type: str | None
) -> tuple[str, dict[str, Any]]:
    where, params = _equal_filter(connection_status=status, device_type=device_type)
    if search:
        clause = " OR ".join(
            f"LOWER({column}) LIKE :pattern ESCAPE '\\'"
            for column in ("device_id", "device_type", "fw_version", "name", "location")
        )
        where += (" AND " if where else " WHERE ") + f"({clause})"
        params["pattern"] = _like(search)
    return where, params


_NOT_NULL_DEVICE_COLUMNS: Final = frozenset(
    {"device_id", "device_type", "connection_status", "created_at"}
)


def _after_clause(order_by: str, descending: bool, value: Any) -> str:
    """Keyset condition for "after (value, device_id)" in the order _device_order writes:
    NULLs last, device_id breaking ties."""
    cmp = "<" if descending else ">"
    if order_by == "device_id":
        return f"device_id {cmp} :after_id"
    if value is None:
        return f"({order_by} IS NULL AND device_id {cmp} :after_id)"
    nulls = "" if order_by in _NOT_NULL_DEVICE_COLUMNS else f" OR {order_by} IS NULL"
    return (f"({order_by} {cmp} :after_value"
            f" OR ({order_by} = :after_value AND device_id {cmp} :after_id){nulls})")


def _json(store: str, what: str, value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreRejected(store, f"{what} is not JSON: {exc}") from None


def _device_order(order_by: str, descending: bool) -> str:
    if order_by not in DEVICE_ORDER_COLUMNS:
        raise ValueError(
            f"cannot order devices by {order_by!r}; use one of {', '.join(DEVICE_ORDER_COLUMNS)}"
        )
    direction = "DESC" if descending else "ASC"
    # The dialects disagree on where NULLs sort, so say it; skipped on NOT NULL columns so
    # PostgreSQL can still walk an index backwards. device_id breaks ties for stable pages.
    nulls = "" if order_by in _NOT_NULL_DEVICE_COLUMNS else " NULLS LAST"
    order = f"{order_by} {direction}{nulls}"
    if order_by != "device_id":
        order += f", device_id {direction}"
    return order
