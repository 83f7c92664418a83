"""What every `iotmeter` subcommand shares: its settings, its stores, the broker it talks to,
and the way it prints (results on stdout, notes on stderr, exit statuses scripts can test).
The subcommand modules import this one, and the package's `main` imports them: no cycle."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

from iotmeter_tui.backend.config import Settings, load_settings
from iotmeter_tui.backend.home import prepare_home
from iotmeter_tui.backend.terminal import safe_text

EXIT_OK: Final = 0
EXIT_NOT_DONE: Final = 1
EXIT_USAGE: Final = 2


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings for this run (file, environment, `--metrics-port`, `--workers`), with a
    private home."""
    overrides: dict[str, Any] = {}
    if getattr(args, "metrics_port", None) is not None:
        overrides["metrics_port"] = str(args.metrics_port)
    if getattr(args, "collector_workers", None) is not None:
        overrides["collector_workers"] = str(args.collector_workers)
    settings = load_settings(config_file=args.config, overrides=overrides)
    prepare_home(settings.home)
    return settings


def command_settings(args: argparse.Namespace) -> Settings:
    """settings_from() for a one-shot command, whose output is for people and scripts."""
    settings = settings_from(args)
    # A failure is the one line main() prints, not the drivers' retry chatter (psycopg's pool
    # logs every failed connect). DEBUG shows it all.
    if settings.log_level == "DEBUG":
        logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
    else:
        logging.getLogger().addHandler(logging.NullHandler())
    return settings


@contextmanager
def opened_stores(settings: Settings) -> Iterator[Any]:
    from iotmeter_tui.backend.stores import open_stores

    stores = open_stores(settings)
    try:
        yield stores
    finally:
        stores.close()


def broker_url(settings: Settings) -> str | None:
    """The configured broker, or the embedded one a running iotmeter started on this home."""
    if settings.mqtt_url is not None:
        return settings.mqtt_url
    from iotmeter_tui.backend.broker import running_broker_url

    return running_broker_url(settings.home / "broker")


def note(text: str) -> None:
    print(text, file=sys.stderr)


def when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(rows: list[list[str]]) -> None:
    # Device-supplied text (command details, OTA errors) reaches a terminal only filtered.
    rows = [[safe_text(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                 strict=True)).rstrip())
