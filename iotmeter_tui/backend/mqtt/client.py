"""A small asyncio MQTT 3.1.1 client, built for thousands of connections on one event loop.

paho runs a thread (or a loop call) per client; five thousand simulated meters in one process
need one event loop instead. This client is an asyncio Protocol: no task per connection, the
socket's bytes go straight into the session (`session.py`, shared with the collector's intake),
and everything written during one loop iteration leaves in one `transport.write` (the CONNECT
burst, a replay of buffered messages). The protocol's state and rules live in the session;
this module only moves bytes, runs the keep-alive timer and resolves the futures callers await.

QoS 1 publishes stay in `inflight` until their PUBACK; after a reconnect they are sent again
with the DUP flag, before anything new. Reconnecting is the caller's job (it knows its back-off
and its own offline buffer): `connect()` again on the same client keeps the inflight messages.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from iotmeter_tui.backend.mqtt.address import BrokerAddress
from iotmeter_tui.backend.mqtt.codec import MqttProtocolError, Publish, Will
from iotmeter_tui.backend.mqtt.session import (
    Connected,
    MqttConnectionError,
    MqttConnectionRefused,
    MqttError,
    MqttNotConnected,
    MqttSubscriptionRefused,
    Session,
    Subscribed,
)

__all__ = [
    "MqttClient",
    "MqttConnectionError",
    "MqttConnectionRefused",
    "MqttError",
    "MqttNotConnected",
    "MqttSubscriptionRefused",
]

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 10.0


class _Connection(asyncio.Protocol):
    """One TCP connection's callbacks; forwards to the client while it is the current one."""

    __slots__ = ("_client", "transport")

    def __init__(self, client: MqttClient) -> None:
        self._client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._client._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._lost(self, exc)


class MqttClient:
    """One MQTT session. Callbacks run on the event loop and must not block:
    `on_message(publish)` for each incoming PUBLISH (QoS 1 is acknowledged after it returns),
    `on_puback(packet_id)` when a QoS 1 publish is acknowledged."""

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        *,
        keepalive: int = 60,
        clean_session: bool = True,
        on_message: Callable[[Publish], None] | None = None,
        on_puback: Callable[[int], None] | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.on_message = on_message
        self.on_puback = on_puback
        self.connect_timeout_s = connect_timeout_s
        self.session = Session(
            client_id, keepalive=keepalive, clean_session=clean_session,
            username=address.username, password=address.password,
            handshake_timeout_s=connect_timeout_s,
        )
        self._ssl = ssl_context if ssl_context is not None else address.ssl_context()
        self._conn: _Connection | None = None
        self._closed: asyncio.Future[None] | None = None
        self._connack: asyncio.Future[bool] | None = None
        self._waiters: dict[int, asyncio.Future[Subscribed]] = {}
        self._drained: list[asyncio.Future[None]] = []
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None and self.session.connected

    @property
    def keepalive(self) -> int:
        return self.session.keepalive

    @property
    def inflight(self) -> dict[int, tuple[str, bytes, bool]]:
        """QoS 1 publishes not yet acknowledged, by packet id: (topic, payload, retain)."""
        return self.session.inflight

    @property
    def inflight_count(self) -> int:
        return len(self.session.inflight)

    # --- connecting ----------------------------------------------------------------------

    async def connect(self, will: Will | None = None) -> bool:
        """Open a connection and complete the CONNECT handshake; return session_present.
        Unacknowledged QoS 1 messages from an earlier connection are sent again (DUP set)."""
        if self._conn is not None:
            raise MqttError(f"{self.client_id}: already connected or connecting")
        loop = self._loop = asyncio.get_running_loop()
        address = self.address
        conn = _Connection(self)
        self._conn = conn
        self._closed = loop.create_future()
        self._connack = loop.create_future()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await loop.create_connection(
                    lambda: conn, address.host, address.port, ssl=self._ssl,
                    server_hostname=address.host if self._ssl else None,
                )
                assert conn.transport is not None
                conn.transport.write(self.session.connect(loop.time(), will))
                self.session.sent(loop.time())
                session_present = await self._connack
        except MqttConnectionRefused:
            self._abandon(conn)
            raise
        except (OSError, TimeoutError, MqttConnectionError) as exc:
            self._abandon(conn)
            reason = "timed out" if isinstance(exc, TimeoutError) else (
                str(exc) or type(exc).__name__
            )
            raise MqttConnectionError(f"cannot connect to {address.url}: {reason}") from None
        except BaseException:
            self._abandon(conn)
            raise
        self._schedule_keepalive()
        return session_present

    def _abandon(self, conn: _Connection) -> None:
        if conn.transport is not None:
            conn.transport.abort()
        if self._conn is conn:
            self._teardown(MqttConnectionError("connect abandoned"))

    async def wait_closed(self) -> None:
        """Return once the current connection has ended (at once if there is none)."""
        if self._closed is not None:
            await asyncio.shield(self._closed)

    async def disconnect(self) -> None:
        """Send DISCONNECT and close: the broker discards the Last Will."""
        conn = self._conn
        if conn is None or conn.transport is None:
            return
        if self.connected:
            self._write(self.session.disconnect())
            self._flush()
        conn.transport.close()
        await self.wait_closed()

    def abort(self) -> None:
        """Drop the TCP connection at once, no DISCONNECT: the broker publishes the Last Will."""
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.abort()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every QoS 1 publish is acknowledged; False on timeout or disconnect."""
        if not self.session.inflight:
            return True
        if not self.connected or self._loop is None:
            return False
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._drained.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except (TimeoutError, MqttConnectionError):
            return False
        finally:
            if waiter in self._drained:
                self._drained.remove(waiter)
        return True

    # --- publishing and subscribing -------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Queue a PUBLISH for this loop iteration's write; QoS 1 is tracked until PUBACK."""
        self._write(self.session.publish(topic, payload, qos, retain))

    async def subscribe(self, filters: list[tuple[str, int]]) -> tuple[int, ...]:
        """Subscribe and wait for the SUBACK; its granted QoS per filter."""
        if not self.connected or self._loop is None:
            raise MqttNotConnected(f"{self.client_id}: not connected")
        packet_id, packet = self.session.subscribe(filters, self._loop.time())
        waiter: asyncio.Future[Subscribed] = self._loop.create_future()
        self._waiters[packet_id] = waiter
        self._write(packet)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                ack = await waiter
        except TimeoutError:
            raise MqttConnectionError(f"{self.client_id}: no SUBACK") from None
        finally:
            self._waiters.pop(packet_id, None)
        if ack.refused:
            raise MqttSubscriptionRefused(self.client_id, ack.refused)
        return ack.granted

    # --- writing -------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        conn = self._conn
        if conn is None or conn.transport is None or conn.transport.is_closing():
            # QoS 1 messages are still in `inflight` and will be resent; the rest is lost,
            # as it would be on a real link that just went down.
            self._out.clear()
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        conn.transport.write(data)
        if self._loop is not None:
            self.session.sent(self._loop.time())

    # --- reading -------------------------------------------------------------------------

    def _received(self, conn: _Connection, data: bytes) -> None:
        if conn is not self._conn or self._loop is None:
            return
        try:
            inbound = self.session.receive(data, self._loop.time())
        except MqttConnectionRefused as exc:
            if self._connack is not None and not self._connack.done():
                self._connack.set_exception(exc)
            self.abort()
            return
        except (MqttProtocolError, MqttNotConnected) as exc:
            log.warning("%s: protocol error from broker: %s", self.client_id, exc)
            self.abort()
            return
        if inbound.reply:  # the resend after a reconnect, ahead of anything new
            self._write(inbound.reply)
        for event in inbound.events:
            if isinstance(event, Connected):
                if self._connack is not None and not self._connack.done():
                    self._connack.set_result(event.session_present)
            elif isinstance(event, Subscribed):
                waiter = self._waiters.get(event.packet_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)
        if inbound.acked:
            if self.on_puback is not None:
                for packet_id in inbound.acked:
                    self.on_puback(packet_id)
            if not self.session.inflight and self._drained:
                for drained in self._drained:
                    if not drained.done():
                        drained.set_result(None)
        for message in inbound.publishes:
            self._deliver(message)

    def _deliver(self, message: Publish) -> None:
        try:
            if self.on_message is not None:
                self.on_message(message)
        except Exception:
            # A bug in a handler must not kill the connection or skip the acknowledgement.
            log.exception("%s: on_message failed for %s", self.client_id, message.topic)
        if message.qos == 1 and message.packet_id is not None:
            self._write(self.session.puback(message.packet_id))
        elif message.qos == 2:
            log.warning("%s: QoS 2 message on %s ignored", self.client_id, message.topic)

    # --- keepalive and teardown ----------------------------------------------------------

    def _schedule_keepalive(self) -> None:
        deadline = self.session.next_deadline()
        if deadline is not None and self._loop is not None:
            # Never sooner than 10 ms: a timer may fire a hair before its time, and an early
            # check that finds nothing due must not spin.
            when = max(deadline, self._loop.time() + 0.01)
            self._keepalive_timer = self._loop.call_at(when, self._keepalive_check)

    def _keepalive_check(self) -> None:
        self._keepalive_timer = None
        if not self.connected or self._loop is None:
            return
        try:
            ping = self.session.tick(self._loop.time())
        except MqttConnectionError as exc:
            log.warning("%s: %s, dropping the connection", self.client_id, exc)
            self.abort()
            return
        if ping:
            self._write(ping)
        self._schedule_keepalive()

    def _lost(self, conn: _Connection, exc: Exception | None) -> None:
        if conn is self._conn:
            self._teardown(MqttConnectionError(
                f"{self.client_id}: connection lost" + (f": {exc}" if exc else "")
            ))

    def _teardown(self, error: MqttConnectionError) -> None:
        self.session.connection_lost()
        self._conn = None
        self._out.clear()
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(error)
            self._connack.exception()  # retrieved: nobody may be waiting any more
        waiters: list[asyncio.Future[Any]] = [*self._waiters.values(), *self._drained]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
