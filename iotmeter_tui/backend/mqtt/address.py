"""Where the MQTT broker is and how to reach it: host, port, credentials and TLS, from one
mqtt:// or mqtts:// URL. Every MQTT client of the project (the asyncio client, the collector's
intake, the paho sessions) starts from a `BrokerAddress`, so the TLS set-up is decided here once.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from iotmeter_tui.backend import tls
from iotmeter_tui.backend.redaction import redact

MQTT_PORT = 1883
MQTTS_PORT = 8883


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker is, parsed from mqtt://user:pass@host:port (mqtts:// for TLS)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"broker URL {redact(url)!r} must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker URL {redact(url)!r} names no host")
        secure = parts.scheme == "mqtts"
        try:
            port = parts.port or (MQTTS_PORT if secure else MQTT_PORT)
        except ValueError:
            raise ValueError(f"broker URL {redact(url)!r} has a bad port") from None
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=secure,
        )

    @property
    def url(self) -> str:
        """The URL without credentials, safe to log."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The verifying client context for mqtts:// (the project's CA setting, `tls.py`);
        None for plain mqtt://. A new context each call: callers may adjust their own."""
        return tls.client_context() if self.tls else None
