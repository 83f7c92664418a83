"""The `iotmeter serve` subcommand's arguments; the server itself (aiohttp, textual-serve)
is imported only when the command runs, so `iotmeter --help` stays quick."""

from __future__ import annotations

import sys
from typing import Any


def register_serve(sub: Any) -> None:
    """`iotmeter serve [--host H] [--port P]` (added to cli._EXTRA_COMMANDS)."""
    serve = sub.add_parser(
        "serve", help="the dashboard in a web browser (textual-serve); loopback only unless "
        "--host says otherwise, then a token or an operator API key is required")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--simulate", choices=("auto", "yes", "no"), default=None,
                       help="start the demo fleet (default IOTMETER_SIMULATE)")
    serve.set_defaults(handler=_serve_command)


def _serve_command(args: Any) -> int:
    from iotmeter_tui.backend.config import load_settings

    settings = load_settings(config_file=args.config)
    if not 0 < args.port < 65536:
        print(f"iotmeter serve: --port {args.port} is not a port (1-65535)", file=sys.stderr)
        return 2
    from iotmeter_tui.serve import run_serve

    return run_serve(settings, args.host, args.port, args.config,
                     args.simulate or settings.simulate)
