"""What a simulated meter keeps across restarts: its boot counter, firmware version, supply
system and energy registers. One JSON file per simulator (per device-id prefix) under
$IOTMETER_HOME/simulator/, keyed by device id, replaced atomically.

A boot number must reach the disk before any message carries it: reusing (boot, seq) after a
crash would make the collector drop new messages as duplicates. A lock file keeps two
simulators with the same prefix (the same device ids) from running at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from iotmeter_tui.backend.errors import IotmeterError

FORMAT_VERSION: Final = 1
# Many devices changing state at once (a fleet reboot, an OTA wave) share one write.
COALESCE_S: Final = 0.05
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]*")


class SimulatorStateError(IotmeterError):
    """The state file is unreadable or locked by another simulator."""


@dataclass(slots=True)
class DeviceRecord:
    boot: int
    fw_version: str
    supply_system: str
    energy_import_kwh: float
    energy_export_kwh: float
    commands: list[dict[str, Any]] = field(default_factory=list)  # last acks, newest last


def state_path(home: Path, prefix: str) -> Path:
    if not _PREFIX_RE.fullmatch(prefix):
        raise SimulatorStateError(f"prefix {prefix!r} may only hold letters, digits, _ and -")
    name = f"state-{prefix}.json" if prefix else "state.json"
    return Path(home) / "simulator" / name


class DeviceStateStore:
    """The records of one simulator's devices; `persist()` writes them durably."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, DeviceRecord] = {}
        self._lock_fd: int | None = None
        self._pending: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Take the lock and load the file (missing: no devices yet)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SimulatorStateError(
                f"another simulator uses {self.path} (lock {lock_path}); "
                "give this one a different --prefix"
            ) from None
        self._lock_fd = fd
        try:
            self.records = self._load()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _load(self) -> dict[str, DeviceRecord]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SimulatorStateError(f"cannot read {self.path}: {exc}") from None
        try:
            obj = json.loads(text)
            if obj.get("format") != FORMAT_VERSION:
                raise ValueError(f"format {obj.get('format')!r}, expected {FORMAT_VERSION}")
            return {
                device_id: DeviceRecord(
                    boot=int(r["boot"]),
                    fw_version=str(r["fw_version"]),
                    supply_system=str(r["supply_system"]),
                    energy_import_kwh=float(r["energy_import_kwh"]),
                    energy_export_kwh=float(r["energy_export_kwh"]),
                    commands=[_ack(a) for a in r.get("commands", [])],
                )
                for device_id, r in obj["devices"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Starting afresh would reuse boot numbers; the operator decides.
            raise SimulatorStateError(
                f"{self.path} is damaged ({exc}); move it away to start the devices afresh"
            ) from None

    # --- writing -------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        doc: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "devices": {device_id: asdict(r) for device_id, r in self.records.items()},
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    def write(self, data: bytes | None = None) -> None:
        """Replace the file atomically and durably (temp file, fsync, rename, fsync dir)."""
        data = self.snapshot() if data is None else data
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def persist(self) -> None:
        """Return once the records as they are now are on disk. Calls that arrive together
        share one write; the snapshot is taken on the loop, the write runs in a thread."""
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._pending = loop.create_future()
            if self._writer is None or self._writer.done():
                self._writer = loop.create_task(self._write_pending())
        await asyncio.shield(self._pending)

    async def _write_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending is not None:
            await asyncio.sleep(COALESCE_S)
            waiter, self._pending = self._pending, None
            try:
                await loop.run_in_executor(None, self.write, self.snapshot())
            except OSError as exc:
                waiter.set_exception(SimulatorStateError(f"cannot write {self.path}: {exc}"))
            else:
                waiter.set_result(None)


def _ack(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or not isinstance(raw.get("command_id"), str):
        raise ValueError(f"remembered command {raw!r} has no command_id")
    return {"command_id": raw["command_id"], "result": str(raw.get("result", "")),
            "detail": str(raw.get("detail", ""))}
