"""Commands to devices: create one, deliver it, follow it to a final state.

A command lives in `device_commands` from the moment it is asked for, so nothing is lost to a
restart. Its states: `queued` (stored, not published yet: the device is offline or the broker
unreachable) -> `sent` (published, attempts + 1) -> `accepted` (the device's ack) -> `done`;
or `rejected`, `failed` (the device's answers) and `timed_out` (no final answer before
`expires_at` plus a short grace for acks already on their way). Final states never change.
The collector's `RegistrySink` records the device's acks; `CommandService.dispatch()` (run by
the collector's Dispatcher) delivers, repeats and expires. docs/commands-ota.md tells operators.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.control.publisher import Publisher, PublishError
from iotmeter_tui.backend.errors import IotmeterError, StoreUnavailable
from iotmeter_tui.backend.stores.metadata import COMMAND_FINAL_STATES, Command, MetadataStore

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: Final = 300.0
MAX_TIMEOUT_S: Final = 30 * 24 * 3600.0
DEFAULT_REDELIVER_AFTER_S: Final = 10.0
# An ack the device sent just before the expiry still has to pass the collector's spool and
# registry sink; the server waits this long past expires_at before calling it timed out.
ACK_GRACE_MS: Final = 2000

# What next_step() tells the dispatcher to do with an open command.
DELIVER: Final = "deliver"
EXPIRE: Final = "expire"
WAIT: Final = "wait"


class CommandError(IotmeterError):
    """A command request that cannot be carried out as asked (unknown device, bad
    parameters); `str()` is one line for the operator."""


def new_command_id() -> str:
    return f"cmd-{uuid.uuid4().hex[:16]}"


def command_payload(cmd: Command) -> bytes:
    """The wire form of a stored command: the same bytes on every delivery, so a repeat is
    recognisably the same command (its ts is when it was issued, not when it was sent)."""
    assert cmd.expires_at is not None  # the service always sets one
    return protocol.encode_command(cmd.id, cmd.name, cmd.params, ts=cmd.created_at,
                                   expires_ts=cmd.expires_at)


def next_step(cmd: Command, *, online: bool, now_ms: int, redeliver_after_ms: int,
              grace_ms: int = ACK_GRACE_MS) -> tuple[str, str | None]:
    """What to do with a command now: (DELIVER | EXPIRE | WAIT, reason for an expiry). Pure."""
    if cmd.state in COMMAND_FINAL_STATES:
        return WAIT, None
    expires = cmd.expires_at
    if expires is not None and now_ms >= expires + grace_ms:
        return EXPIRE, _expiry_reason(cmd)
    if expires is not None and now_ms >= expires:
        return WAIT, None  # the device would refuse it as expired: only acks may still come
    if not online:
        return WAIT, None  # the broker would queue it, but only the registry says when it lands
    if cmd.state == "queued":
        return DELIVER, None
    if cmd.state == "sent" and (cmd.sent_at is None or now_ms - cmd.sent_at >= redeliver_after_ms):
        return DELIVER, None  # no ack yet: publish again; the device acts once per command_id
    return WAIT, None


def _expiry_reason(cmd: Command) -> str:
    if cmd.state == "queued":
        return "the device was not online before the command expired"
    if cmd.state == "accepted":
        return "accepted by the device but not finished before the command expired"
    return f"no answer from the device before the command expired ({cmd.attempts} deliveries)"


class CommandService:
    """Sends commands and reports on them. `publisher` may be None (no broker at hand): then
    commands are only stored, and the collector's dispatcher delivers them."""

    def __init__(self, metadata: MetadataStore, publisher: Publisher | None = None, *,
                 redeliver_after_s: float = DEFAULT_REDELIVER_AFTER_S,
                 grace_ms: int = ACK_GRACE_MS, clock: Callable[[], float] = time.time) -> None:
        self.metadata = metadata
        self.publisher = publisher
        self.redeliver_after_ms = int(redeliver_after_s * 1000)
        self.grace_ms = grace_ms
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock() * 1000)

    # --- what operators and the dashboard call ----------------------------------------------

    def send(self, device_id: str, name: str, params: dict[str, Any] | None = None,
             timeout_s: float = DEFAULT_TIMEOUT_S, *, created_by: str | None = None) -> Command:
        """Store a command and, when the device is online, publish it at once. `created_by`
        records who asked (an OS user, an API key's name).

        A name iotmeter does not know is stored already `rejected` and never published (the
        protocol's encoder refuses it). Raises CommandError for an unknown device or bad
        parameters, StoreError when the metadata store fails."""
        params = {} if params is None else params
        self._check(device_id, name, params, timeout_s)
        now = self._now()
        command_id = new_command_id()
        expires_at = now + max(1, int(timeout_s * 1000))
        if name not in protocol.COMMAND_NAMES:
            known = ", ".join(sorted(protocol.COMMAND_NAMES))
            cmd = Command(command_id, device_id, name, params, "rejected", now, now, expires_at,
                          detail=f"unknown command {name!r} (known: {known}); not sent",
                          created_by=created_by)
            self.metadata.create_command(cmd)
            log.info("command refused", extra={"event": "command_refused", "command_id":
                                               command_id, "device_id": device_id, "command": name})
            return cmd
        cmd = Command(command_id, device_id, name, params, "queued", now, now, expires_at,
                      created_by=created_by)
        if len(command_payload(cmd)) > protocol.MAX_PAYLOAD_BYTES:
            raise CommandError(f"parameters too large: a command is at most "
                               f"{protocol.MAX_PAYLOAD_BYTES} bytes")
        self.metadata.create_command(cmd)
        log.info("command queued", extra={"event": "command_queued", "command_id": command_id,
                                          "device_id": device_id, "command": name})
        if self._broker_ready() and self._online(device_id):
            try:
                self._deliver(cmd, now)
            except PublishError as exc:
                # Stored and queued: the dispatcher delivers it once the broker is back.
                log.warning("command not published yet", extra={
                    "event": "command_publish_failed", "command_id": command_id,
                    "error": str(exc)})
        return self.metadata.get_command(command_id) or cmd

    def get(self, command_id: str) -> Command | None:
        return self.metadata.get_command(command_id)

    def list(self, *, device_id: str | None = None, state: str | None = None,
             limit: int = 500) -> list[Command]:
        """Newest first."""
        return self.metadata.list_commands(device_id=device_id, state=state, limit=limit)

    def wait(self, command_id: str, timeout_s: float | None = None,
             poll_s: float = 0.2) -> Command:
        """Until the command is final (or `timeout_s` passes): the latest record.

        Applies the expiry rule itself, so a command ends timed_out on time even when no
        collector runs. A store that is briefly unavailable is waited out."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        latest: Command | None = None
        while True:
            try:
                latest = self._settled(command_id)
            except StoreUnavailable:
                if latest is None and deadline is not None and time.monotonic() >= deadline:
                    raise  # never read it: say why
            else:
                if latest.state in COMMAND_FINAL_STATES:
                    return latest
            if deadline is not None and time.monotonic() >= deadline and latest is not None:
                return latest
            time.sleep(poll_s)

    def _settled(self, command_id: str) -> Command:
        cmd = self.metadata.get_command(command_id)
        if cmd is None:
            raise CommandError(f"no command {command_id!r}")
        action, reason = next_step(cmd, online=False, now_ms=self._now(),
                                   redeliver_after_ms=self.redeliver_after_ms,
                                   grace_ms=self.grace_ms)
        if action == EXPIRE:
            self._expire(cmd, reason)
            cmd = self.metadata.get_command(command_id) or cmd
        return cmd

    # --- the dispatcher's pass --------------------------------------------------------------

    def dispatch(self) -> int:
        """One pass over the open commands: deliver queued ones to online devices, repeat
        unanswered ones, expire overdue ones. Returns how many were published. Stops
        publishing for this pass at the first broker failure (the rest stay as they are)."""
        now = self._now()
        online: dict[str, bool] = {}
        published = 0
        broker_down = not self._broker_ready()
        for cmd in self.metadata.pending_commands():
            if cmd.device_id not in online:
                online[cmd.device_id] = self._online(cmd.device_id)
            action, reason = next_step(cmd, online=online[cmd.device_id], now_ms=now,
                                       redeliver_after_ms=self.redeliver_after_ms,
                                       grace_ms=self.grace_ms)
            if action == EXPIRE:
                self._expire(cmd, reason)
            elif action == DELIVER and not broker_down:
                try:
                    self._deliver(cmd, now)
                    published += 1
                except PublishError as exc:
                    broker_down = True
                    log.warning("command delivery failed; will retry", extra={
                        "event": "command_publish_failed", "command_id": cmd.id,
                        "error": str(exc)})
        return published

    # --- internals --------------------------------------------------------------------------

    def _broker_ready(self) -> bool:
        return self.publisher is not None and self.publisher.connected

    def _online(self, device_id: str) -> bool:
        device = self.metadata.get_device(device_id)
        return device is not None and device.connection_status == "online"

    def _deliver(self, cmd: Command, now: int) -> None:
        assert self.publisher is not None
        # Recorded before publishing: an ack racing back can then only move it forward.
        if not self.metadata.update_command(cmd.id, state="sent", at=now, sent=True):
            return  # final meanwhile (an ack or an expiry): nothing to deliver
        try:
            self.publisher.publish(protocol.command_topic(cmd.device_id), command_payload(cmd))
        except PublishError:
            current = self.metadata.get_command(cmd.id)
            if current is not None and current.state == "sent" and cmd.state == "queued":
                self.metadata.update_command(cmd.id, state="queued", at=now)
            raise
        log.info("command sent", extra={"event": "command_sent", "command_id": cmd.id,
                                        "device_id": cmd.device_id,
                                        "attempt": cmd.attempts + 1})

    def _expire(self, cmd: Command, reason: str | None) -> None:
        if self.metadata.update_command(cmd.id, state="timed_out", at=self._now(),
                                        detail=reason):
            log.info("command timed out", extra={"event": "command_timed_out",
                                                 "command_id": cmd.id,
                                                 "device_id": cmd.device_id, "reason": reason})

    def _check(self, device_id: str, name: str, params: dict[str, Any],
               timeout_s: float) -> None:
        if not protocol.is_valid_device_id(device_id):
            raise CommandError(f"{device_id!r} is not a device id")
        if not isinstance(name, str) or not protocol.is_valid_label(name):
            raise CommandError(f"{name!r} is not a command name (letters, digits, '_.+-')")
        if not isinstance(params, dict):
            raise CommandError("parameters must be an object of KEY=VALUE pairs")
        try:
            json.dumps(params, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CommandError(f"parameters are not JSON: {exc}") from None
        if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s)
                and 0 < timeout_s <= MAX_TIMEOUT_S):
            raise CommandError(f"timeout {timeout_s!r} s is not between 0 and "
                               f"{MAX_TIMEOUT_S:g} s")
        if self.metadata.get_device(device_id) is None:
            raise CommandError(f"unknown device {device_id!r}: the registry has never heard it")
