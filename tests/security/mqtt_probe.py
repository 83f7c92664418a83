"""A blocking paho client for the broker security tests: connect, see what the broker said,
subscribe, publish and collect what arrives."""

from __future__ import annotations

import queue
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt


class Probe:
    """One MQTT 3.1.1 connection. `refused`: the CONNACK's failure, if any;
    `session_present`: what the broker said about the session it resumed."""

    def __init__(self, port: int, user: str | None, password: str | None, client_id: str, *,
                 persistent: bool = False, host: str = "127.0.0.1",
                 ca: Path | None = None, cert: tuple[Path, Path] | None = None,
                 transport: str = "tcp", answer_timeout_s: float = 10.0) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not persistent, protocol=mqtt.MQTTv311,
                                  transport=transport)  # type: ignore[arg-type]
        if user is not None:
            self.client.username_pw_set(user, password)
        if ca is not None:
            context = ssl.create_default_context(cafile=str(ca))
            if cert is not None:
                context.load_cert_chain(str(cert[0]), str(cert[1]))
            self.client.tls_set_context(context)
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.refused: str | None = None
        self.session_present: bool | None = None
        self.disconnected = threading.Event()
        self._answered = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload))
        self.client.on_disconnect = lambda *_args: self.disconnected.set()
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._answered.wait(answer_timeout_s):
            self.close()
            raise AssertionError(f"no CONNACK for {client_id}")

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused = str(reason)
        else:
            self.session_present = bool(flags.session_present)
        self._answered.set()

    def subscribe(self, topic: str) -> int:
        """Subscribe at QoS 1; the granted QoS (128: refused)."""
        granted: queue.Queue[int] = queue.Queue()
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: granted.put(codes[0].value)
        self.client.subscribe(topic, qos=1)
        return granted.get(timeout=5)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(5)

    def received(self, timeout: float = 5.0) -> tuple[str, bytes]:
        return self.messages.get(timeout=timeout)

    def nothing_more(self, wait_s: float = 0.5) -> bool:
        try:
            self.messages.get(timeout=wait_s)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
