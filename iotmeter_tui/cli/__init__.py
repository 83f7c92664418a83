"""The `iotmeter` command: the dashboard by default, the headless collector, the simulator and
the operators' subcommands. Heavy modules are imported only by the command that needs them, so
`iotmeter --help` and a bad setting answer at once."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from iotmeter_tui.api.cli import register_api
from iotmeter_tui.backend.config import ConfigError
from iotmeter_tui.backend.errors import IotmeterError
from iotmeter_tui.backend.home import keep_files_private
from iotmeter_tui.cli.admin import register_admin_commands
from iotmeter_tui.cli.args import positive_float, positive_int
from iotmeter_tui.cli.broker import register_broker_commands
from iotmeter_tui.cli.commands import register_command_group, register_ota_group
from iotmeter_tui.cli.context import EXIT_USAGE, settings_from
from iotmeter_tui.cli.serve import register_serve
from iotmeter_tui.relay.cli import register_relay


def _run_dashboard(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.collector_only:
        from iotmeter_tui.backend.collector.command import run_collector

        return run_collector(settings)
    from iotmeter_tui.app import run_dashboard

    return run_dashboard(settings, simulate=args.simulate or settings.simulate,
                         view_only=args.view_only)


def _run_simulate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from iotmeter_tui.backend.simulator.cli import run_simulate

    return run_simulate(
        devices=args.devices,
        rate=args.rate,
        kind=args.kind,
        faults=args.faults,
        seed=args.seed,
        duration=args.duration,
        prefix=args.prefix,
        device_users=args.device_users,
        mqtt_url=settings.mqtt_url,
        home=settings.home,
        summary=args.summary,
        metrics_port=args.sim_metrics_port,
        firmware_key=args.firmware_key or settings.firmware_public_key,
    )


def _run_migrate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    from iotmeter_tui.backend.stores import open_stores

    stores = open_stores(settings)
    try:
        applied = stores.metadata.migrate()
        stores.timeseries.check()  # creates the InfluxDB database where allowed
        stores.archive.check()  # creates the bucket where allowed
    finally:
        stores.close()
    print(f"migrations applied: {applied or 'none (up to date)'}")
    print(f"stores ready: {stores.describe()}")
    return 0


def _run_config(args: argparse.Namespace) -> int:
    from iotmeter_tui.backend.config import SETTINGS
    from iotmeter_tui.backend.redaction import redact

    settings = settings_from(args)
    for setting in SETTINGS:
        value = getattr(settings, setting.key)
        if setting.key in {"influx_token", "s3_secret_key", "github_token",
                           "alert_relay_token", "firmware_url_secret", "serve_token"} and value:
            value = "********"
        elif isinstance(value, str):
            value = redact(value)  # passwords inside the store and broker URLs
        print(f"{setting.env:<28} {value!s:<40} {setting.doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iotmeter",
        description="Operations dashboard and collector for railway traction power meters. "
        "With no store configured it runs on the embedded defaults "
        "(private mosquitto, SQLite, local archive directory).",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML config file (IOTMETER_CONFIG)")
    parser.add_argument(
        "--collector-only",
        action="store_true",
        help="run the headless collector: JSON logs on stdout, Prometheus metrics, "
        "until SIGTERM/SIGINT",
    )
    parser.add_argument(
        "--metrics-port", type=int, metavar="PORT",
        help="port of the collector's /metrics endpoint (default 9108)",
    )
    parser.add_argument(
        "--workers", dest="collector_workers", type=positive_int, metavar="N",
        help="collector processes on one shared subscription (default "
        "IOTMETER_COLLECTOR_WORKERS, 1; 0 there: one per CPU)",
    )
    parser.add_argument(
        "--simulate", choices=("auto", "yes", "no"), default=None,
        help="dashboard: start the demo fleet of simulated meters "
        "(auto: on the embedded defaults, at every start; default IOTMETER_SIMULATE)",
    )
    parser.add_argument(
        "--view-only", action="store_true",
        help="dashboard: start no broker, collector or simulator; show the stores and send "
        "commands through IOTMETER_MQTT_URL (what each `iotmeter serve` session runs)",
    )
    parser.set_defaults(handler=_run_dashboard)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    sim = sub.add_parser("simulate", help="headless simulator of N traction power meters")
    sim.add_argument("--devices", type=positive_int, default=10, metavar="N")
    sim.add_argument("--rate", type=positive_float, default=1.0, metavar="HZ",
                     help="telemetry messages per second per device")
    sim.add_argument("--kind", choices=("dc", "ac", "mixed"), default="mixed")
    sim.add_argument("--faults", metavar="SPEC", default=None,
                     help="e.g. drop=0.01,dup=0.01,reorder=0.01,disconnect=0.001,"
                     "malformed=0.001,clock_skew=2 (see docs/simulator.md)")
    sim.add_argument("--seed", type=int, default=None, help="deterministic physics and faults")
    sim.add_argument("--duration", type=positive_float, default=None, metavar="SECONDS",
                     help="stop after this long (default: until SIGINT/SIGTERM)")
    sim.add_argument("--prefix", default="", help="device id prefix, to run several side by side")
    sim.add_argument("--device-users", action="store_true",
                     help="each meter logs in as its own device id with the password of "
                     "IOTMETER_MQTT_URL (a broker that makes the user the client id needs it)")
    sim.add_argument("--summary", metavar="FILE", default=None,
                     help="on a clean stop, write what each device sent (JSON), to check a run "
                     "against the stores")
    sim.add_argument("--metrics-port", dest="sim_metrics_port", type=int, default=None,
                     metavar="PORT", help="serve the simulator's /metrics on 127.0.0.1:PORT")
    sim.add_argument("--firmware-key", metavar="KEY", default=None,
                     help="the firmware signing public key every simulated meter pins "
                     "(base64 or a key file; default IOTMETER_FIRMWARE_PUBLIC_KEY): they then "
                     "install signed firmware only")
    sim.set_defaults(handler=_run_simulate)

    mig = sub.add_parser("migrate", help="prepare the stores (schema, database, bucket) and exit")
    mig.set_defaults(handler=_run_migrate)

    cfg = sub.add_parser("config", help="print the effective settings with their descriptions")
    cfg.set_defaults(handler=_run_config)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Subcommand groups from other modules (commands, OTA) register here.
_EXTRA_COMMANDS: list[Callable[[Any], None]] = [register_command_group, register_ota_group,
                                                register_admin_commands, register_api,
                                                register_relay, register_broker_commands,
                                                register_serve]


def main(argv: Sequence[str] | None = None) -> int:
    keep_files_private()  # before anything creates a file
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"iotmeter: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except IotmeterError as exc:
        print(f"iotmeter: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
