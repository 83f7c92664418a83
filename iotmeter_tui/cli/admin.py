"""`iotmeter device ...`, `iotmeter archive ...`, `iotmeter apikey ...` and `iotmeter audit`:
device administration, the raw archive reader, API keys and the audit log from a shell.

The same services as the REST API (backend/devices.py, apikeys.py, audit.py,
archive_reader.py); every changing verb is recorded in the audit log under the OS user
(role `cli`). Tables show device-sent text escaped (backend/terminal.escaped); NDJSON output is
the archived bytes as they are (JSON escapes every control character inside strings, and the
writer turned raw CR/LF between tokens into spaces).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Final

from iotmeter_tui.backend.stores.metadata import CONNECTION_STATUSES, Device
from iotmeter_tui.backend.terminal import escaped
from iotmeter_tui.cli.args import key_value, positive_float, positive_int
from iotmeter_tui.cli.context import (
    EXIT_NOT_DONE,
    EXIT_OK,
    EXIT_USAGE,
    command_settings,
    note,
    opened_stores,
    table,
    when,
)

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
                   "w": 604_800_000}


# --- registration (cli._EXTRA_COMMANDS) ----------------------------------------------------


def register_admin_commands(sub: Any) -> None:
    _register_device(sub)
    _register_archive(sub)
    _register_apikey(sub)
    audit = sub.add_parser("audit", help="the audit log: who changed what, newest first")
    audit.add_argument("--limit", type=positive_int, default=50, metavar="N")
    audit.add_argument("--actor", metavar="A", help="an OS user or an API key's name")
    audit.add_argument("--action", metavar="X", help="e.g. device.create, apikey.revoke")
    audit.add_argument("--since", type=moment, metavar="T",
                       help="ISO-8601, epoch ms, or an age such as 1h, 2d")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.set_defaults(handler=_audit)


def _register_device(sub: Any) -> None:
    device = sub.add_parser("device", help="register, describe, list and delete devices")
    group = device.add_subparsers(title="device actions", metavar="ACTION", required=True)

    add = group.add_parser("add", help="register a device before it connects")
    add.add_argument("device_id", metavar="ID")
    add.add_argument("--type", default="unknown", metavar="T",
                     help="power_meter_dc, power_meter_ac, ... (default unknown: the device's "
                     "hello sets it)")
    add.add_argument("--name", metavar="N")
    add.add_argument("--location", metavar="L")
    add.add_argument("--meta", action="append", default=[], type=key_value, metavar="K=V",
                     help="a metadata entry; V is read as JSON when it is JSON. Repeat for more")
    add.set_defaults(handler=_device_add)

    update = group.add_parser(
        "update", help="change a device's name, location or metadata",
        description="Change only what is given: an empty --name or --location clears it; "
        "--meta entries are merged into the metadata (--meta K= with nothing after = removes "
        "K), --replace-meta makes them the whole metadata.")
    update.add_argument("device_id", metavar="ID")
    update.add_argument("--name", metavar="N")
    update.add_argument("--location", metavar="L")
    update.add_argument("--meta", action="append", default=[], type=key_value, metavar="K=V")
    update.add_argument("--replace-meta", action="store_true")
    update.set_defaults(handler=_device_update)

    listing = group.add_parser("list", help="registered devices")
    listing.add_argument("--status", choices=CONNECTION_STATUSES)
    listing.add_argument("--type", metavar="T")
    listing.add_argument("--search", metavar="Q",
                         help="part of the id, type, firmware, name or location")
    listing.add_argument("--limit", type=positive_int, default=None, metavar="N")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=_device_list)

    show = group.add_parser("show", help="one device with its config")
    show.add_argument("device_id", metavar="ID")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_device_show)

    rm = group.add_parser(
        "rm", help="delete a device from the registry (its time series and archive stay)",
        description="Delete the registry entry, its config and sequence tracking; its open "
        "commands end failed, its open alerts are cleared. Asks for the id again unless "
        "--yes.")
    rm.add_argument("device_id", metavar="ID")
    rm.add_argument("--yes", action="store_true", help="do not ask")
    rm.set_defaults(handler=_device_rm)

    config = group.add_parser(
        "set-config", help="change a device's config; device keys go out as set_config",
        description="Set config keys (merged into the current config). Keys the device "
        "applies (interval_s, heartbeat_s, report_temperature) are sent to it in one "
        "set_config command; alert thresholds (nominal_v, max_current_a, frequency_band_pct, "
        "gap_threshold) and notes (x_<name>) are stored for the server.")
    config.add_argument("device_id", metavar="ID")
    config.add_argument("pairs", nargs="*", type=key_value, metavar="K=V")
    config.add_argument("--unset", action="append", default=[], metavar="K",
                        help="remove a key from the stored config")
    config.add_argument("--replace", action="store_true",
                        help="the given keys become the whole config")
    config.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS",
                        help="expiry of the set_config command (default 300); a device "
                        "offline past it gets the config when you run set-config again")
    config.set_defaults(handler=_device_set_config)


def _register_archive(sub: Any) -> None:
    archive = sub.add_parser("archive", help="read the raw archive (NDJSON to stdout)")
    group = archive.add_subparsers(title="archive actions", metavar="ACTION", required=True)

    get = group.add_parser(
        "get", help="a device's messages exactly as received, one per line",
        description="Stream a device's archived messages as NDJSON, filtered by the device's "
        "ts. T is ISO-8601 (UTC unless it says), epoch milliseconds, or an age such as "
        "90s, 15m, 1h, 2d, 1w.")
    get.add_argument("device_id", metavar="DEVICE")
    get.add_argument("--category", metavar="C",
                     help="telemetry, hello, status, command_ack or ota_status (default all)")
    get.add_argument("--since", type=moment, metavar="T")
    get.add_argument("--until", type=moment, metavar="T")
    get.add_argument("--slack", type=_duration, default=None, metavar="D",
                     help="also read objects received this long outside the range "
                     "(default 1d): devices that buffered offline or drift")
    get.set_defaults(handler=_archive_get)

    rejected = group.add_parser("rejected", help="rejected messages with their reason (NDJSON)")
    rejected.add_argument("--reason", metavar="R")
    rejected.add_argument("--device", metavar="ID")
    rejected.add_argument("--since", type=moment, metavar="T")
    rejected.add_argument("--until", type=moment, metavar="T")
    rejected.set_defaults(handler=_archive_rejected)


def _register_apikey(sub: Any) -> None:
    from iotmeter_tui.backend.stores.metadata import API_KEY_ROLES

    apikey = sub.add_parser("apikey", help="keys of the REST API")
    group = apikey.add_subparsers(title="apikey actions", metavar="ACTION", required=True)
    create = group.add_parser("create", help="a new key, printed once on the last line")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--role", required=True, choices=API_KEY_ROLES)
    create.set_defaults(handler=_apikey_create)
    listing = group.add_parser("list", help="every key (never a secret)")
    listing.set_defaults(handler=_apikey_list)
    revoke = group.add_parser("revoke", help="revoke a key for good")
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(handler=_apikey_revoke)


# --- argument types -----------------------------------------------------------------------


def _duration(text: str) -> int:
    match = _RELATIVE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 15m, 1h, 2d")
    return int(float(match[1]) * _UNIT_MS[match[2]])


def moment(text: str, *, now_ms: int | None = None) -> int:
    """Epoch milliseconds from ISO-8601 (naive means UTC), epoch ms, or an age (`1h` ago)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    if _RELATIVE.fullmatch(text):
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return now - _duration(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use ISO-8601 (2026-12-01T08:00Z), epoch milliseconds "
            "or an age such as 1h") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


# --- plumbing -----------------------------------------------------------------------------


def _actor() -> Any:
    from iotmeter_tui.backend.audit import Actor

    return Actor.cli()


def _device_service(stores: Any, settings: Any = None) -> Any:
    from iotmeter_tui.backend.broker_admin import device_credentials
    from iotmeter_tui.backend.control.commands import CommandService
    from iotmeter_tui.backend.devices import DeviceService

    # No publisher: set_config commands are stored queued and the running collector's
    # dispatcher delivers them. With IOTMETER_MQTT_ADMIN_URL, adding a device creates its
    # broker client (password shown once) and removing it revokes that (docs/security.md).
    credentials = None if settings is None else device_credentials(settings)
    return DeviceService(stores.metadata, CommandService(stores.metadata),
                         credentials=credentials)


def _device_json(device: Device) -> dict[str, Any]:
    return asdict(device)


def _device_row(d: Device) -> list[str]:
    return [escaped(cell) for cell in (
        d.device_id, d.device_type, d.connection_status, d.fw_version or "-",
        when(d.last_seen), d.name or "", d.location or "")]


def _silence_stdout() -> None:
    """After a broken pipe: the interpreter's final flush would fail again; send it nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# --- device -------------------------------------------------------------------------------


def _device_add(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    with opened_stores(settings) as stores:
        created = _device_service(stores, settings).create(
            args.device_id, args.type, name=args.name, location=args.location,
            metadata=dict(args.meta), actor=_actor())
    print(f"device {created.device.device_id} registered ({created.device.device_type})")
    if created.password is not None:
        note("its broker password, shown once:")
        print(created.password)
    return EXIT_OK


def _device_update(args: argparse.Namespace) -> int:
    from iotmeter_tui.backend.stores.metadata import UNSET

    settings = command_settings(args)
    changes: dict[str, Any] = {}
    for field in ("name", "location"):
        value = getattr(args, field)
        if value is not None:
            changes[field] = value or None  # an empty value clears the field
    with opened_stores(settings) as stores:
        service = _device_service(stores)
        if args.meta or args.replace_meta:
            current = service.get(args.device_id)
            metadata = {} if args.replace_meta or current is None else dict(current.metadata)
            for key, value in args.meta:
                if value == "":
                    metadata.pop(key, None)
                else:
                    metadata[key] = value
            changes["metadata"] = metadata
        if not changes:
            note("iotmeter: nothing to change: give --name, --location or --meta")
            return EXIT_USAGE
        device = service.update(args.device_id, name=changes.get("name", UNSET),
                                location=changes.get("location", UNSET),
                                metadata=changes.get("metadata", UNSET), actor=_actor())
    meta_text = json.dumps(device.metadata, sort_keys=True)  # JSONB keeps no key order
    print(f"device {device.device_id}: name {escaped(device.name or '-')}, location "
          f"{escaped(device.location or '-')}, metadata {escaped(meta_text)}")
    return EXIT_OK


def _device_list(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    with opened_stores(settings) as stores:
        devices = stores.metadata.list_devices(search=args.search, status=args.status,
                                               device_type=args.type, limit=args.limit)
    if args.json:
        for device in devices:
            print(json.dumps(_device_json(device)))
        return EXIT_OK
    rows = [["ID", "TYPE", "STATUS", "FIRMWARE", "LAST SEEN (UTC)", "NAME", "LOCATION"]]
    rows += [_device_row(d) for d in devices]
    table(rows)
    return EXIT_OK


def _device_show(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    with opened_stores(settings) as stores:
        service = _device_service(stores)
        device = service.require(args.device_id)
        config = service.get_config(args.device_id)
    if args.json:
        print(json.dumps(_device_json(device) | {"config": config}))
        return EXIT_OK
    for label, value in (
            ("device", device.device_id), ("type", device.device_type),
            ("status", device.connection_status), ("firmware", device.fw_version or "-"),
            ("last seen", when(device.last_seen)), ("boot", device.boot),
            ("heartbeat", "-" if device.heartbeat_s is None else f"{device.heartbeat_s:g} s"),
            ("registered", when(device.created_at)), ("name", device.name or "-"),
            ("location", device.location or "-")):
        print(f"{label + ':':<12} {escaped(value if value is not None else '-')}")
    for key, value in device.metadata.items():
        print(f"{'meta:':<12} {escaped(key)}={escaped(json.dumps(value))}")
    if not config:
        print(f"{'config:':<12} (none)")
    for key, value in config.items():
        print(f"{'config:':<12} {escaped(key)}={escaped(json.dumps(value))}")
    return EXIT_OK


def _device_rm(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    if not args.yes:
        if not sys.stdin.isatty():
            note("iotmeter: deleting a device needs --yes when not asked at a terminal")
            return EXIT_USAGE
        answer = input(f"Delete device {escaped(args.device_id)}? Type its id to confirm: ")
        if answer.strip() != args.device_id:
            note("not deleted")
            return EXIT_NOT_DONE
    with opened_stores(settings) as stores:
        deleted = _device_service(stores, settings).delete(args.device_id, actor=_actor())
    print(f"device {deleted.device_id} deleted: {deleted.commands_failed} open command(s) "
          f"failed, {deleted.alerts_cleared} alert(s) cleared, {deleted.targets_skipped} OTA "
          "target(s) skipped; its time series and archive stay")
    return EXIT_OK


def _device_set_config(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    if not args.pairs and not args.unset:
        note("iotmeter: give KEY=VALUE pairs or --unset KEY")
        return EXIT_USAGE
    with opened_stores(settings) as stores:
        service = _device_service(stores)
        # Read from the store directly: an unknown device is refused (and audited) by
        # replace_config below.
        config = {} if args.replace else stores.metadata.get_config(args.device_id)
        for key in args.unset:
            config.pop(key, None)
        config |= dict(args.pairs)
        change = service.replace_config(args.device_id, config, actor=_actor(),
                                        timeout_s=args.timeout)
    shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in change.config.items()) or "(empty)"
    print(f"config of {change.device_id}: {escaped(shown)}")
    if change.command_id is not None:
        sent = ", ".join(f"{k}={json.dumps(v)}" for k, v in change.sent.items())
        note(f"set_config with {sent} queued for the device "
              "(`iotmeter command show ID --wait` follows it)")
        print(change.command_id)
    else:
        note(f"no command sent: {change.reason}")
    return EXIT_OK


# --- archive ------------------------------------------------------------------------------


class _Skipped:
    """Counts what the reader could not read, and says so on stderr (escaped)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, key: str, why: str) -> None:
        self.count += 1
        if self.count <= 20:
            note(f"skipped in {escaped(key)}: {escaped(why)}")


def _archive_get(args: argparse.Namespace) -> int:
    from iotmeter_tui.backend.archive_reader import DEFAULT_SLACK_MS, iter_raw
    from iotmeter_tui.backend.errors import InvalidRequest

    settings = command_settings(args)
    skipped = _Skipped()
    out = sys.stdout.buffer
    # Accepted lines are valid JSON, so they hold no raw control character; an archive is
    # still only as trustworthy as whoever could write to it, so a terminal gets them escaped
    # (a pipe or a file gets the bytes exactly).
    to_terminal = sys.stdout.isatty()
    with opened_stores(settings) as stores:
        try:
            lines = iter_raw(stores.archive, args.device_id, category=args.category,
                             start_ms=args.since, end_ms=args.until,
                             slack_ms=DEFAULT_SLACK_MS if args.slack is None else args.slack,
                             on_skip=skipped)
            for line in lines:
                if to_terminal:
                    line = escaped(line.decode("utf-8", "backslashreplace")).encode()
                out.write(line + b"\n")
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        except BrokenPipeError:  # `| head`: the reader stopped listening, not an error
            _silence_stdout()
            return EXIT_OK
    out.flush()
    if skipped.count:
        note(f"{skipped.count} unreadable object(s) or line(s) skipped")
    return EXIT_OK


def _archive_rejected(args: argparse.Namespace) -> int:
    from iotmeter_tui.backend.archive_reader import iter_rejected
    from iotmeter_tui.backend.errors import InvalidRequest

    settings = command_settings(args)
    skipped = _Skipped()
    with opened_stores(settings) as stores:
        try:
            for record in iter_rejected(stores.archive, reason=args.reason,
                                        device_id=args.device, start_ms=args.since,
                                        end_ms=args.until, on_skip=skipped):
                # ensure_ascii: nothing the sender chose reaches the terminal unescaped.
                print(json.dumps(record, separators=(",", ":")))
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_OK
    if skipped.count:
        note(f"{skipped.count} unreadable object(s) or line(s) skipped")
    return EXIT_OK


# --- apikey -------------------------------------------------------------------------------


def _apikey_create(args: argparse.Namespace) -> int:
    from iotmeter_tui.backend.apikeys import ApiKeyService
    from iotmeter_tui.backend.audit import AuditLog

    settings = command_settings(args)
    with opened_stores(settings) as stores, AuditLog(stores.metadata).audited(
            _actor(), "apikey.create", args.name, {"role": args.role}):
        key, secret = ApiKeyService(stores.metadata).create(args.name, args.role)
    print(f"API key {key.name} ({key.role}) created. It is shown this once and cannot be "
          "recovered; store it now:")
    print(secret)
    return EXIT_OK


def _apikey_list(args: argparse.Namespace) -> int:
    from iotmeter_tui.backend.apikeys import ApiKeyService

    settings = command_settings(args)
    with opened_stores(settings) as stores:
        keys = ApiKeyService(stores.metadata).list()
    rows = [["NAME", "ROLE", "CREATED (UTC)", "LAST USED (UTC)", "REVOKED (UTC)"]]
    rows += [[escaped(k.name), k.role, when(k.created_at), when(k.last_used_at),
              when(k.revoked_at)] for k in keys]
    table(rows)
    return EXIT_OK


def _apikey_revoke(args: argparse.Namespace) -> int:
    from iotmeter_tui.backend.apikeys import ApiKeyService
    from iotmeter_tui.backend.audit import AuditLog
    from iotmeter_tui.backend.errors import NotFound

    settings = command_settings(args)
    with opened_stores(settings) as stores, AuditLog(stores.metadata).audited(
            _actor(), "apikey.revoke", args.name):
        if not ApiKeyService(stores.metadata).revoke(args.name):
            raise NotFound(f"no active API key named {args.name!r}")
    print(f"API key {args.name} revoked")
    return EXIT_OK


# --- audit --------------------------------------------------------------------------------


def _audit(args: argparse.Namespace) -> int:
    from iotmeter_tui.backend.audit import AuditLog

    settings = command_settings(args)
    with opened_stores(settings) as stores:
        entries = AuditLog(stores.metadata).list(limit=args.limit, actor=args.actor,
                                                 action=args.action, since=args.since)
    if args.json:
        for entry in entries:
            print(json.dumps(asdict(entry)))
        return EXIT_OK
    rows = [["ID", "AT (UTC)", "ACTOR", "ROLE", "ACTION", "TARGET", "RESULT", "DETAIL"]]
    rows += [[str(e.id), when(e.at), escaped(e.actor), escaped(e.role),
              escaped(e.action), escaped(e.target or "-"), e.result,
              escaped(json.dumps(e.detail) if e.detail else "")[:80]] for e in entries]
    table(rows)
    return EXIT_OK
