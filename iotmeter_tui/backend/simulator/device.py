"""One simulated traction power meter: its MQTT session, boot and seq, offline buffer,
commands and OTA. The fleet's scheduler calls `sample()` and `heartbeat()`; everything else
reacts to the connection and to messages from the server.

Messages go out in seq order. While the device is offline, or its in-flight window is full,
they queue in a bounded buffer (oldest dropped beyond the bound, counted and logged) and are
replayed in order, with their original seq and ts, once it is back. The one exception is the
hello that follows each connect: the protocol puts it right after the online status, ahead of
the replay, so the server knows the device before its backlog arrives.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from iotmeter_tui.backend import protocol
from iotmeter_tui.backend.control import signing
from iotmeter_tui.backend.mqtt.address import BrokerAddress
from iotmeter_tui.backend.mqtt.client import MqttClient, MqttError
from iotmeter_tui.backend.mqtt.codec import Publish, Will
from iotmeter_tui.backend.simulator.faults import FaultInjector
from iotmeter_tui.backend.simulator.firmware import FirmwareError, fetch_firmware
from iotmeter_tui.backend.simulator.physics import Feeder, FeederMeter
from iotmeter_tui.backend.simulator.state import DeviceRecord

log = logging.getLogger(__name__)

MODEL: Final = "iotmeter-sim"
DEFAULT_FW_VERSION: Final = "1.0.0"
BUFFER_LIMIT: Final = 10_000
INFLIGHT_WINDOW: Final = 200  # unacknowledged QoS 1 publishes before new ones queue
KEEPALIVE_S: Final = 30
BACKOFF_MIN_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
DRAIN_TIMEOUT_S: Final = 5.0
MIN_INTERVAL_S: Final = 0.01
MAX_INTERVAL_S: Final = 86_400.0
MIN_HEARTBEAT_S: Final = 0.1
REMEMBERED_IDS: Final = 1024  # command and campaign ids kept in memory for idempotency
PERSISTED_COMMAND_IDS: Final = 32  # kept across simulator restarts too (the protocol's minimum)


@dataclass(slots=True)
class DeviceConfig:
    """What `set_interval` and `set_config` change."""

    interval_s: float
    heartbeat_s: float
    report_temperature: bool = True


@dataclass(slots=True)
class DeviceCounters:
    produced: int = 0  # messages given a seq (published, buffered or dropped by a fault)
    boots: int = 0  # power-ons in this run
    published: int = 0  # PUBLISH packets written: replays, duplicates and garbage included
    acked: int = 0  # PUBACKs received
    buffer_dropped: int = 0  # oldest buffered messages discarded beyond the bound
    lost_at_power_off: int = 0  # still buffered when the device was switched off for good
    connects: int = 0
    connect_failures: int = 0
    connection_losses: int = 0
    commands: int = 0
    bad_server_messages: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    produced_by_type: Counter[str] = field(default_factory=Counter)  # `produced` per msg_type


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A snapshot of one device for the dashboard's simulator screen."""

    device_id: str
    device_type: str
    supply_system: str
    powered: bool
    online: bool
    boot: int
    seq: int
    fw_version: str
    interval_s: float
    heartbeat_s: float
    buffered: int
    inflight: int
    published: int
    acked: int
    last_reading: dict[str, float]


class CommandRejected(ValueError):
    """A command's parameters are refused; the text is the ack's detail."""


class SimulatedMeter:
    def __init__(
        self,
        device_id: str,
        system: Feeder,
        record: DeviceRecord,
        meter: FeederMeter,
        *,
        address: BrokerAddress,
        config: DeviceConfig,
        faults: FaultInjector,
        persist: Callable[[], Awaitable[None]],
        reschedule: Callable[[SimulatedMeter], None],
        connect_gate: asyncio.Semaphore,
        buffer_limit: int = BUFFER_LIMIT,
        boot_delay_s: float = 0.5,
        install_delay_s: float = 0.2,
        firmware_key: Ed25519PublicKey | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id = device_id
        self.system = system
        self.record = record
        self.meter = meter
        self.config = config
        self.faults = faults
        self.counters = DeviceCounters()
        self.buffer_limit = buffer_limit
        self.boot_delay_s = boot_delay_s
        self.install_delay_s = install_delay_s
        # A pinned signing key makes a valid signature mandatory (docs/protocol.md, OTA).
        self.firmware_key = firmware_key
        self.boot = record.boot
        self.seq = 0
        self.powered = False
        self.online = False  # connected, subscribed and announced
        self.last_reading: dict[str, float] = {}
        self._interval_scale = 1.0  # an interval_change fault's factor, while it runs
        self.schedule_generation = 0  # bumped to void the scheduler's older entries
        self._persist = persist
        self._reschedule = reschedule
        self._gate = connect_gate
        self._clock = clock
        self._topics = {kind: protocol.device_topic(device_id, kind) for kind in protocol.MSG_TYPES}
        self._subscriptions = [(t, 1) for t in protocol.device_subscriptions(device_id)]
        self._buffer: deque[tuple[str, bytes]] = deque()
        self._held: list[tuple[str, bytes]] = []  # a reordered message waits for the next one
        # The last ack per command id and the last status per campaign: idempotency.
        self._commands: OrderedDict[str, dict[str, Any]] = OrderedDict(
            (ack["command_id"], ack) for ack in record.commands
        )
        self._campaigns: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._ota: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connection: asyncio.Task[None] | None = None
        self._booted_at = 0.0
        self._came_online = asyncio.Event()
        self._jitter = random.Random(device_id)  # timing only: values stay deterministic
        # Persistent session: commands sent while the meter is away reach it on reconnect.
        self.client = MqttClient(
            address, device_id, keepalive=KEEPALIVE_S, clean_session=False,
            on_message=self._on_message, on_puback=self._on_puback,
        )

    # --- power ---------------------------------------------------------------------------

    async def power_on(self) -> None:
        """Boot: a new boot number (on disk before any message carries it), seq from 0."""
        if self.powered:
            return
        self.record.boot += 1
        await self._persist()
        self.boot = self.record.boot
        self.seq = 0
        self.counters.boots += 1
        self._booted_at = time.monotonic()
        self._came_online = asyncio.Event()
        self.powered = True
        self._connection = asyncio.get_running_loop().create_task(self._stay_connected())

    async def power_off(self, *, graceful: bool = True) -> None:
        """Switch off, ending any command or OTA in progress. Graceful, like a meter with a
        hold-up supply: deliver what is in flight and buffered, publish status offline,
        DISCONNECT (so no Last Will). Abrupt: cut the connection; the broker publishes the
        Last Will. Messages still buffered stay for the next power-on."""
        await self._cancel_tasks()
        await self._switch_off(graceful=graceful)

    async def shut_down(self, *, graceful: bool = True) -> None:
        """Power off for good, counting what the buffer still held as lost."""
        await self.power_off(graceful=graceful)
        if self._buffer:
            lost = len(self._buffer)
            self.counters.lost_at_power_off += lost
            log.warning("%s: %d buffered messages lost at power-off", self.device_id, lost)
            self._buffer.clear()

    async def reboot(self) -> None:
        """Power-cycle: graceful power-off, boot delay, power-on with boot + 1. The buffer
        survives (a meter keeps it in flash) and is replayed after the reconnect."""
        await self._cancel_tasks()
        await self._power_cycle()

    def drop_connection(self) -> None:
        """Cut the TCP connection abruptly (the Last Will fires); the device reconnects."""
        self.client.abort()

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        others = [task for task in self._tasks if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _power_cycle(self) -> None:
        # Runs inside the reboot command's or the OTA's own task, which must survive it.
        await self._switch_off(graceful=True)
        await asyncio.sleep(self.boot_delay_s)
        await self.power_on()

    async def _switch_off(self, *, graceful: bool) -> None:
        if not self.powered:
            return
        self.powered = False
        self._release_held()
        client = self.client
        if graceful and self.online and client.connected:
            await client.drain(DRAIN_TIMEOUT_S)
            if client.connected:
                client.publish(self._topics[protocol.STATUS], self._status("offline"), 1, True)
                await client.drain(DRAIN_TIMEOUT_S)
                await client.disconnect()
        if self._connection is not None:
            self._connection.cancel()
            await asyncio.gather(self._connection, return_exceptions=True)
            self._connection = None
        client.abort()
        await client.wait_closed()
        self.online = False

    def set_interval(self, interval_s: float) -> None:
        self.config.interval_s = interval_s
        self._reschedule(self)

    def info(self) -> DeviceInfo:
        return DeviceInfo(
            device_id=self.device_id,
            device_type=self.system.device_type,
            supply_system=self.system.key,
            powered=self.powered,
            online=self.online,
            boot=self.boot,
            seq=self.seq,
            fw_version=self.record.fw_version,
            interval_s=self.config.interval_s,
            heartbeat_s=self.config.heartbeat_s,
            buffered=len(self._buffer),
            inflight=self.client.inflight_count,
            published=self.counters.published,
            acked=self.counters.acked,
            last_reading=dict(self.last_reading),
        )

    def summary(self) -> dict[str, Any]:
        """What this device sent in this run, for checking a run against the stores: the
        current boot and its seq range (every seq'd message type), the counts since the
        simulator started (all boots), and what did not get through."""
        counters = self.counters
        return {
            "boot": self.boot,
            "boots": counters.boots,
            "first_seq": 0 if self.seq else None,
            "last_seq": self.seq - 1 if self.seq else None,
            "produced": counters.produced,
            "produced_by_type": dict(sorted(counters.produced_by_type.items())),
            "published": counters.published,
            "acked": counters.acked,
            # QoS 1 publishes (status included) still without a PUBACK, and messages still
            # waiting in the offline buffer.
            "unacked": self.client.inflight_count,
            "buffered": len(self._buffer),
            "buffer_dropped": counters.buffer_dropped,
            "lost_at_power_off": counters.lost_at_power_off,
            "connection_losses": counters.connection_losses,
            "faults": dict(sorted(counters.faults.items())),
            "fault_labels": [label.as_dict() for label in self.faults.episodes.labels],
        }

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # --- the scheduler's calls ------------------------------------------------------------

    def sample(self) -> None:
        """Take one reading and publish it as telemetry."""
        if not self.powered:
            return
        data = self.meter.sample(self.config.interval_s)
        self.record.energy_import_kwh = self.meter.energy_import_kwh
        self.record.energy_export_kwh = self.meter.energy_export_kwh
        if not self.config.report_temperature:
            del data["temperature_c"]
        episodes = self.faults.episodes
        ts = self._now_ms()  # one clock read: an episode's label starts at this message's ts
        if episodes.spec.any_episode or episodes.interval_scale != 1.0:
            data = episodes.alter(data, ts)
            if episodes.interval_scale != self._interval_scale:
                self.config.interval_s *= episodes.interval_scale / self._interval_scale
                self._interval_scale = episodes.interval_scale
        self.last_reading = data
        self._emit(protocol.TELEMETRY, data, ts=ts)

    def heartbeat(self) -> None:
        if self.powered:
            self._emit(protocol.HELLO, self._hello())

    # --- connection ----------------------------------------------------------------------

    async def _stay_connected(self) -> None:
        """Connect, and reconnect with exponential back-off and jitter, while powered."""
        backoff = BACKOFF_MIN_S
        client = self.client
        while self.powered:
            try:
                async with self._gate:  # a bounded number of handshakes at once
                    session_present = await client.connect(will=self._will())
                    if not session_present:
                        await client.subscribe(self._subscriptions)
            except Exception as exc:
                self.counters.connect_failures += 1
                if isinstance(exc, MqttError):
                    log.debug("%s: %s", self.device_id, exc)
                else:  # a bug, not the network: say so loudly, keep the device trying
                    log.exception("%s: connecting failed", self.device_id)
                client.abort()
                await client.wait_closed()
                await asyncio.sleep(backoff * self._jitter.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = BACKOFF_MIN_S
            self.counters.connects += 1
            self._announce()
            await client.wait_closed()
            self.online = False
            if self.powered:
                self.counters.connection_losses += 1
                await asyncio.sleep(self._jitter.uniform(0.1, 0.5))

    def _announce(self) -> None:
        if not self.client.connected:
            return
        self.online = True
        self.client.publish(self._topics[protocol.STATUS], self._status("online"), 1, True)
        # The protocol's order: online, hello, then the replay. The hello's seq is newer than
        # the buffered ones; the collector's reorder window takes the replay that follows.
        self._emit(protocol.HELLO, self._hello(), ahead=True)
        self._drain()
        self._came_online.set()

    def _will(self) -> Will:
        return Will(self._topics[protocol.STATUS], self._status("offline"), 1, True)

    def _status(self, state: str) -> bytes:
        # Status carries boot but no seq: a reader can tell a stale Last Will from a fresh one.
        return protocol.encode_device_message(
            self.device_id, protocol.STATUS, {"state": state}, ts=self._now_ms(), boot=self.boot
        )

    def _hello(self) -> dict[str, Any]:
        system = self.system
        hello: dict[str, Any] = {
            "device_type": system.device_type,
            "fw_version": self.record.fw_version,
            "heartbeat_s": self.config.heartbeat_s,
            "uptime_s": round(time.monotonic() - self._booted_at, 1),
            "interval_s": self.config.interval_s,
            "report_temperature": self.config.report_temperature,
            "model": MODEL,
            "supply_system": system.key,
            "nominal_v": system.nominal_v,
        }
        if system.frequency_hz:
            hello["nominal_frequency_hz"] = system.frequency_hz
        return hello

    def _now_ms(self) -> int:
        return int(self._clock() * 1000) + self.faults.skew_ms

    # --- sending -------------------------------------------------------------------------

    def _emit(self, msg_type: str, data: dict[str, Any], *, ahead: bool = False,
              ts: int | None = None) -> None:
        """Give a message the next seq and send it, through the fault injector if one is set.
        `ahead`: publish at once, before whatever is buffered. `ts`: the device clock's
        reading, when the caller has taken it already."""
        if ts is None:
            ts = self._now_ms()
        seq = self.seq
        self.seq = seq + 1
        self.counters.produced += 1
        self.counters.produced_by_type[msg_type] += 1
        payload = protocol.encode_device_message(
            self.device_id, msg_type, data, ts=ts, boot=self.boot, seq=seq
        )
        topic = self._topics[msg_type]
        if self.faults.active:
            self._emit_with_faults(topic, payload, ts, ahead)
        else:
            self._send(topic, payload, ahead)
            if self._held:  # held back by a fault spec since switched off: swap, as promised
                self._release_held()

    def _emit_with_faults(self, topic: str, payload: bytes, ts: int, ahead: bool) -> None:
        decision = self.faults.decide()
        counts = self.counters.faults
        if decision.malformed:
            counts["malformed"] += 1
            self._send(self._topics[protocol.TELEMETRY], self.faults.garbage(self.device_id, ts))
        if decision.drop:
            counts["drop"] += 1
            return
        batch = [(topic, payload)]
        if decision.dup:
            counts["dup"] += 1
            batch.append((topic, payload))
        if self._held:
            batch += self._held  # the held message goes after this one: swapped
            self._held = []
        elif decision.reorder:
            counts["reorder"] += 1
            self._held = batch
            batch = []
        for item_topic, item_payload in batch:
            self._send(item_topic, item_payload, ahead)
        if decision.disconnect and self.client.connected:
            counts["disconnect"] += 1
            self.client.abort()

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for item in held:
            self._send(*item)

    def _send(self, topic: str, payload: bytes, ahead: bool = False) -> None:
        client = self.client
        if self.online and client.connected and (ahead or (
                not self._buffer and client.inflight_count < INFLIGHT_WINDOW)):
            client.publish(topic, payload, 1)
            self.counters.published += 1
            return
        if len(self._buffer) >= self.buffer_limit:
            self._buffer.popleft()
            self.counters.buffer_dropped += 1
            if self.counters.buffer_dropped % 1000 == 1:
                log.warning("%s: offline buffer full (%d); dropped %d oldest so far",
                            self.device_id, self.buffer_limit, self.counters.buffer_dropped)
        self._buffer.append((topic, payload))

    def _drain(self) -> None:
        """Replay buffered messages in order, as far as the in-flight window allows."""
        buffer, client = self._buffer, self.client
        while buffer and self.online and client.connected and \
                client.inflight_count < INFLIGHT_WINDOW:
            topic, payload = buffer.popleft()
            client.publish(topic, payload, 1)
            self.counters.published += 1

    def _on_puback(self, packet_id: int) -> None:
        self.counters.acked += 1
        if self._buffer:
            self._drain()

    # --- commands and OTA ----------------------------------------------------------------

    def _on_message(self, message: Publish) -> None:
        server = protocol.decode_server_message(message.topic, message.payload)
        if server is None:
            self.counters.bad_server_messages += 1
            log.warning("%s: ignoring a malformed message on %s", self.device_id, message.topic)
            return
        if server.kind == "command":
            self._on_command(server)
        else:
            self._on_ota(server)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    def _remember(memory: OrderedDict[str, dict[str, Any]], key: str,
                  last: dict[str, Any]) -> None:
        memory[key] = last
        memory.move_to_end(key)
        while len(memory) > REMEMBERED_IDS:
            memory.popitem(last=False)

    def _ack(self, command_id: str, result: str, detail: str) -> None:
        data = {"command_id": command_id, "result": result, "detail": detail}
        self._remember(self._commands, command_id, data)
        # The protocol asks for the last 32 ids across reboots: they go in the state file
        # (saved with every boot and every few seconds).
        kept = [a for a in self.record.commands if a["command_id"] != command_id]
        self.record.commands = [*kept, data][-PERSISTED_COMMAND_IDS:]
        self._emit(protocol.COMMAND_ACK, data)

    def _on_command(self, command: protocol.ServerMessage) -> None:
        last = self._commands.get(command.id)
        if last is not None:
            # Seen before: act once, repeat the last ack, so a server that lost it learns it.
            self._emit(protocol.COMMAND_ACK, last)
            return
        self.counters.commands += 1
        name = command.body.get("name")
        params = command.body["params"]  # decode_server_message checked it is an object
        if command.expires_ts < int(time.time() * 1000):
            self._ack(command.id, "rejected", "expired")
            return
        # Instant commands answer `done` (or `rejected`) at once; one that takes time (reboot)
        # answers `accepted` first and `done` when finished.
        try:
            if name == "ping":
                self._ack(command.id, "done", "pong")
            elif name == "set_interval":
                interval = _interval_param(params)
                self.set_interval(interval)
                self._ack(command.id, "done", f"interval_s={interval:g}")
            elif name == "set_config":
                changes = _config_params(params)
                self._apply_config(changes)
                self._ack(command.id, "done", ", ".join(f"{k}={v}" for k, v in changes.items()))
            elif name == "reboot":
                self._ack(command.id, "accepted", "rebooting")
                self._spawn(self._reboot_command(command.id))
            else:
                self._ack(command.id, "rejected", f"unknown command {name!r}")
        except CommandRejected as exc:
            self._ack(command.id, "rejected", str(exc))

    async def _reboot_command(self, command_id: str) -> None:
        await self._power_cycle()
        await self._came_online.wait()
        self._ack(command_id, "done", f"rebooted, boot {self.boot}")

    def _apply_config(self, changes: dict[str, Any]) -> None:
        if "heartbeat_s" in changes:
            self.config.heartbeat_s = changes["heartbeat_s"]
        if "report_temperature" in changes:
            self.config.report_temperature = changes["report_temperature"]
        if "interval_s" in changes:
            self.config.interval_s = changes["interval_s"]
        self._reschedule(self)

    def _ota_status(self, campaign_id: str, fw_version: str, state: str, progress: float,
                    error: str | None = None) -> None:
        data = {"campaign_id": campaign_id, "fw_version": fw_version, "state": state,
                "progress_pct": progress, "error": error}
        self._remember(self._campaigns, campaign_id, data)
        self._emit(protocol.OTA_STATUS, data)

    def _on_ota(self, offer: protocol.ServerMessage) -> None:
        last = self._campaigns.get(offer.id)
        if last is not None:
            # In progress or finished: not started again; the device says where it is.
            self._emit(protocol.OTA_STATUS, last)
            return
        target = str(offer.body["fw_version"])
        if self._ota is not None and not self._ota.done():
            # Not remembered: a retry of this campaign once the device is free must proceed.
            self._emit(protocol.OTA_STATUS, {
                "campaign_id": offer.id, "fw_version": target, "state": "failed",
                "progress_pct": 0, "error": "busy with another update"})
            return
        self._ota = self._spawn(self._run_ota(offer, target))

    async def _run_ota(self, offer: protocol.ServerMessage, target: str) -> None:
        # decode_server_message has checked the offer's fields (url, sha256, size, version).
        campaign, body = offer.id, offer.body
        url, sha256, size = str(body["url"]), str(body["sha256"]), int(body["size"])
        if offer.expires_ts < int(time.time() * 1000):
            self._ota_status(campaign, target, "failed", 0, "expired")
            return
        if target == self.record.fw_version:
            self._ota_status(campaign, target, "done", 100)
            return

        self._ota_status(campaign, target, "downloading", 0)
        reported = [0]

        def progress(received: int) -> None:
            # A status per quarter: enough to watch, not a flood on a fleet-wide rollout.
            pct = received * 100 // size
            step = min(100, pct - pct % 25)
            if step > reported[0]:
                reported[0] = step
                self._ota_status(campaign, target, "downloading", step)

        try:
            image = await fetch_firmware(url, max_size=size, on_progress=progress)
        except FirmwareError as exc:
            self._ota_status(campaign, target, "failed", reported[0], str(exc))
            return
        self._ota_status(campaign, target, "verifying", 100)
        if len(image) != size:
            self._ota_status(campaign, target, "failed", 100,
                             f"size mismatch: offered {size} bytes, got {len(image)}")
            return
        digest = hashlib.sha256(image).hexdigest()
        if digest != sha256:
            self._ota_status(campaign, target, "failed", 100,
                             f"sha256 mismatch: expected {sha256}, got {digest}")
            return
        problem = self._signature_problem(digest, body.get("signature"))
        if problem is not None:
            self._ota_status(campaign, target, "failed", 100, problem)
            return
        self._ota_status(campaign, target, "installing", 100)
        await asyncio.sleep(self.install_delay_s)
        self.record.fw_version = target  # persisted with the boot number on power-on
        self._ota_status(campaign, target, "rebooting", 100)
        await self._power_cycle()
        await self._came_online.wait()
        self._ota_status(campaign, target, "done", 100)


    def _signature_problem(self, digest: str, signature: Any) -> str | None:
        """Why the image must not be installed, or None. The sha256 alone proves nothing:
        whoever can publish an offer chooses it; only the signing key's holder can sign."""
        if self.firmware_key is None:
            return None
        if signature is None:
            return "unsigned firmware refused: this meter pins a signing key"
        if not signing.verify(self.firmware_key, digest, str(signature)):
            return "bad signature: the image is not signed by the pinned key"
        return None


def _number(params: dict[str, Any], key: str, low: float, high: float) -> float:
    value = params[key]
    if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
        raise CommandRejected(f"{key}={value!r} is not a number in [{low:g}, {high:g}]")
    return float(value)


def _interval_param(params: dict[str, Any]) -> float:
    """set_interval takes interval_s (seconds) or rate (messages per second)."""
    given = [k for k in ("interval_s", "rate") if k in params]
    extra = sorted(set(params) - {"interval_s", "rate"})
    if extra:
        raise CommandRejected(f"unknown parameter(s): {', '.join(extra)}")
    if len(given) != 1:
        raise CommandRejected("give exactly one of interval_s or rate")
    if given[0] == "interval_s":
        return _number(params, "interval_s", MIN_INTERVAL_S, MAX_INTERVAL_S)
    return 1.0 / _number(params, "rate", 1.0 / MAX_INTERVAL_S, 1.0 / MIN_INTERVAL_S)


def _config_params(params: dict[str, Any]) -> dict[str, Any]:
    """set_config: all-or-nothing; an unknown key rejects the whole command."""
    known = {"interval_s", "heartbeat_s", "report_temperature"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise CommandRejected(f"unknown config key(s): {', '.join(unknown)}")
    if not params:
        raise CommandRejected("no config keys given")
    changes: dict[str, Any] = {}
    if "interval_s" in params:
        changes["interval_s"] = _number(params, "interval_s", MIN_INTERVAL_S, MAX_INTERVAL_S)
    if "heartbeat_s" in params:
        changes["heartbeat_s"] = _number(params, "heartbeat_s", MIN_HEARTBEAT_S, MAX_INTERVAL_S)
    if "report_temperature" in params:
        if type(params["report_temperature"]) is not bool:
            raise CommandRejected("report_temperature must be true or false")
        changes["report_temperature"] = params["report_temperature"]
    return changes
