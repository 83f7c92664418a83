"""`e` writes what the view shows to a new CSV file under the exports directory, 0600, and
says where on screen: fleet (all matching meters, not only the visible rows), alerts,
commands and a device's telemetry window."""

from __future__ import annotations

import csv
import stat
from pathlib import Path
from typing import Any

from dash_dataset import frozen_now
from dash_helpers import drive, press, toasts

from iotmeter_tui.app import IotmeterApp
from iotmeter_tui.export import ExportTable, safe_cell, write_csv


def read(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def exported(app: Any) -> tuple[Path, list[list[str]]]:
    path = app.last_export
    assert path is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert any(str(path) in t for t in toasts(app)), "the path is shown"
    return path, read(path)


def test_export_fleet_alerts_commands_and_device(dash_runtime: Any, tmp_path: Path) -> None:
    exports = tmp_path / "exports"

    async def scenario(pilot: Any) -> None:
        app = pilot.app
        await press(pilot, "o")  # online meters only: the export follows the filter
        await press(pilot, "e")
        path, rows = exported(app)
        assert path.parent == exports and path.name.startswith("fleet-")
        assert rows[0][:3] == ["device_id", "device_type", "connection_status"]
        assert len(rows) - 1 == 12 + 10  # online DC and AC meters of the dataset
        assert {r[2] for r in rows[1:]} == {"online"}
        first = next(r for r in rows if r[0] == "dc-0001")
        assert first[4].endswith("+00:00") and float(first[5]) > 0

        await press(pilot, "colon", *"alerts", "enter")
        await press(pilot, "e")
        _, rows = exported(app)
        assert rows[0][:4] == ["id", "raised_at_utc", "device_id", "rule"]
        assert len(rows) - 1 == len(app.screen.alerts)

        await press(pilot, "colon", *"cmd", "enter")
        await press(pilot, "e")
        _, rows = exported(app)
        assert len(rows) - 1 == len(app.screen.commands) > 0

        await press(pilot, "colon", *"device", "space", *"dc-0001", "enter")
        await press(pilot, "w", "w")  # 15 minutes: the dataset's ten minutes at 5 s
        await press(pilot, "e")
        path, rows = exported(app)
        assert path.name.startswith("telemetry-dc-0001-")
        assert rows[0][:3] == ["ts_utc", "boot", "seq"] and "voltage_v" in rows[0]
        assert len(rows) - 1 == 121

        await press(pilot, "colon", *"sys", "enter")
        await press(pilot, "e")
        assert "nothing to export in this view" in toasts(app)[-1]

    app = IotmeterApp(dash_runtime, now=frozen_now, refresh_s=30.0, export_dir=exports)
    drive(app, scenario)
    assert stat.S_IMODE(exports.stat().st_mode) == 0o700
    assert len(list(exports.iterdir())) == 4


def test_exports_never_overwrite_and_neutralise_formulas(tmp_path: Path) -> None:
    table = ExportTable("fleet", ("a", "b"), [["=HYPERLINK(\"x\")", -3.5], ["-12.5", "@x"]])
    first = write_csv(tmp_path, table, 1_795_740_000_000)
    second = write_csv(tmp_path, table, 1_795_740_000_000)
    assert first != second and first.exists() and second.exists()
    assert read(first)[1:] == [["'=HYPERLINK(\"x\")", "-3.5"], ["-12.5", "'@x"]]
    assert safe_cell("+1") == "+1" and safe_cell("+cmd") == "'+cmd" and safe_cell(None) is None
