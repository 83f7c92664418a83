"""`iotmeter simulate`: the headless simulator. `run_simulate` is what the main CLI calls;
`main` is the same with its own flags, for `python -m iotmeter_tui.backend.simulator`.

SIGINT or SIGTERM stop it like a power-down with a hold-up supply: every device delivers what
it holds, publishes a retained status offline and disconnects, and the state file is saved;
exit 0. A second signal, or SIGKILL, is a power cut: the broker publishes the Last Wills.

With `summary`, a clean stop also writes a JSON object device_id -> what that device sent
(`SimulatedMeter.summary`: boot, seq range, counts per message type, what was not delivered),
so a run can be checked message for message against what the collector stored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from iotmeter_tui.backend.broker import BrokerError, EmbeddedBroker
from iotmeter_tui.backend.config import ConfigError, load_settings
from iotmeter_tui.backend.control.signing import parse_public_key
from iotmeter_tui.backend.errors import IotmeterError
from iotmeter_tui.backend.mqtt.address import BrokerAddress
from iotmeter_tui.backend.redaction import redact
from iotmeter_tui.backend.simulator.faults import FaultSpec, FaultSpecError
from iotmeter_tui.backend.simulator.fleet import (
    DEFAULT_HEARTBEAT_S,
    KINDS,
    Fleet,
    FleetStats,
    raise_open_file_limit,
)
from iotmeter_tui.backend.simulator.metrics import SimulatorMetrics

log = logging.getLogger("iotmeter_tui.backend.simulator")

EXIT_USAGE = 2
EXIT_FAILURE = 1
STATS_EVERY_S = 10.0


def run_simulate(
    devices: int,
    rate: float,
    kind: str = "mixed",
    faults: str | None = None,
    seed: int | None = None,
    duration: float | None = None,
    prefix: str = "",
    mqtt_url: str | None = None,
    home: str | Path | None = None,
    *,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    summary: str | Path | None = None,
    metrics_port: int | None = None,
    firmware_key: str | None = None,
    device_users: bool = False,
) -> int:
    """Simulate `devices` meters until SIGINT/SIGTERM or `duration` seconds; the exit code.
    No `mqtt_url`: a private mosquitto is started and its URL logged. No `home`: the
    configured IOTMETER_HOME. `summary`: where to write the per-device account on exit.
    `firmware_key`: the signing public key every meter pins (base64 or a key file); with
    one, meters install only firmware signed with its private key."""
    _ensure_logging()
    try:
        spec = FaultSpec.parse(faults)
        if devices <= 0:
            raise ValueError(f"--devices {devices} must be greater than 0")
        if not rate > 0:
            raise ValueError(f"--rate {rate} must be greater than 0")
        if kind not in KINDS:
            raise ValueError(f"--kind {kind!r} is not one of {', '.join(KINDS)}")
        if duration is not None and not duration > 0:
            raise ValueError(f"--duration {duration} must be greater than 0")
        if not heartbeat_s > 0:
            raise ValueError(f"heartbeat {heartbeat_s} s must be greater than 0")
        address = BrokerAddress.parse(mqtt_url) if mqtt_url else None
        if device_users and (address is None or address.password is None):
            raise ValueError("--device-users needs IOTMETER_MQTT_URL with the meters' password")
        home_dir = Path(home) if home is not None else load_settings().home
        summary_path = None if summary is None else Path(summary)
        try:
            pinned = None if firmware_key is None else parse_public_key(firmware_key)
        except ValueError as exc:
            raise ValueError(f"--firmware-key: {exc}") from None
        if summary_path is not None and not summary_path.parent.is_dir():
            raise ValueError(f"--summary {summary}: no directory {summary_path.parent}")
        metrics = _serve_metrics(metrics_port) if metrics_port is not None else None
    except (FaultSpecError, ConfigError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)

    seed = secrets.randbits(32) if seed is None else seed
    try:
        raise_open_file_limit(devices)
        if address is not None:
            return asyncio.run(_simulate(address, home_dir, devices, rate, kind, spec, seed,
                                         duration, prefix, heartbeat_s, summary_path, metrics,
                                         pinned, device_users))
        with tempfile.TemporaryDirectory(prefix="iotmeter-sim-broker-") as broker_dir, \
                EmbeddedBroker(broker_dir) as broker:
            # Plain logging here (not logjson): the URL's password is redacted by hand.
            log.info("no IOTMETER_MQTT_URL: private broker at %s", redact(broker.url))
            return asyncio.run(_simulate(BrokerAddress.parse(broker.url), home_dir, devices,
                                         rate, kind, spec, seed, duration, prefix, heartbeat_s,
                                         summary_path, metrics, pinned))
    except BrokerError as exc:
        return _fail(str(exc), EXIT_FAILURE)
    except IotmeterError as exc:
        return _fail(str(exc), EXIT_FAILURE)


async def _simulate(
    address: BrokerAddress, home: Path, devices: int, rate: float, kind: str, faults: FaultSpec,
    seed: int, duration: float | None, prefix: str, heartbeat_s: float,
    summary: Path | None = None, metrics: SimulatorMetrics | None = None,
    firmware_key: Ed25519PublicKey | None = None, device_users: bool = False,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fleet = Fleet(address, home, seed=seed, prefix=prefix, heartbeat_s=heartbeat_s,
                  faults=faults, firmware_key=firmware_key, device_users=device_users)
    await fleet.start()
    exporter = None if metrics is None else asyncio.create_task(_export(fleet, metrics))
    try:
        ids = await fleet.add(devices, kind, rate)
        log.info("simulating %d %s meters (%s .. %s) at %g/s on %s, seed %d, faults %s",
                 len(ids), kind, ids[0], ids[-1], rate, address.url, seed, faults)
        deadline = None if duration is None else loop.time() + duration
        while not stop.is_set():
            wait = STATS_EVERY_S if deadline is None else min(STATS_EVERY_S,
                                                              deadline - loop.time())
            if wait <= 0:
                break
            try:
                async with asyncio.timeout(wait):
                    await stop.wait()
            except TimeoutError:
                log.info("%s", describe(fleet.stats()))
    finally:
        # From here a second signal is a power cut: the default handlers come back.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if exporter is not None:
            exporter.cancel()
        log.info("stopping: powering %d devices down", len(fleet.devices))
        await fleet.close(graceful=True)
        log.info("stopped; %s", describe(fleet.stats()))
    if summary is not None:  # a clean stop only: an error above leaves no partial account
        try:
            write_summary(summary, fleet.summary())
        except OSError as exc:
            return _fail(f"--summary {summary}: {exc.strerror or exc}", EXIT_FAILURE)
        log.info("per-device summary of %d devices written to %s", len(fleet.devices),
                 summary)
    return 0


async def _export(fleet: Fleet, metrics: SimulatorMetrics) -> None:
    while True:
        metrics.update(fleet.stats())
        await asyncio.sleep(1.0)


def _serve_metrics(port: int) -> SimulatorMetrics:
    """/metrics (with /healthz and /readyz) on 127.0.0.1:`port`; ValueError if it cannot."""
    from iotmeter_tui.backend.health_server import HealthServer

    metrics = SimulatorMetrics()
    try:
        HealthServer(metrics.registry, list, host="127.0.0.1", port=port).start()
    except OSError as exc:
        raise ValueError(f"--metrics-port {port}: {exc.strerror or exc}") from None
    return metrics


def write_summary(path: Path, devices: dict[str, dict[str, Any]]) -> None:
    """Write the per-device account atomically: a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(devices, separators=(",", ":")) + "\n")
    os.replace(partial, path)


def describe(stats: FleetStats) -> str:
    """One log line of fleet figures."""
    faults = ",".join(f"{k}={v}" for k, v in sorted(stats.faults.items())) or "none"
    return (
        f"devices={stats.devices} online={stats.online} acked/s={stats.acked_per_s:.1f} "
        f"produced={stats.produced} acked={stats.acked} buffered={stats.buffered} "
        f"buffer_dropped={stats.buffer_dropped} lost_at_power_off={stats.lost_at_power_off} "
        f"reconnects={stats.connection_losses} connect_failures={stats.connect_failures} "
        f"late_ticks={stats.late_ticks} faults={faults}"
    )


def _fail(message: str, code: int) -> int:
    print(f"iotmeter simulate: {message}", file=sys.stderr)
    return code


def _ensure_logging() -> None:
    # The main CLI may have set logging up already; if not, figures go to stderr as the same
    # JSON lines as every other process (backend/logjson.py).
    if not logging.getLogger().handlers:
        from iotmeter_tui.backend import logjson

        logjson.configure("INFO", stream=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    # The argument types of `iotmeter simulate`: one rule for both command lines.
    from iotmeter_tui.cli.args import positive_float, positive_int

    parser = argparse.ArgumentParser(
        prog="python -m iotmeter_tui.backend.simulator",
        description="Simulate traction power meters over MQTT (see docs/simulator.md).",
    )
    parser.add_argument("--devices", type=positive_int, default=10, metavar="N")
    parser.add_argument("--rate", type=positive_float, default=1.0, metavar="HZ",
                        help="telemetry messages per second per device")
    parser.add_argument("--kind", choices=KINDS, default="mixed")
    parser.add_argument("--faults", metavar="SPEC", default=None,
                        help="drop=P,dup=P,reorder=P,disconnect=P,malformed=P,clock_skew=S")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--duration", type=positive_float, default=None, metavar="SECONDS")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--mqtt-url", default=None,
                        help="broker URL (default IOTMETER_MQTT_URL, else a private broker)")
    parser.add_argument("--home", default=None, help="state directory (default IOTMETER_HOME)")
    parser.add_argument("--heartbeat", type=positive_float, default=DEFAULT_HEARTBEAT_S,
                        metavar="SECONDS", help="seconds between hello heartbeats")
    parser.add_argument("--firmware-key", default=None, metavar="KEY",
                        help="signing public key the meters pin (base64 or a key file; "
                        "default IOTMETER_FIRMWARE_PUBLIC_KEY): signed firmware only")
    parser.add_argument("--device-users", action="store_true",
                        help="each meter logs in as its own device id with the URL's password")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mqtt_url, firmware_key = args.mqtt_url, args.firmware_key
    if mqtt_url is None or firmware_key is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            return _fail(str(exc), EXIT_USAGE)
        mqtt_url = mqtt_url or settings.mqtt_url
        firmware_key = firmware_key or settings.firmware_public_key
    return run_simulate(
        devices=args.devices, rate=args.rate, kind=args.kind, faults=args.faults,
        seed=args.seed, duration=args.duration, prefix=args.prefix, mqtt_url=mqtt_url,
        home=args.home, heartbeat_s=args.heartbeat, firmware_key=firmware_key,
        device_users=args.device_users,
    )


if __name__ == "__main__":
    raise SystemExit(main())
