"""`iotmeter api` on the command line. Kept apart from server.py so `iotmeter --help` does not
import gunicorn."""

from __future__ import annotations

import argparse
from typing import Any


def register_api(sub: Any) -> None:
    api = sub.add_parser(
        "api", help="the device-manager REST API (/api/v1, /healthz, /readyz, /metrics)",
        description="Serve the REST API with gunicorn on the configured stores (the embedded "
        "ones by default). Binds 127.0.0.1 unless told otherwise; SIGTERM drains and exits 0. "
        "docs/api.md describes every endpoint.")
    api.add_argument("--host", metavar="H", help="address to bind (IOTMETER_API_HOST, "
                     "default 127.0.0.1)")
    api.add_argument("--port", type=int, metavar="PORT",
                     help="port (IOTMETER_API_PORT, default 8080)")
    api.add_argument("--workers", type=int, metavar="N",
                     help="gunicorn worker processes (IOTMETER_API_WORKERS, default 1)")
    api.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from iotmeter_tui.api.server import run_api
    from iotmeter_tui.backend.config import load_settings

    overrides = {"api_host": args.host, "api_port": args.port, "api_workers": args.workers}
    settings = load_settings(config_file=args.config,
                             overrides={k: None if v is None else str(v)
                                        for k, v in overrides.items()})
    return run_api(settings)
