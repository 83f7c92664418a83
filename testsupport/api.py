"""The REST API served for tests and benches: a live API's address, its stores and keys of
every role (and a revoked one), and a werkzeug server thread to serve an app on loopback."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import requests
from werkzeug.serving import make_server

from iotmeter_tui.backend.apikeys import ApiKeyService
from iotmeter_tui.backend.config import Settings
from iotmeter_tui.backend.stores import Stores
from iotmeter_tui.backend.stores.metadata import API_KEY_ROLES


@dataclass
class LiveApi:
    url: str
    settings: Settings
    stores: Stores
    keys: dict[str, str] = field(default_factory=dict)  # role (or "revoked") -> secret
    session: requests.Session = field(default_factory=requests.Session)

    def call(self, method: str, path: str, *, key: str | None = "admin",
             **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key is not None:
            headers.setdefault("Authorization", f"Bearer {self.keys.get(key, key)}")
        return self.session.request(method, self.url + path, headers=headers, timeout=30,
                                    **kwargs)


def make_keys(stores: Stores) -> dict[str, str]:
    service = ApiKeyService(stores.metadata)
    keys = {role: service.create(f"test-{role}", role)[1] for role in API_KEY_ROLES}
    keys["revoked"] = service.create("test-revoked", "admin")[1]
    service.revoke("test-revoked")
    return keys


@dataclass
class ThreadServer:
    app: Any
    server: Any = None
    thread: threading.Thread | None = None

    def start(self) -> str:
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        if self.thread is not None:
            self.thread.join(10)
