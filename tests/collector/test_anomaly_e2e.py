"""The anomaly detector inside a running collector (private broker, embedded stores): an
`anomaly` alert and a data-quality score land in the metadata store, and the learned baselines
survive a restart through the file in the spool directory."""

from __future__ import annotations

import json
import random
from pathlib import Path

from iotmeter_tui.backend.collector.anomaly import WARMUP
from iotmeter_tui.backend.stores.factory import open_metadata
from testsupport import MosquittoServer
from testsupport.fleet import Publisher, hello, telemetry, wait_for
from testsupport.harness import running_collector, settings_for

T0 = 1_795_740_000_000
DEVICE = "dc-anom"


def readings(first: int, count: int, rng: random.Random, *, stuck_v: float | None = None,
             energy_back: float = 0.0) -> list[tuple[str, bytes]]:
    out = []
    for seq in range(first, first + count):
        data = {"voltage_v": stuck_v if stuck_v is not None else round(rng.gauss(800, 5), 1),
                "current_a": round(rng.gauss(500, 100), 1),
                "energy_import_kwh": 1000.0 + seq * 0.1 - energy_back}
        out.append(telemetry(DEVICE, 1, seq, ts=T0 + seq * 1000, data=data))
    return out


def anomaly_alerts(settings_db: str) -> list[str]:
    store = open_metadata(settings_db)
    try:
        return [a.message for a in store.open_alerts(DEVICE) if a.rule == "anomaly"]
    finally:
        store.close()


def test_alerts_quality_and_baselines_across_a_restart(
        tmp_path: Path, private_mosquitto: MosquittoServer) -> None:
    settings = settings_for(tmp_path, {})
    rng = random.Random(4)
    baselines = settings.spool_dir / settings.client_id / "anomaly-baselines.json"
    with running_collector(settings, private_mosquitto.url):
        pub = Publisher(private_mosquitto.url)
        pub.publish([hello(DEVICE, 1, WARMUP + 100)])
        pub.publish(readings(0, WARMUP + 50, rng))
        # The energy register steps back: caught at once, whatever the baseline's age.
        pub.publish(readings(WARMUP + 50, 1, rng, energy_back=50.0))
        pub.close()
        found = wait_for(lambda: anomaly_alerts(settings.db_url), what="an anomaly alert")
        assert "energy_import_kwh went backwards" in found[0]
        store = open_metadata(settings.db_url)
        quality = wait_for(lambda: store.device_quality([DEVICE]).get(DEVICE),
                           what="a data-quality score")
        store.close()
        assert quality.counter_resets > 0 and quality.score < 100
    saved = json.loads(baselines.read_text())
    assert saved["devices"][DEVICE]["f"]["voltage_v"][0] > WARMUP  # readings learned

    # A new collector judges at once: a voltage stuck for ten readings is found without
    # another warm-up (a fresh baseline would need 600 readings first). The device's anomaly
    # alert is still open (one per device and rule), so the finding shows in its quality.
    with running_collector(settings, private_mosquitto.url):
        pub = Publisher(private_mosquitto.url)
        pub.publish(readings(WARMUP + 200, 12, rng, stuck_v=812.3, energy_back=50.0))
        pub.close()
        store = open_metadata(settings.db_url)
        try:
            stuck = wait_for(lambda: (q := store.device_quality([DEVICE]).get(DEVICE))
                             and q.stuck_fields == 1 and q,
                             what="a stuck field after the restart", timeout_s=60)
        finally:
            store.close()
        assert stuck.counter_resets == 0  # counts are the new collector's own
