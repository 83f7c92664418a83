"""What a worker process serves from: the settings, the stores (opened on first use, after
gunicorn forked the worker), and the services the CLI and the dashboard use too."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from iotmeter_tui.backend.apikeys import ApiKeyService
from iotmeter_tui.backend.audit import AuditLog
from iotmeter_tui.backend.broker_admin import device_credentials
from iotmeter_tui.backend.config import Settings
from iotmeter_tui.backend.control.commands import CommandService
from iotmeter_tui.backend.control.ota import OtaService
from iotmeter_tui.backend.control.publisher import ServerPublisher
from iotmeter_tui.backend.control.signing import configured_public_key
from iotmeter_tui.backend.devices import DeviceService
from iotmeter_tui.backend.stores import Stores, open_stores

log = logging.getLogger(__name__)

# How long a command send waits for the broker before leaving the command to the collector.
CONNECT_WAIT_S = 2.0
# A broker that could not be found is looked for again after this long, not on every send.
BROKER_RETRY_S = 30.0


class ApiContext:
    def __init__(self, settings: Settings, stores: Stores | None = None) -> None:
        self.settings = settings
        self._stores = stores
        self._owns_stores = stores is None
        self._lock = threading.RLock()  # services are made under it and open the stores
        self._publisher: ServerPublisher | None = None
        self._publisher_tried_at = 0.0
        self._services: dict[str, Any] = {}

    @property
    def stores(self) -> Stores:
        with self._lock:
            if self._stores is None:
                self._stores = open_stores(self.settings)
            return self._stores

    def _service(self, name: str, make: Any) -> Any:
        service = self._services.get(name)
        if service is None:
            with self._lock:
                service = self._services.get(name)
                if service is None:
                    service = self._services[name] = make()
        return service

    @property
    def commands(self) -> CommandService:
        # Like `iotmeter command send`: published at once when a broker answers (the
        # configured one, or the embedded broker a running dashboard started on this home);
        # otherwise stored, and the running collector's dispatcher delivers it.
        service: CommandService = self._service("commands", lambda: CommandService(
            self.stores.metadata, None, redeliver_after_s=self.settings.redeliver_after_s))
        if service.publisher is None:
            service.publisher = self._find_publisher()
        return service

    @property
    def ota(self) -> OtaService:
        # With IOTMETER_FIRMWARE_PUBLIC_KEY an upload must carry a signature that verifies:
        # the API is no way around the check `iotmeter ota upload` makes.
        return self._service("ota", lambda: OtaService(
            self.stores.metadata, self.stores.archive,
            public_key=configured_public_key(self.settings.firmware_public_key)))

    @property
    def audit(self) -> AuditLog:
        return self._service("audit", lambda: AuditLog(self.stores.metadata))

    @property
    def apikeys(self) -> ApiKeyService:
        return self._service("apikeys", lambda: ApiKeyService(self.stores.metadata))

    @property
    def devices(self) -> DeviceService:
        # With IOTMETER_MQTT_ADMIN_URL a new device gets its broker client (the password is in
        # the 201 response, once) and a deleted one loses it, as with `iotmeter device add|rm`.
        return self._service("devices", lambda: DeviceService(
            self.stores.metadata, self.commands, credentials=device_credentials(self.settings),
            audit=None))

    def _find_publisher(self) -> ServerPublisher | None:
        with self._lock:
            if self._publisher is not None:
                return self._publisher
            now = time.monotonic()
            if self._publisher_tried_at and now - self._publisher_tried_at < BROKER_RETRY_S:
                return None
            self._publisher_tried_at = now
            url = self.settings.mqtt_url
            if url is None:
                from iotmeter_tui.backend.broker import running_broker_url

                url = running_broker_url(self.settings.home / "broker")
            if url is None:
                return None
            publisher = ServerPublisher(url, f"iotmeter-api-{time.time_ns():x}")
            if not publisher.wait_connected(CONNECT_WAIT_S):
                log.warning("broker not reachable; commands wait for the collector",
                            extra={"event": "api_broker_unreachable",
                                   "error": publisher.last_error or "no answer"})
            self._publisher = publisher
            return publisher

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
        if self._owns_stores and self._stores is not None:
            self._stores.close()
