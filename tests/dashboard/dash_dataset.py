"""A deterministic dataset for the dashboard tests: real SQLite stores in a tmp dir with fixed
device ids, timestamps and values, a frozen clock, and small fakes for the parts of the
runtime that are processes (collector health, simulator, commands and OTA services).

The fakes write to the same real stores the screens read, so a command sent from the
keyboard shows up in the commands view exactly as the real service's would."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotmeter_tui.backend.collector.health import CollectorHealth, DispatcherHealth, SinkHealth
from iotmeter_tui.backend.collector.quality import quality_score
from iotmeter_tui.backend.devices import DeviceService
from iotmeter_tui.backend.errors import StoreUnavailable
from iotmeter_tui.backend.runtime import (
    Capabilities,
    ControlNotReady,
    ControlServices,
    StoreStatus,
    check_stores,
)
from iotmeter_tui.backend.simulator.device import DeviceInfo
from iotmeter_tui.backend.simulator.fleet import FleetStats
from iotmeter_tui.backend.stores import Stores
from iotmeter_tui.backend.stores.archive_dir import DirectoryArchive
from iotmeter_tui.backend.stores.metadata import (
    Campaign,
    Command,
    DeviceQuality,
    DeviceUpdate,
    Firmware,
    SeqState,
)
from iotmeter_tui.backend.stores.metadata_sqlite import open_sqlite_metadata
from iotmeter_tui.backend.stores.timeseries import Point
from iotmeter_tui.backend.stores.timeseries_sqlite import SqliteTimeSeries

NOW_MS = 1_795_740_000_000  # 2026-11-26 19:20:00 UTC
NOW_S = NOW_MS / 1000
DC = "power_meter_dc"
AC = "power_meter_ac"


def frozen_now() -> float:
    return NOW_S


def _dc_values(i: int, t: int) -> dict[str, float]:
    phase = t / 60_000 + i
    current = round(900 * math.sin(phase) + 300, 1)
    voltage = round(760 + 40 * math.cos(phase * 1.3), 1)
    return {
        "voltage_v": voltage,
        "current_a": current,
        "power_kw": round(voltage * current / 1000, 1),
        "energy_import_kwh": round(180_000 + i * 1000 + (t - NOW_MS) / 3_600_000, 2),
        "energy_export_kwh": round(20_000 + i * 100, 2),
    }


def _ac_values(i: int, t: int) -> dict[str, float]:
    phase = t / 90_000 + i
    voltage = round(25_000 + 900 * math.sin(phase), 0)
    current = round(320 + 180 * math.cos(phase), 1)
    return {
        "voltage_v": voltage,
        "current_a": current,
        "active_power_kw": round(voltage * current * 0.95 / 1000, 1),
        "reactive_power_kvar": round(voltage * current * 0.3 / 1000, 1),
        "power_factor": 0.95,
        "frequency_hz": 50.0,
        "energy_import_kwh": round(300_000 + i * 1000, 2),
        "energy_export_kwh": round(5_000 + i * 10, 2),
    }


@dataclass(frozen=True)
class DeviceSpec:
    device_id: str
    device_type: str
    status: str
    fw: str | None
    last_seen: int
    boot: int


def device_specs() -> list[DeviceSpec]:
    specs = []
    for i in range(1, 16):
        offline = i % 5 == 0
        specs.append(DeviceSpec(f"dc-{i:04d}", DC, "offline" if offline else "online",
                                "1.1.4" if i % 4 == 0 else "1.2.0",
                                NOW_MS - (7_200_000 if offline else i * 3000), i % 4 + 1))
    for i in range(1, 13):
        offline = i % 6 == 0
        specs.append(DeviceSpec(f"ac-{i:04d}", AC, "offline" if offline else "online",
                                "2.0.1", NOW_MS - (5_400_000 if offline else i * 2000), 1))
    for i in range(1, 4):
        specs.append(DeviceSpec(f"new-{i:04d}", "unknown", "unknown", None,
                                NOW_MS - 600_000 * i, 0))
    return specs


def build_stores(home: Path) -> Stores:
    home.mkdir(parents=True, exist_ok=True)
    md = open_sqlite_metadata(f"sqlite:///{home}/iotmeter.db")
    ts = SqliteTimeSeries(home / "timeseries.db")
    archive = DirectoryArchive(home / "archive")
    specs = device_specs()
    updates = [
        DeviceUpdate(s.device_id, s.last_seen,
                     device_type=None if s.device_type == "unknown" else s.device_type,
                     fw_version=s.fw, boot=s.boot, heartbeat_s=30.0,
                     connection_status=s.status, status_at=s.last_seen)
        for s in specs
    ]
    seq = [
        SeqState("dc-0001", 1, 4_211, 4_200, 3, 12, ((118, 123), (3_001, 3_006)), NOW_MS - 5000),
        SeqState("dc-0001", 2, 811, 812, 0, 0, (), NOW_MS - 3000),
        SeqState("ac-0001", 1, 1_500, 1_501, 1, 0, (), NOW_MS - 2000),
    ]
    md.apply_collector_batch(updates, seq)
    # Telemetry: a latest point for every typed device; ten minutes at 5 s for two of them.
    points = []
    for index, s in enumerate(specs):
        if s.device_type == "unknown":
            continue
        values = _dc_values if s.device_type == DC else _ac_values
        history = s.device_id in ("dc-0001", "ac-0001")
        times = range(s.last_seen - 600_000, s.last_seen + 1, 5000) if history else \
            [s.last_seen]
        for n, t in enumerate(times):
            points.append(Point(s.device_id, s.device_type, t, s.boot, n, values(index, t)))
    ts.write(points)
    md.save_quality(_quality(specs))
    md.set_config("dc-0001", "heartbeat_s", 30)
    md.set_config("dc-0001", "report_temperature", True)
    md.set_config("dc-0001", "interval_s", 1.0)
    _alerts(md)
    _commands(md)
    _ota(md)
    # Fixed URLs for display: the tmp path would make every snapshot differ.
    return Stores(md, ts, archive, ("sqlite:///data/iotmeter.db", "sqlite:///data/timeseries.db",
                                    "file:///data/archive"))


def _quality(specs: list[DeviceSpec]) -> list[DeviceQuality]:
    """Data-quality scores of the typed devices (the unknown ones are not scored yet): most
    clean, dc-0001 with gaps, duplicates, rejects, a counter reset and a stuck field, ac-0012
    with a clock 7.5 s off."""
    scores = []
    for s in specs:
        if s.device_type == "unknown":
            continue
        scores.append(DeviceQuality(s.device_id, 100.0, 720.0, 0.0, 0.0, 0.0, 0.0, 0, 180,
                                    NOW_MS - 1000))
    scores[0] = DeviceQuality("dc-0001", quality_score(3_550.2, 12.0, 3.0, 2.0, 1.0, 1, 240),
                              3_550.2, 12.0, 3.0, 2.0, 1.0, 1, 240, NOW_MS - 1000)
    scores[-1] = DeviceQuality(scores[-1].device_id,
                               quality_score(720.0, 0.0, 0.0, 0.0, 0.0, 0, 7_500),
                               720.0, 0.0, 0.0, 0.0, 0.0, 0, 7_500, NOW_MS - 1000)
    return scores


def _alerts(md: Any) -> None:
    rows = [
        ("dc-0001", "undervoltage", "major", 488.0, "voltage 488 V below 500 V", 600_000),
        ("dc-0003", "overcurrent", "critical", 6_120.0, "current 6120 A above 6000 A", 420_000),
        ("ac-0002", "frequency", "warning", 49.2, "frequency 49.2 Hz out of band", 300_000),
        ("dc-0005", "offline", "major", None, "silent for 2 h", 7_000_000),
        ("ac-0006", "offline", "major", None, "silent for 1.5 h", 5_300_000),
        ("dc-0007", "temperature", "warning", 71.5, "temperature 71.5 °C", 900_000),
    ]
    ids = []
    for device_id, rule, severity, value, message, ago_ms in rows:
        alert, _ = md.raise_alert(device_id, rule, severity, value, message, NOW_MS - ago_ms)
        ids.append(alert.id)
    md.acknowledge_alert(ids[2], NOW_MS - 200_000)
    md.acknowledge_alert(ids[4], NOW_MS - 100_000)
    md.clear_alert(ids[5], NOW_MS - 60_000)


def _commands(md: Any) -> None:
    rows = [
        ("cmd-0001", "dc-0001", "ping", {}, "done", "pong", 300_000),
        ("cmd-0002", "dc-0002", "set_interval", {"interval_s": 0.5}, "done", "interval_s=0.5",
         240_000),
        ("cmd-0003", "ac-0003", "reboot", {}, "accepted", None, 60_000),
        ("cmd-0004", "dc-0005", "ping", {}, "timed_out", "no answer in 10 s", 7_000_000),
        ("cmd-0005", "ac-0004", "set_config", {"heartbeat_s": 15}, "rejected",
         "heartbeat_s must be 5..3600", 120_000),
        ("cmd-0006", "dc-0009", "ping", {}, "queued", None, 5_000),
    ]
    for cid, device_id, name, params, state, detail, ago_ms in rows:
        created = NOW_MS - ago_ms
        md.create_command(Command(cid, device_id, name, params, "queued", created, created,
                                  created + 30_000))
        if state != "queued":
            md.update_command(cid, state="sent", at=created + 100, sent=True)
            result = state if state in ("done", "rejected", "failed") else None
            md.update_command(cid, state=state, at=created + 900, result=result, detail=detail)


def _ota(md: Any) -> None:
    for version, uploaded in (("1.2.0", NOW_MS - 90_000_000), ("1.3.0", NOW_MS - 3_600_000)):
        image = f"iotmeter firmware {version}".encode()
        md.add_firmware(Firmware(version, len(image), hashlib.sha256(image).hexdigest(),
                                 f"_firmware/{version}.bin", uploaded))
    done = Campaign("ota-0001", "1.2.0", "all DC meters", 5, 20.0, "completed",
                    NOW_MS - 86_400_000, NOW_MS - 80_000_000)
    md.create_campaign(done, [f"dc-{i:04d}" for i in range(1, 5)])
    for i in range(1, 5):
        md.update_target("ota-0001", f"dc-{i:04d}", state="done", at=NOW_MS - 80_000_000,
                         progress_pct=100.0, started=True)
    running = Campaign("ota-0002", "1.3.0", "device_type=power_meter_dc", 4, 25.0, "running",
                       NOW_MS - 900_000, NOW_MS - 10_000)
    targets = [f"dc-{i:04d}" for i in range(1, 9)]
    md.create_campaign(running, targets)
    progress = [("done", 100.0, None), ("done", 100.0, None), ("installing", 80.0, None),
                ("downloading", 35.0, None), ("failed", 60.0, "sha256 mismatch"),
                ("pending", None, None), ("pending", None, None), ("pending", None, None)]
    for device_id, (state, pct, error) in zip(targets, progress, strict=True):
        if state != "pending":
            md.update_target("ota-0002", device_id, state=state, at=NOW_MS - 30_000,
                             progress_pct=pct, error=error, started=True)


# --- fakes for the runtime's processes -----------------------------------------------------


class FakeWorker:
    def __init__(self) -> None:
        self.snapshot: CollectorHealth | None = CollectorHealth(
            at=NOW_S,
            starting=False,
            broker_connected=True,
            broker_error=None,
            received=1_234_567,
            acked=1_234_560,
            duplicates=42,
            spool_bytes=3 * 1024 * 1024,
            spool_full=False,
            sinks=(
                SinkHealth("archive", up=True, error=None, backlog_bytes=0),
                SinkHealth("metadata", up=True, error=None, backlog_bytes=2048),
                SinkHealth("timeseries", up=False, error="timeseries: connection refused",
                           backlog_bytes=5 * 1024 * 1024),
            ),
            dispatcher=DispatcherHealth(passes=1_204, error=None, broker_connected=True,
                                        firmware_endpoint="http://127.0.0.1:9109"),
        )

    def health(self) -> CollectorHealth | None:
        return self.snapshot


def _info(i: int) -> DeviceInfo:
    kind = DC if i % 2 else AC
    return DeviceInfo(
        device_id=f"{'dc' if i % 2 else 'ac'}-{i:04d}", device_type=kind,
        supply_system="DC 750 V" if i % 2 else "AC 25 kV", powered=i != 4, online=i not in (4, 6),
        boot=2, seq=1000 + i, fw_version="1.2.0", interval_s=1.0, heartbeat_s=30.0,
        buffered=0 if i != 6 else 12, inflight=0, published=1000 + i, acked=998 + i,
        last_reading={},
    )


@dataclass
class FakeSimulator:
    running: bool = True
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def stop(self, *, graceful: bool = True) -> None:
        self.calls.append(("stop", graceful))
        self.running = False

    def add_devices(self, count: int, kind: str = "mixed", rate: float = 1.0) -> list[str]:
        self.calls.append(("add", (count, kind, rate)))
        self.running = True
        return []

    def remove_devices(self, device_ids: Iterable[str]) -> None:
        self.calls.append(("remove", list(device_ids)))

    def power_off(self, device_ids: Iterable[str] | None = None, *,
                  graceful: bool = True) -> None:
        self.calls.append(("power_off", list(device_ids or [])))

    def power_on(self, device_ids: Iterable[str] | None = None) -> None:
        self.calls.append(("power_on", list(device_ids or [])))

    def reboot(self, device_ids: Iterable[str] | None = None) -> None:
        self.calls.append(("reboot", list(device_ids or [])))

    def set_rate(self, rate: float, device_ids: Iterable[str] | None = None) -> None:
        self.calls.append(("set_rate", (rate, None if device_ids is None else list(device_ids))))

    def set_faults(self, spec: Any, device_ids: Iterable[str] | None = None) -> None:
        self.calls.append(("set_faults", spec))

    def drop_connections(self, device_ids: Iterable[str] | None = None) -> None:
        self.calls.append(("drop", list(device_ids or [])))

    def stats(self) -> FleetStats:
        return FleetStats(devices=8, powered=7, online=6, produced=8_120, published=8_140,
                          acked=8_100, acked_per_s=8.0, buffered=12, buffer_dropped=0,
                          lost_at_power_off=0, connects=9, connect_failures=0,
                          connection_losses=1, commands=3, late_ticks=0,
                          faults={"drop": 2, "dup": 1})

    def devices(self) -> list[DeviceInfo]:
        return [_info(i) for i in range(1, 9)]


class FakeCommands:
    """CommandService stand-in: records a queued command in the metadata store."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.sent: list[tuple[str, str, dict[str, Any], float]] = []

    def send(self, device_id: str, name: str, params: dict[str, Any],
             timeout_s: float = 30.0, *, created_by: str | None = None) -> Command:
        self.sent.append((device_id, name, params, timeout_s))
        cid = f"cmd-t{len(self.sent):03d}"
        cmd = Command(cid, device_id, name, params, "queued", NOW_MS, NOW_MS,
                      NOW_MS + int(timeout_s * 1000))
        self.stores.metadata.create_command(cmd)
        return cmd


class FakeOta:
    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.uploads: list[tuple[Path, str]] = []
        self.started: list[dict[str, Any]] = []
        self.aborted: list[str] = []

    def upload(self, path: Path, version: str) -> Firmware:
        data = Path(path).read_bytes()
        fw = Firmware(version, len(data), hashlib.sha256(data).hexdigest(),
                      f"_firmware/{version}.bin", NOW_MS)
        self.stores.metadata.add_firmware(fw)
        self.uploads.append((Path(path), version))
        return fw

    def start_campaign(self, version: str, device_ids: list[str] | None = None,
                       device_type: str | None = None, all_devices: bool = False,
                       **options: Any) -> Campaign:
        self.started.append({"version": version, "device_ids": device_ids,
                             "device_type": device_type, "all_devices": all_devices,
                             **options})
        md = self.stores.metadata
        if device_ids is None:
            device_ids = [d.device_id for d in md.list_devices(device_type=device_type)]
        campaign = Campaign(f"ota-t{len(self.started):03d}", version,
                            device_type or ("all" if all_devices else "listed"),
                            options.get("batch_size", 10), options.get("max_failures_pct", 20),
                            "running", NOW_MS + len(self.started), NOW_MS)
        md.create_campaign(campaign, device_ids)
        return campaign

    def abort(self, campaign_id: str) -> Campaign:
        md = self.stores.metadata
        md.update_campaign(campaign_id, state="aborting", at=NOW_MS, detail="by the operator")
        self.aborted.append(campaign_id)
        return md.get_campaign(campaign_id)

    def status(self, campaign_id: str) -> tuple[Campaign, list[Any]]:
        md = self.stores.metadata
        return md.get_campaign(campaign_id), md.list_targets(campaign_id)


class DownStore:
    """A store whose server is unreachable: every call fails as the adapters report it."""

    def __init__(self, store: str, message: str) -> None:
        self.error = StoreUnavailable(store, message)

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise self.error

        return fail


class FakeRuntime:
    """Shaped like Runtime for the app: real stores, fake processes."""

    def __init__(self, stores: Stores, *, services: bool = True, control_open: bool = True,
                 simulator: FakeSimulator | None = None) -> None:
        self.stores = stores
        self.worker: FakeWorker | None = FakeWorker()
        self.simulator: FakeSimulator | None = simulator
        self.started_simulators: list[tuple[int, str, float]] = []
        self.capabilities = Capabilities(control=services)
        self.control: ControlServices | None = None
        self._closed: ControlServices | None = None  # what open_control() opens
        self.opened_on: list[str] = []  # the threads open_control() ran on
        if services:
            # Kept as attributes too: the tests look at what the fakes were asked.
            self.commands = FakeCommands(stores)
            self.ota = FakeOta(stores)
            # The real device service over the fake command sender.
            self._closed = ControlServices(
                self.commands, self.ota,  # type: ignore[arg-type]
                DeviceService(stores.metadata, self.commands))  # type: ignore[arg-type]
            if control_open:
                self.control = self._closed

    def open_control(self) -> ControlServices:
        self.opened_on.append(threading.current_thread().name)
        if self._closed is None:
            raise ControlNotReady("this runtime has no control services")
        self.control = self._closed
        return self.control

    def start_simulator(self, devices: int, kind: str = "mixed", rate: float = 1.0) -> list[str]:
        self.started_simulators.append((devices, kind, rate))
        if self.simulator is None:
            self.simulator = FakeSimulator()
        self.simulator.running = True
        return []

    def store_status(self) -> list[StoreStatus]:
        return check_stores(self.stores)


def build_large_registry(home: Path, devices: int = 10_000) -> Stores:
    """`devices` meters (big-00000…) with a latest point each, for the windowing tests."""
    home.mkdir(parents=True, exist_ok=True)
    md = open_sqlite_metadata(f"sqlite:///{home}/iotmeter.db")
    ts = SqliteTimeSeries(home / "timeseries.db")
    updates, points = [], []
    for i in range(devices):
        device_id, kind = f"big-{i:05d}", DC if i % 2 else AC
        seen = NOW_MS - (i * 7919) % 3_600_000
        updates.append(DeviceUpdate(device_id, seen, device_type=kind,
                                    fw_version=f"1.{i % 4}.0", boot=1, heartbeat_s=30.0,
                                    connection_status="offline" if i % 13 == 0 else "online",
                                    status_at=seen))
        values = _dc_values if kind == DC else _ac_values
        points.append(Point(device_id, kind, seen, 1, 0, values(i, seen)))
    md.apply_collector_batch(updates, [])
    ts.write(points)
    return Stores(md, ts, DirectoryArchive(home / "archive"),
                  ("sqlite:///data/iotmeter.db", "sqlite:///data/timeseries.db",
                   "file:///data/archive"))
