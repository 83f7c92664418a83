"""One logging setup: JSON lines on stdout, one per event worth reading (never per message).

Code logs with `extra={"event": "...", ...}`; every extra field lands in the JSON object."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from iotmeter_tui.backend.redaction import redact

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Whatever a line holds (an error quoting a store URL, a driver's message), no
        # password leaves in it: logs end up in container logs and tickets.
        return redact(json.dumps(entry, default=str))


def configure(level: str = "INFO", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # paho and urllib3 are chatty at INFO about things the collector already reports.
    for noisy in ("urllib3", "paho"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
