"""Dashboard counts: what one refresh of the OTA view and the fleet's alert column costs the
metadata store, counted in the store (GROUP BY) against the way the views counted before
(every target of every listed campaign, every open alert fleet-wide, counted in Python).

Set-up: a fresh metadata store (SQLite in a temp dir by default, or `--url`) holding
`--campaigns` campaigns of `--targets` targets each (one in 20 moved on from pending) and
`--alerts` open alerts spread over a 10,000-meter fleet. Each way runs `--rounds` times,
the two interleaved so a noisy machine weighs on both alike; the figures are CPU seconds of
this process per call (`time.process_time`: SQLite runs in-process; for a PostgreSQL
`--url` the server's CPU is not in it, so wall time is printed too).

- OTA refresh: before, list_targets for each campaign and a Counter of states; now
  ota_target_counts over the campaign ids, plus list_targets for the highlighted one.
- Fleet alert column: before, Counter(open_alerts()) fleet-wide, once every 3 s; now
  open_alert_counts over the rows read (the window around the viewport, 190 at 120x40),
  every refresh (1 s). Compared per second of dashboard time.

Prints the figures and writes bench/results/dashboard_counts.json.

    .venv/bin/python bench/dashboard_counts.py [--campaigns 50] [--targets 2000] [--alerts 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iotmeter_tui.backend.stores.factory import open_metadata
from iotmeter_tui.backend.stores.metadata import Campaign, Firmware, MetadataStore

RESULTS = Path(__file__).parent / "results"
FLEET = 10_000
WINDOW_ROWS = 190  # LiveTable.window() at 120x40: five pages of 38 rows
OLD_ALERT_EVERY_S = 3.0  # the fleet view counted alerts fleet-wide every 3 s
STATES = ("offered", "downloading", "installing", "done", "failed")


def fill(md: MetadataStore, campaigns: int, targets: int, alerts: int) -> list[str]:
    rng = random.Random(7)
    md.add_firmware(Firmware("2.0.0", 1, "0" * 64, "_firmware/2.0.0.bin", 1))
    ids = []
    for c in range(campaigns):
        campaign_id = f"ota-{c:04d}"
        ids.append(campaign_id)
        md.create_campaign(Campaign(campaign_id, "2.0.0", "all", 10, 20.0, "running",
                                    1000 + c, 1000 + c),
                           [f"dev-{(c * 97 + i) % FLEET:05d}" for i in range(targets)])
        for i in range(0, targets, 20):
            md.update_target(campaign_id, f"dev-{(c * 97 + i) % FLEET:05d}",
                             state=rng.choice(STATES), at=2000, started=True)
    for n in range(alerts):
        md.raise_alert(f"dev-{rng.randrange(FLEET):05d}", f"rule-{n % 7}", "warning", 1.0,
                       "m", 3000 + n)
    ids.reverse()  # newest first, as list_campaigns gives them
    return ids


def ota_before(md: MetadataStore, campaign_ids: list[str]) -> Any:
    tallies = {}
    targets = []
    for campaign_id in campaign_ids:
        listed = md.list_targets(campaign_id)
        tallies[campaign_id] = Counter(t.state for t in listed)
        if campaign_id == campaign_ids[0]:
            targets = listed
    return tallies, targets


def ota_now(md: MetadataStore, campaign_ids: list[str]) -> Any:
    return md.ota_target_counts(campaign_ids), md.list_targets(campaign_ids[0])


def alerts_before(md: MetadataStore, _page: list[str]) -> Any:
    return Counter(a.device_id for a in md.open_alerts())


def alerts_now(md: MetadataStore, page: list[str]) -> Any:
    return md.open_alert_counts(page)


def timed(call: Callable[[], Any]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    call()
    return time.process_time() - cpu, time.perf_counter() - wall


def compare(before: Callable[[], Any], now: Callable[[], Any],
            rounds: int) -> dict[str, dict[str, float]]:
    samples: dict[str, list[tuple[float, float]]] = {"before": [], "now": []}
    before(), now()  # warm caches and statements
    for _ in range(rounds):
        samples["before"].append(timed(before))
        samples["now"].append(timed(now))
    return {way: {"cpu_ms": round(1000 * statistics.median(c for c, _ in s), 3),
                  "wall_ms": round(1000 * statistics.median(w for _, w in s), 3)}
            for way, s in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="metadata store URL (default: SQLite in a temp dir)")
    parser.add_argument("--campaigns", type=int, default=50, help="the OTA view lists 50")
    parser.add_argument("--targets", type=int, default=2000, help="targets per campaign")
    parser.add_argument("--alerts", type=int, default=3000, help="open alerts in the fleet")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="iotmeter-bench-") as tmp:
        md = open_metadata(args.url or f"sqlite:///{tmp}/metadata.db")
        md.migrate()
        print(f"filling: {args.campaigns} campaigns x {args.targets:,} targets, "
              f"{args.alerts:,} open alerts …", flush=True)
        campaign_ids = fill(md, args.campaigns, args.targets, args.alerts)
        page = [f"dev-{i:05d}" for i in range(WINDOW_ROWS)]
        ota = compare(lambda: ota_before(md, campaign_ids), lambda: ota_now(md, campaign_ids),
                      args.rounds)
        alerts = compare(lambda: alerts_before(md, page), lambda: alerts_now(md, page),
                         args.rounds)
        same = (ota_before(md, campaign_ids)[0] == ota_now(md, campaign_ids)[0]
                and {d: n for d, n in alerts_before(md, page).items() if d in page}
                == alerts_now(md, page))
        md.close()
    if not same:
        raise SystemExit("bench: the two ways counted differently")
    per_s_before = alerts["before"]["cpu_ms"] / OLD_ALERT_EVERY_S
    per_s_now = alerts["now"]["cpu_ms"]  # every 1 s refresh
    result = {
        "benchmark": "dashboard counts: OTA refresh and fleet alert column, before/now",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "store": (args.url or "sqlite").split(":", 1)[0],
        "campaigns": args.campaigns, "targets_per_campaign": args.targets,
        "open_alerts": args.alerts, "window_rows": WINDOW_ROWS,
        "ota_refresh": ota | {"cpu_ratio": round(ota["before"]["cpu_ms"]
                                                 / max(ota["now"]["cpu_ms"], 1e-6), 1)},
        "fleet_alerts_per_call": alerts,
        "fleet_alerts_cpu_ms_per_s": {"before": round(per_s_before, 3),
                                      "now": round(per_s_now, 3),
                                      "ratio": round(per_s_before / max(per_s_now, 1e-6), 1)},
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python bench/dashboard_counts.py",
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "dashboard_counts.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"OTA refresh ({args.campaigns} campaigns x {args.targets:,} targets): "
          f"before {ota['before']['cpu_ms']} ms CPU ({ota['before']['wall_ms']} ms wall), "
          f"now {ota['now']['cpu_ms']} ms CPU ({ota['now']['wall_ms']} ms wall): "
          f"{result['ota_refresh']['cpu_ratio']}x less CPU")
    print(f"fleet alert column ({args.alerts:,} open alerts, {WINDOW_ROWS} rows read): "
          f"before {alerts['before']['cpu_ms']} ms CPU a call every 3 s, now "
          f"{alerts['now']['cpu_ms']} ms CPU a call every 1 s: "
          f"{result['fleet_alerts_cpu_ms_per_s']['ratio']}x less CPU per second")
    print(f"load average {result['loadavg_1m']} ({os.cpu_count()} CPUs); "
          f"wrote {args.output / 'dashboard_counts.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
