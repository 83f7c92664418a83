"""`iotmeter command ...` and `iotmeter ota ...`: commands and firmware campaigns from a shell.

Made for operators and scripts: ids go to stdout on their own (a command id alone on the first
line; a campaign id as the last word), notes to stderr, and the exit status says whether the
thing asked for happened (0 only for `done` / a campaign whose every target is done). These
commands work on the stores directly; the running collector's dispatcher does the delivery,
and `command send` also publishes at once when the device is online and a broker answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from iotmeter_tui.backend.stores.metadata import COMMAND_STATES, Command, OtaTarget
from iotmeter_tui.backend.terminal import safe_text
from iotmeter_tui.cli.args import key_value, positive_float, positive_int
from iotmeter_tui.cli.context import (
    EXIT_NOT_DONE,
    EXIT_OK,
    broker_url,
    command_settings,
    note,
    opened_stores,
    table,
    when,
)

# How long `command send` waits for a broker connection before leaving the command queued.
CONNECT_WAIT_S = 3.0
# --wait keeps watching this long past a command's expiry (plus the ack grace) at most.
WAIT_MARGIN_S = 10.0


# --- registration (called by cli.build_parser) ---------------------------------------------


def register_command_group(sub: Any) -> None:
    cmd = sub.add_parser("command", help="send commands to devices and follow them")
    group = cmd.add_subparsers(title="command actions", metavar="ACTION", required=True)

    send = group.add_parser(
        "send", help="send a command; prints its id (with --wait, then its final state)",
        description="Store a command for DEVICE and deliver it (at once if the device is "
        "online, else when it comes back before the timeout). Exit 0 unless it is refused; "
        "with --wait, 0 only when it ends done.")
    send.add_argument("device", metavar="DEVICE")
    send.add_argument("name", metavar="NAME", help="ping, reboot, set_interval, set_config")
    send.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                      type=key_value, help="a parameter; VALUE is read as JSON when it is JSON "
                      "(0.5, true, \"text\"), else as text. Repeat for more")
    send.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS",
                      help="expiry: past it the command ends timed_out (default 300)")
    send.add_argument("--wait", action="store_true",
                      help="wait for the final state, print it; exit 0 only when done")
    send.set_defaults(handler=_command_send)

    listing = group.add_parser("list", help="recent commands, newest first")
    listing.add_argument("--device", metavar="ID")
    listing.add_argument("--state", choices=COMMAND_STATES)
    listing.add_argument("--limit", type=positive_int, default=50, metavar="N")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=_command_list)

    show = group.add_parser("show", help="one command's state; exit 0 only when done")
    show.add_argument("command_id", metavar="COMMAND_ID")
    show.add_argument("--wait", action="store_true", help="wait for its final state")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_command_show)


def register_ota_group(sub: Any) -> None:
    ota = sub.add_parser("ota", help="firmware images and update campaigns")
    group = ota.add_subparsers(title="ota actions", metavar="ACTION", required=True)

    upload = group.add_parser("upload", help="store a firmware image under a version")
    upload.add_argument("file", metavar="FILE")
    upload.add_argument("--version", required=True, metavar="V")
    upload.add_argument("--signature", metavar="FILE.sig", default=None,
                        help="the image's signature from `ota sign` (required when "
                        "IOTMETER_FIRMWARE_PUBLIC_KEY is set; offers carry it)")
    upload.set_defaults(handler=_ota_upload)

    keygen = group.add_parser(
        "keygen", help="make an Ed25519 firmware signing key pair (offline)",
        description="Write firmware-signing.key (private, 0600: keep it off the servers) and "
        "firmware-signing.pub into DIR; print the public key, alone on the last line, for "
        "IOTMETER_FIRMWARE_PUBLIC_KEY and the devices.")
    keygen.add_argument("--out", required=True, metavar="DIR")
    keygen.set_defaults(handler=_ota_keygen)

    sign = group.add_parser(
        "sign", help="sign a firmware image (offline): writes IMAGE.sig",
        description="Sign IMAGE with the private key from `ota keygen`; writes IMAGE.sig "
        "(base64) beside it, for `ota upload --signature`.")
    sign.add_argument("image", metavar="IMAGE")
    sign.add_argument("--key", required=True, metavar="PRIVATE_KEY")
    sign.set_defaults(handler=_ota_sign)

    firmware = group.add_parser("firmware", help="uploaded images, newest first")
    firmware.set_defaults(handler=_ota_firmware)

    start = group.add_parser(
        "start", help="start a campaign; its id is the last word printed",
        description="Roll firmware V out to the chosen devices, BATCH at a time; abort when "
        "failures pass PERCENT. The running collector carries it out.")
    start.add_argument("--version", required=True, metavar="V")
    which = start.add_mutually_exclusive_group(required=True)
    which.add_argument("--device", action="extend", nargs="+", metavar="ID",
                       help="these devices (repeat or list several)")
    which.add_argument("--type", metavar="TYPE", help="every device of this type")
    which.add_argument("--all", action="store_true", help="every registered device")
    start.add_argument("--batch-size", type=_batch, default=None, metavar="N|N%",
                       help="devices updating at once: a count or a share of the targets "
                       "(default 10)")
    start.add_argument("--max-failures", type=_percent, default=None, metavar="PERCENT",
                       help="abort past this share of failed targets (default 20)")
    start.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS",
                       help="per device, from its offer to the new version reported "
                       "(default 900)")
    start.set_defaults(handler=_ota_start)

    listing = group.add_parser("list", help="campaigns, newest first")
    listing.add_argument("--limit", type=positive_int, default=20, metavar="N")
    listing.set_defaults(handler=_ota_list)

    status = group.add_parser(
        "status", help="a campaign's targets; with --wait exit 0 only when all are done")
    status.add_argument("campaign", metavar="CAMPAIGN")
    status.add_argument("--wait", action="store_true",
                        help="wait until the campaign ends; progress on stderr")
    status.add_argument("--wait-timeout", type=positive_float, default=None,
                        metavar="SECONDS", help="give up waiting after this long")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_ota_status)

    abort = group.add_parser("abort", help="stop offering; devices mid-update are followed")
    abort.add_argument("campaign", metavar="CAMPAIGN")
    abort.set_defaults(handler=_ota_abort)


# --- argument types -----------------------------------------------------------------------


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 100")
    return value


def _batch(text: str) -> tuple[int | None, float | None]:
    from iotmeter_tui.backend.control.ota import parse_batch

    try:
        return parse_batch(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"batch size {exc}") from None


# --- command ------------------------------------------------------------------------------


def _command_send(args: argparse.Namespace) -> int:
    from iotmeter_tui.backend.audit import Actor, AuditLog
    from iotmeter_tui.backend.control.commands import DEFAULT_TIMEOUT_S, CommandService
    from iotmeter_tui.backend.control.publisher import ServerPublisher

    settings = command_settings(args)
    url = broker_url(settings)
    publisher = None
    if url is not None:
        publisher = ServerPublisher(url, f"iotmeter-cli-{time.time_ns():x}")
        if not publisher.wait_connected(CONNECT_WAIT_S):
            note(f"broker {publisher.address.host}:{publisher.address.port} not reachable "
                  f"({publisher.last_error or 'no answer'})")
    try:
        with opened_stores(settings) as stores:
            service = CommandService(stores.metadata, publisher,
                                     redeliver_after_s=settings.redeliver_after_s)
            timeout_s = args.timeout or DEFAULT_TIMEOUT_S
            actor = Actor.cli()
            with AuditLog(stores.metadata).audited(actor, "command.send", args.device,
                                                   {"name": args.name}) as audit_entry:
                cmd = service.send(args.device, args.name, dict(args.param), timeout_s,
                                   created_by=actor.name)
                audit_entry.detail["command_id"] = cmd.id
            print(cmd.id, flush=True)
            if cmd.state == "queued":
                note("queued: delivered by the collector when the device is online"
                      + ("" if url else " (no broker found to publish now)"))
            if args.wait and cmd.state not in ("done", "rejected", "failed", "timed_out"):
                cmd = service.wait(cmd.id, timeout_s=timeout_s + WAIT_MARGIN_S)
            if args.wait or cmd.state in ("rejected", "failed", "timed_out"):
                print(_outcome(cmd))
    finally:
        if publisher is not None:
            publisher.close()
    if args.wait:
        return EXIT_OK if cmd.state == "done" else EXIT_NOT_DONE
    return EXIT_NOT_DONE if cmd.state in ("rejected", "failed", "timed_out") else EXIT_OK


def _outcome(cmd: Command) -> str:
    return cmd.state + (f": {safe_text(cmd.detail)}" if cmd.detail else "")


def _command_list(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    with opened_stores(settings) as stores:
        commands = stores.metadata.list_commands(device_id=args.device, state=args.state,
                                                 limit=args.limit)
    if args.json:
        for cmd in commands:
            print(json.dumps(asdict(cmd)))
        return EXIT_OK
    rows = [["ID", "DEVICE", "NAME", "STATE", "TRIES", "CREATED (UTC)", "DETAIL"]]
    rows += [[c.id, c.device_id, c.name, c.state, str(c.attempts), when(c.created_at),
              (c.detail or "")[:60]] for c in commands]
    table(rows)
    return EXIT_OK


def _command_show(args: argparse.Namespace) -> int:
    from iotmeter_tui.backend.control.commands import CommandError, CommandService

    settings = command_settings(args)
    with opened_stores(settings) as stores:
        service = CommandService(stores.metadata)
        cmd = service.get(args.command_id)
        if cmd is None:
            raise CommandError(f"no command {args.command_id!r}")
        if args.wait:
            budget = None
            if cmd.expires_at is not None:
                budget = max(0.0, cmd.expires_at / 1000 - time.time()) + WAIT_MARGIN_S
            cmd = service.wait(cmd.id, timeout_s=budget)
    if args.json:
        print(json.dumps(asdict(cmd)))
    else:
        print(f"{cmd.id} {cmd.device_id} {cmd.name} {json.dumps(cmd.params)}")
        print(_outcome(cmd))
    return EXIT_OK if cmd.state == "done" else EXIT_NOT_DONE


# --- ota ----------------------------------------------------------------------------------


def _ota_upload(args: argparse.Namespace) -> int:
    from iotmeter_tui.backend.audit import Actor, AuditLog
    from iotmeter_tui.backend.control.ota import OtaService
    from iotmeter_tui.backend.control.signing import configured_public_key

    settings = command_settings(args)
    public_key = configured_public_key(settings.firmware_public_key)
    with opened_stores(settings) as stores, AuditLog(stores.metadata).audited(
            Actor.cli(), "ota.upload", args.version) as audit_entry:
        fw = OtaService(stores.metadata, stores.archive, public_key=public_key).upload(
            args.file, args.version, args.signature)
        audit_entry.detail |= {"sha256": fw.sha256, "size": fw.size, "signed": bool(fw.signature)}
    signed = "signed" if fw.signature else "unsigned"
    print(f"firmware {fw.version}: {fw.size} bytes, sha256 {fw.sha256}, {signed}")
    return EXIT_OK


def _ota_keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from iotmeter_tui.backend.control.signing import generate_keypair

    private, public_path, public = generate_keypair(Path(args.out))
    print(f"private key {private} (0600): keep it offline, it signs firmware", file=sys.stderr)
    print(f"public key {public_path}; set IOTMETER_FIRMWARE_PUBLIC_KEY and pin it in the "
          "devices:", file=sys.stderr)
    print(public)
    return EXIT_OK


def _ota_sign(args: argparse.Namespace) -> int:
    from pathlib import Path

    from iotmeter_tui.backend.control.signing import sign_file

    out, _ = sign_file(Path(args.image), Path(args.key))
    print(out)
    return EXIT_OK


def _ota_firmware(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    with opened_stores(settings) as stores:
        images = stores.metadata.list_firmware()
    rows = [["VERSION", "BYTES", "SHA256", "UPLOADED (UTC)"]]
    rows += [[f.version, str(f.size), f.sha256, when(f.uploaded_at)] for f in images]
    table(rows)
    return EXIT_OK


def _ota_start(args: argparse.Namespace) -> int:
    from iotmeter_tui.backend.audit import Actor, AuditLog
    from iotmeter_tui.backend.control.ota import OtaService
    from iotmeter_tui.backend.stores.metadata import DEFAULT_TARGET_TIMEOUT_S

    settings = command_settings(args)
    size, pct = args.batch_size or (None, None)
    options: dict[str, Any] = {"batch_size": size, "batch_pct": pct,
                               "target_timeout_s": args.timeout or DEFAULT_TARGET_TIMEOUT_S}
    if args.max_failures is not None:
        options["max_failures_pct"] = args.max_failures
    actor = Actor.cli()
    with opened_stores(settings) as stores:
        service = OtaService(stores.metadata, stores.archive)
        with AuditLog(stores.metadata).audited(actor, "ota.start", args.version) as audit_entry:
            campaign = service.start_campaign(args.version, device_ids=args.device,
                                              device_type=args.type, all_devices=args.all,
                                              created_by=actor.name, **options)
            audit_entry.detail |= {"campaign_id": campaign.id, "selector": campaign.selector}
        targets = len(stores.metadata.list_targets(campaign.id))
    print(f"campaign for firmware {campaign.fw_version} on {targets} device(s) "
          f"({campaign.selector}), {campaign.batch_size} at a time, abort past "
          f"{campaign.max_failures_pct:g}% failures: {campaign.id}")
    return EXIT_OK


def _ota_list(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    with opened_stores(settings) as stores:
        campaigns = stores.metadata.list_campaigns(args.limit)
    rows = [["CAMPAIGN", "VERSION", "STATE", "BATCH", "MAX FAIL", "CREATED (UTC)", "SELECTOR"]]
    rows += [[c.id, c.fw_version, c.state, str(c.batch_size), f"{c.max_failures_pct:g}%",
              when(c.created_at), c.selector[:50]] for c in campaigns]
    table(rows)
    return EXIT_OK


def _ota_status(args: argparse.Namespace) -> int:
    from iotmeter_tui.backend.control.ota import OtaService

    settings = command_settings(args)
    with opened_stores(settings) as stores:
        service = OtaService(stores.metadata, stores.archive)
        if args.wait:
            status = service.wait(args.campaign, timeout_s=args.wait_timeout,
                                  on_change=lambda s: note(_summary(s)))
        else:
            status = service.status(args.campaign)
    if args.json:
        print(json.dumps({"campaign": asdict(status.campaign),
                          "targets": [asdict(t) for t in status.targets]}))
    else:
        _print_status(status)
    if args.wait:
        return EXIT_OK if status.all_done else EXIT_NOT_DONE
    return EXIT_OK


def _summary(status: Any) -> str:
    t = status.tally
    return (f"{status.campaign.id} {status.campaign.state}: {t.done}/{t.total} done, "
            f"{t.in_flight} updating, {t.pending} pending, {t.failed} failed, "
            f"{t.timed_out} timed out, {t.skipped} skipped")


def _print_status(status: Any) -> None:
    c = status.campaign
    print(f"campaign {c.id}: firmware {c.fw_version}, {c.state}"
          + (f" ({safe_text(c.detail)})" if c.detail else ""))
    print(f"  {c.selector}; {c.batch_size} at a time; abort past {c.max_failures_pct:g}% "
          f"failures; {c.target_timeout_s:g} s per device")
    print("  " + _summary(status).split(": ", 1)[1])
    rows = [["DEVICE", "STATE", "PROGRESS", "OFFERS", "UPDATED (UTC)", "ERROR"]]
    rows += [_target_row(t) for t in status.targets]
    table(rows)


def _target_row(t: OtaTarget) -> list[str]:
    progress = "-" if t.progress_pct is None else f"{t.progress_pct:.0f}%"
    return [t.device_id, t.state, progress, str(t.attempts), when(t.updated_at),
            (t.error or "")[:70]]


def _ota_abort(args: argparse.Namespace) -> int:
    from iotmeter_tui.backend.audit import Actor, AuditLog
    from iotmeter_tui.backend.control.ota import OtaService

    settings = command_settings(args)
    with opened_stores(settings) as stores, AuditLog(stores.metadata).audited(
            Actor.cli(), "ota.abort", args.campaign):
        campaign = OtaService(stores.metadata, stores.archive).abort(args.campaign)
    print(f"campaign {campaign.id}: {campaign.state}")
    return EXIT_OK
