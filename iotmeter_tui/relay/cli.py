"""`iotmeter alert-relay [--host H] [--port 9095]`: settings checked at start (one line naming
the variable on a bad one), JSON logs, webhook on POST /webhook beside /metrics, /healthz and
/readyz, until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from iotmeter_tui.backend.config import ConfigError, Settings

log = logging.getLogger(__name__)

DEFAULT_PORT = 9095
WEBHOOK_PATH = "/webhook"


def _secret(value: str | None, file: str | None, variable: str) -> str:
    """A token from its variable or from the file its _FILE variable names (a mounted secret)."""
    if file:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(variable + "_FILE", f"cannot read {file!r}: "
                              f"{exc.strerror or exc}") from None
        if not value:
            raise ConfigError(variable + "_FILE", f"{file!r} is empty")
    if not value:
        raise ConfigError(variable, f"not set (or set {variable}_FILE); the relay needs it")
    return value


def run_alert_relay(args: argparse.Namespace, settings: Settings) -> int:
    from iotmeter_tui.backend import logjson
    from iotmeter_tui.backend.health_server import HealthServer
    from iotmeter_tui.relay.github import GitHubClient
    from iotmeter_tui.relay.metrics import RelayMetrics
    from iotmeter_tui.relay.service import AlertRelay

    if settings.github_repo is None:
        raise ConfigError("IOTMETER_GITHUB_REPO", "not set; name the repository as OWNER/NAME")
    github_token = _secret(settings.github_token, settings.github_token_file,
                           "IOTMETER_GITHUB_TOKEN")
    webhook_token = _secret(settings.alert_relay_token, settings.alert_relay_token_file,
                            "IOTMETER_ALERT_RELAY_TOKEN")
    logjson.configure(settings.log_level)
    metrics = RelayMetrics()
    github = GitHubClient(settings.github_api_url, settings.github_repo, github_token, metrics,
                          budget_s=args.retry_budget)
    relay = AlertRelay(github, webhook_token, metrics, dashboard_url=settings.dashboard_url)
    try:
        server = HealthServer(metrics.registry, relay.readiness, host=args.host, port=args.port,
                              post_routes={WEBHOOK_PATH: relay.handle_webhook})
    except OSError as exc:
        raise ConfigError("--port", f"cannot listen on {args.host}:{args.port}: "
                          f"{exc.strerror or exc}") from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    log.info("alert relay started", extra={
        "event": "relay_started", "listen": f"{args.host}:{server.port}",
        "repo": settings.github_repo, "github_api_url": settings.github_api_url})
    stop.wait()
    server.stop()
    log.info("alert relay stopped", extra={"event": "relay_stopped"})
    return 0


def register_relay(sub: Any) -> None:
    from iotmeter_tui.cli.args import positive_float
    from iotmeter_tui.cli.context import settings_from

    relay = sub.add_parser(
        "alert-relay", help="Alertmanager webhook -> one GitHub issue per alert group",
        description="Serve POST /webhook for Alertmanager (payload v4, bearer token "
        "IOTMETER_ALERT_RELAY_TOKEN) and keep one issue per alert group in "
        "IOTMETER_GITHUB_REPO; /metrics, /healthz and /readyz on the same port.")
    relay.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; 0.0.0.0 in a container)")
    relay.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help=f"port to listen on (default {DEFAULT_PORT})")
    relay.add_argument("--retry-budget", type=positive_float, default=20.0, metavar="SECONDS",
                       help="how long one delivery may retry GitHub before answering 503 "
                       "(Alertmanager then delivers again)")
    relay.set_defaults(handler=lambda args: run_alert_relay(args, settings_from(args)))
