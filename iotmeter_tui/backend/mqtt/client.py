"""A small asyncio MQTT 3.1.1 client, built for thousands of connections on one event loop.

paho runs a thread (or a loop call) per client; five thousand simulated meters in one process
need one event loop instead. This client is an asyncio Protocol: no task per connection, the
socket's bytes go straight into the codec's `Decoder`, and everything written during one loop
iteration leaves in one `transport.write` (the CONNECT burst, a replay of buffered messages).

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

from iotmeter_tui.backend.errors import IotmeterError
from iotmeter_tui.backend.mqtt import codec
from iotmeter_tui.backend.mqtt.address import BrokerAddress
from iotmeter_tui.backend.mqtt.codec import (
    CONNACK_CODES,
    SUBACK_FAILURE,
    ConnAck,
    MqttProtocolError,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Will,
)

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 10.0


class MqttError(IotmeterError):
    """Base of the client's errors."""


class MqttConnectionError(MqttError):
    """The broker could not be reached or the connection dropped: retry after a back-off."""


class MqttConnectionRefused(MqttError):
    """The broker answered CONNACK with a refusal; `return_code` says why."""

    def __init__(self, return_code: int) -> None:
        reason = CONNACK_CODES.get(return_code, "unknown reason")
        super().__init__(f"broker refused the connection: {reason} (code {return_code})")
        self.return_code = return_code


class MqttNotConnected(MqttError):
    """publish() or subscribe() while the client has no connection."""


class _Connection(asyncio.Protocol):
    """One TCP connection's callbacks; forwards to the client while it is the current one."""

    __slots__ = ("_client", "_decoder", "transport")

    def __init__(self, client: MqttClient) -> None:
        self._client = client
        self._decoder = codec.Decoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            packets = self._decoder.feed(data)
        except MqttProtocolError as exc:
            log.warning("%s: protocol error from broker: %s", self._client.client_id, exc)
            if self.transport is not None:
                self.transport.abort()
            return
        self._client._received(self, packets)

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
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.on_message = on_message
        self.on_puback = on_puback
        self.connect_timeout_s = connect_timeout_s
        self._ssl = ssl_context if ssl_context is not None else address.ssl_context()
        self._conn: _Connection | None = None
        self._connected = False
        self._closed: asyncio.Future[None] | None = None
        self._connack: asyncio.Future[ConnAck] | None = None
        # Insertion-ordered, so a resend after reconnect keeps the original order.
        self.inflight: dict[int, tuple[str, bytes, bool]] = {}
        self._waiters: dict[int, asyncio.Future[SubAck]] = {}
        self._drained: list[asyncio.Future[None]] = []
        self._next_id = 0
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._last_write = 0.0
        self._last_read = 0.0
        self._ping_sent_at: float | None = None
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def inflight_count(self) -> int:
        return len(self.inflight)

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
                conn.transport.write(codec.encode_connect(
                    self.client_id, keepalive=self.keepalive, clean_session=self.clean_session,
                    will=will, username=address.username, password=address.password,
                ))
                ack = await self._connack
        except (OSError, TimeoutError, MqttConnectionError) as exc:
            self._abandon(conn)
            reason = "timed out" if isinstance(exc, TimeoutError) else (
                str(exc) or type(exc).__name__
            )
            raise MqttConnectionError(f"cannot connect to {address.url}: {reason}") from None
        except BaseException:
            self._abandon(conn)
            raise
        if ack.return_code:
            self._abandon(conn)
            raise MqttConnectionRefused(ack.return_code)
        self._connected = True
        self._last_read = self._last_write = loop.time()
        self._ping_sent_at = None
        for packet_id, (topic, payload, retain) in self.inflight.items():
            self._write(codec.encode_publish(
                topic, payload, 1, retain=retain, dup=True, packet_id=packet_id
            ))
        if self.keepalive:
            self._keepalive_timer = loop.call_later(self.keepalive / 2, self._keepalive_check)
        return ack.session_present

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
        if self._connected:
            self._write(codec.encode_disconnect())
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
        if not self.inflight:
            return True
        if not self._connected or self._loop is None:
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
        if not self._connected:
            raise MqttNotConnected(f"{self.client_id}: not connected")
        if qos:
            packet_id = self._allocate_id()
            self.inflight[packet_id] = (topic, payload, retain)
            self._write(codec.encode_publish(
                topic, payload, qos, retain=retain, packet_id=packet_id
            ))
        else:
            self._write(codec.encode_publish(topic, payload, 0, retain=retain))

    async def subscribe(self, filters: list[tuple[str, int]]) -> tuple[int, ...]:
        """Subscribe and wait for the SUBACK; its granted QoS per filter."""
        if not self._connected or self._loop is None:
            raise MqttNotConnected(f"{self.client_id}: not connected")
        packet_id = self._allocate_id()
        waiter: asyncio.Future[SubAck] = self._loop.create_future()
        self._waiters[packet_id] = waiter
        self._write(codec.encode_subscribe(packet_id, filters))
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                ack = await waiter
        except TimeoutError:
            raise MqttConnectionError(f"{self.client_id}: no SUBACK") from None
        finally:
            self._waiters.pop(packet_id, None)
        if SUBACK_FAILURE in ack.return_codes:
            refused = [f for (f, _), c in zip(filters, ack.return_codes, strict=False)
                       if c == SUBACK_FAILURE]
            raise MqttError(f"{self.client_id}: broker refused subscription to {refused}")
        return ack.return_codes

    def _allocate_id(self) -> int:
        # Ids in use by an unacknowledged publish or a pending SUBSCRIBE are skipped.
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self.inflight and self._next_id not in self._waiters:
                return self._next_id
        raise MqttError(f"{self.client_id}: all 65535 packet ids are in flight")

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
            self._last_write = self._loop.time()

    # --- reading -------------------------------------------------------------------------

    def _received(self, conn: _Connection, packets: list[codec.Packet]) -> None:
        if conn is not self._conn:
            return
        if self._loop is not None:
            self._last_read = self._loop.time()
        for packet in packets:
            # Most frequent first: a device mostly hears PUBACKs, a collector PUBLISHes.
            if isinstance(packet, PubAck):
                packet_id = packet.packet_id
                if self.inflight.pop(packet_id, None) is not None:
                    if self.on_puback is not None:
                        self.on_puback(packet_id)
                    if not self.inflight and self._drained:
                        for drained in self._drained:
                            if not drained.done():
                                drained.set_result(None)
            elif isinstance(packet, Publish):
                self._deliver(packet)
            elif isinstance(packet, ConnAck):
                if self._connack is not None and not self._connack.done():
                    self._connack.set_result(packet)
            elif isinstance(packet, SubAck):
                waiter = self._waiters.get(packet.packet_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(packet)
            elif isinstance(packet, PingResp):
                self._ping_sent_at = None
            else:
                log.debug("%s: ignoring %s", self.client_id, type(packet).__name__)

    def _deliver(self, message: Publish) -> None:
        try:
            if self.on_message is not None:
                self.on_message(message)
        except Exception:
            # A bug in a handler must not kill the connection or skip the acknowledgement.
            log.exception("%s: on_message failed for %s", self.client_id, message.topic)
        if message.qos == 1 and message.packet_id is not None:
            self._write(codec.encode_puback(message.packet_id))
        elif message.qos == 2:
            log.warning("%s: QoS 2 message on %s ignored", self.client_id, message.topic)

    # --- keepalive and teardown ----------------------------------------------------------

    def _keepalive_check(self) -> None:
        loop = self._loop
        if not self._connected or loop is None or self._conn is None:
            return
        now = loop.time()
        if self._ping_sent_at is not None and now - self._ping_sent_at > self.keepalive:
            log.warning("%s: no PINGRESP in %s s, dropping the connection",
                        self.client_id, self.keepalive)
            self.abort()
            return
        if now - self._last_write >= self.keepalive / 2 and self._ping_sent_at is None:
            self._ping_sent_at = now
            self._write(codec.encode_pingreq())
        self._keepalive_timer = loop.call_later(self.keepalive / 2, self._keepalive_check)

    def _lost(self, conn: _Connection, exc: Exception | None) -> None:
        if conn is self._conn:
            self._teardown(MqttConnectionError(
                f"{self.client_id}: connection lost" + (f": {exc}" if exc else "")
            ))

    def _teardown(self, error: MqttConnectionError) -> None:
        self._connected = False
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
