"""TLS client contexts: one place that decides which certificates a server must present.

Every client (MQTT intake and publishers, InfluxDB, S3, the simulator's firmware download)
verifies the server's certificate and host name against the system's CAs plus, when
`IOTMETER_TLS_CA_FILE` names one, a private CA. The CA file is chosen once from the settings
(`use_ca_file`), so adapters deep in the stack need no extra argument.
"""

from __future__ import annotations

import ssl
from pathlib import Path

_ca_file: Path | None = None


def use_ca_file(path: Path | None) -> None:
    """Trust `path` (PEM, one or more CA certificates) besides the system's CAs; None: the
    system's CAs only. Called by `load_settings`."""
    global _ca_file
    _ca_file = path


def ca_file() -> Path | None:
    return _ca_file


def client_context() -> ssl.SSLContext:
    """A verifying client context: certificate chain and host name checked, TLS 1.2+."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if _ca_file is not None:
        context.load_verify_locations(cafile=str(_ca_file))
    return context
