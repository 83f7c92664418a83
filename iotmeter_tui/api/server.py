"""`iotmeter api`: the application served by gunicorn, started from Python (a custom
BaseApplication) so a fresh clone runs the same process model as production. gthread workers
answer several requests at once (a `?wait=` command, a long NDJSON stream); SIGTERM lets
in-flight requests finish (gunicorn's graceful timeout) and exits 0."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication

from iotmeter_tui.backend.config import Settings

THREADS_PER_WORKER = 8
GRACEFUL_TIMEOUT_S = 30
# A worker silent this long is restarted: above the longest ?wait= (60 s) plus a margin.
WORKER_TIMEOUT_S = 120


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ApiServer(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "bind": [bind_address(s.api_host, s.api_port)],
            "workers": s.api_workers,
            "worker_class": "gthread",
            "threads": THREADS_PER_WORKER,
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "timeout": WORKER_TIMEOUT_S,
            "proc_name": "iotmeter-api",
            # gunicorn's control socket lives at one path per user: two servers on one
            # machine would fight over it, and nothing here uses it.
            "control_socket_disable": True,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": s.log_level.lower(),
            "child_exit": _child_exit,
            "worker_exit": _worker_exit,
            "post_worker_init": _post_worker_init,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from iotmeter_tui.api.app import create_app

        return create_app(self.settings)


def _post_worker_init(worker: Any) -> None:
    import logging

    from iotmeter_tui.api.app import RequestIdFilter
    from iotmeter_tui.backend import logjson

    logjson.configure(worker.cfg.loglevel.upper() if worker.cfg.loglevel else "INFO")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())


def _worker_exit(_server: Any, worker: Any) -> None:
    # After the worker's last request: the broker connection and the stores close cleanly.
    app = getattr(worker, "wsgi", None)
    context = getattr(app, "extensions", {}).get("iotmeter")
    if context is not None:
        context.close()


def _child_exit(_server: Any, worker: Any) -> None:
    # A dead worker's live gauges (in flight) must stop counting in the sum.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def run_api(settings: Settings) -> int:
    metrics_dir = None
    if settings.api_workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Set before prometheus_client is imported anywhere in this process, so every worker
        # (forked from here) writes its samples where /metrics reads them all.
        metrics_dir = tempfile.mkdtemp(prefix="iotmeter-api-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        ApiServer(settings).run()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
