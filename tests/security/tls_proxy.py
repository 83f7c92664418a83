"""A TLS-terminating TCP proxy on loopback, for servers that cannot serve TLS with a given
certificate themselves (moto's S3 server): clients speak TLS to it, it speaks plain TCP on."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path


class TlsProxy:
    def __init__(self, cert: Path, key: Path, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(str(cert), str(key))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self._context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()  # the client did not trust us: what the refusal tests expect
            return
        server = socket.create_connection(self.upstream)
        threading.Thread(target=_pump, args=(server, client), daemon=True).start()
        _pump(client, server)

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
