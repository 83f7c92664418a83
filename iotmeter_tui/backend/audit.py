"""The audit log: who changed what, from the CLI or the API, and how it ended.

Every changing CLI verb and API request records one entry. Recording is not best-effort: the
entry is written to the same metadata store as the change, so when the store is down the
change has failed too, and a write error surfaces to the caller instead of being swallowed
(an unaudited change would be worse than a refused one)."""

from __future__ import annotations

import contextlib
import getpass
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from iotmeter_tui.backend.errors import (
    AlreadyExists,
    InvalidRequest,
    IotmeterError,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from iotmeter_tui.backend.stores.metadata import AuditEntry, MetadataStore

CLI_ROLE: Final = "cli"
# Results an entry may carry; free-form results would make the log hard to filter.
RESULTS: Final = ("ok", "denied", "failed", "not_found", "invalid", "conflict")
MAX_FIELD_CHARS: Final = 256
MAX_LIST: Final = 1000


def cli_actor() -> str:
    """Who runs this CLI: the OS user (the API uses its key's name instead)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return "unknown"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a change: a name (OS user or API key name), a role (`cli` or the key's
    role) and, for the API, the request's id."""

    name: str
    role: str
    request_id: str | None = None

    @classmethod
    def cli(cls) -> Actor:
        return cls(cli_actor(), CLI_ROLE)


@dataclass(slots=True)
class AuditNote:
    """What an audited block may add to its entry: detail, or a result other than `ok`."""

    detail: dict[str, Any] = field(default_factory=dict)
    result: str = "ok"


def result_of(exc: BaseException) -> str:
    """The audit result an exception stands for."""
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, AlreadyExists):
        return "conflict"
    if isinstance(exc, InvalidRequest | ValueError):
        return "invalid"
    return "failed"


def _clip(text: str | None) -> str | None:
    return None if text is None else str(text)[:MAX_FIELD_CHARS]


class AuditLog:
    def __init__(self, metadata: MetadataStore, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.metadata = metadata
        self._clock = clock

    def record(self, actor: str, role: str, action: str, target: str | None, result: str,
               *, request_id: str | None = None,
               detail: dict[str, Any] | None = None) -> AuditEntry:
        """Write one entry and return it with its id. `action` is a dotted verb such as
        `device.create`; `result` one of RESULTS (ValueError otherwise: a programming
        error). Raises StoreError when the store cannot take it."""
        if result not in RESULTS:
            raise ValueError(f"audit result {result!r} is not one of {', '.join(RESULTS)}")
        entry = AuditEntry(0, int(self._clock() * 1000), _clip(actor) or "unknown",
                           _clip(role) or "unknown", _clip(action) or "unknown",
                           _clip(target), result, _clip(request_id), detail)
        return self.metadata.add_audit(entry)

    def list(self, *, limit: int = 100, before_id: int | None = None,
             actor: str | None = None, action: str | None = None,
             since: int | None = None) -> list[AuditEntry]:
        """Newest first; `before_id` pages back, `since` (ms) keeps newer entries only.
        InvalidRequest for a limit outside 1..MAX_LIST."""
        if not 1 <= limit <= MAX_LIST:
            raise InvalidRequest(f"limit {limit} is not between 1 and {MAX_LIST}")
        return self.metadata.list_audit(limit=limit, before_id=before_id, actor=actor,
                                        action=action, since=since)

    def _store_down(self, exc: BaseException) -> bool:
        """The change failed because this very store is unreachable: writing its entry would
        only wait out the same timeout again."""
        return isinstance(exc, StoreUnavailable) and exc.store == getattr(
            self.metadata, "name", None)

    @contextlib.contextmanager
    def audited(self, actor: Actor | None, action: str, target: str | None,
                detail: dict[str, Any] | None = None) -> Iterator[AuditNote]:
        """Run a change and record how it ended: `ok` (or what the block set on the note),
        else the result its exception stands for, with the error's first line in detail.
        No actor: nothing is recorded (internal callers, tests). A failed change whose entry
        cannot be written either (the store is down) raises the change's own error."""
        note = AuditNote(dict(detail or {}))
        try:
            yield note
        except BaseException as exc:
            if actor is not None and isinstance(exc, IotmeterError | ValueError) and \
                    not self._store_down(exc):
                note.detail["error"] = (str(exc).splitlines() or [type(exc).__name__])[0]
                with contextlib.suppress(StoreError):
                    self.record(actor.name, actor.role, action, target, result_of(exc),
                                request_id=actor.request_id, detail=note.detail or None)
            raise
        if actor is not None:
            self.record(actor.name, actor.role, action, target, note.result,
                        request_id=actor.request_id, detail=note.detail or None)
