"""`iotmeter broker setup|add-client`: the service side of the dynamic security plugin.

Devices get their broker clients from `iotmeter device add`; the collectors, dispatchers and
operators' tools get theirs here, with the plugin's admin user (IOTMETER_MQTT_ADMIN_URL).
A new password is printed once, alone on the last line, for a secret store to take.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from iotmeter_tui.cli.context import EXIT_OK, EXIT_USAGE, command_settings, note

MIN_PASSWORD_CHARS = 16


def register_broker_commands(sub: Any) -> None:
    group = sub.add_parser(
        "broker", help="broker identities through the dynamic security plugin "
        "(IOTMETER_MQTT_ADMIN_URL)").add_subparsers(title="broker commands", metavar="VERB")
    setup = group.add_parser("setup", help="create (or reset) the collector, dispatcher and "
                             "operator roles; deny what no role grants")
    setup.set_defaults(handler=_setup)
    add = group.add_parser("add-client", help="create a service client (client id = its "
                           "name) and print its password once")
    add.add_argument("name", metavar="NAME", help="e.g. collector-0 (one per replica)")
    add.add_argument("--role", required=True, choices=("collector", "dispatcher", "operator"))
    add.add_argument("--password-stdin", action="store_true",
                     help="take the password from the first line of stdin (at least 16 "
                     "characters) instead of making one, e.g. one Secret for every replica")
    add.set_defaults(handler=_add_client)


def _credentials(args: argparse.Namespace) -> Any:
    from iotmeter_tui.backend.broker_admin import device_credentials

    credentials = device_credentials(command_settings(args))
    if credentials is None:
        note("iotmeter broker: IOTMETER_MQTT_ADMIN_URL is not set (the dynamic security "
              "plugin's admin user, see docs/security.md)")
    return credentials


def _setup(args: argparse.Namespace) -> int:
    credentials = _credentials(args)
    if credentials is None:
        return EXIT_USAGE
    try:
        credentials.setup()
    finally:
        credentials.close()
    print("roles collector, dispatcher, operator ready")
    return EXIT_OK


def _add_client(args: argparse.Namespace) -> int:
    given = None
    if args.password_stdin:
        given = sys.stdin.readline().rstrip("\r\n")
        if len(given) < MIN_PASSWORD_CHARS:
            note(f"iotmeter broker add-client: the password on stdin is shorter than "
                  f"{MIN_PASSWORD_CHARS} characters")
            return EXIT_USAGE
    credentials = _credentials(args)
    if credentials is None:
        return EXIT_USAGE
    try:
        password = credentials.add_service_client(args.name, args.role, password=given)
    finally:
        credentials.close()
    if given is not None:
        print(f"client {args.name} ({args.role}) created with the given password")
        return EXIT_OK
    note(f"client {args.name} ({args.role}) created; its password, shown once:")
    print(password, flush=True)
    return EXIT_OK
