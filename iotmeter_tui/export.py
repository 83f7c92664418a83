"""CSV export of what a view shows (`e`): one file per export under $IOTMETER_HOME/exports,
readable by its owner only (fleet data is the operator's, not every local user's).

Cells that came from devices or operators are text a spreadsheet might run as a formula
(`=HYPERLINK(...)`): such a cell gets a leading apostrophe, numbers stay numbers."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

Cell = str | int | float | None
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True, slots=True)
class ExportTable:
    """What a view hands to the exporter: a file-name stem, the header, the rows."""

    name: str
    header: Sequence[str]
    rows: list[Sequence[Cell]]


def iso(ts_ms: int | None) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC ('' for none)."""
    if ts_ms is None:
        return ""
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds")


def safe_cell(value: Cell) -> Cell:
    if not isinstance(value, str) or not value.startswith(FORMULA_START):
        return value
    try:
        float(value)
        return value  # "-12.5" is a number, not a formula
    except ValueError:
        return "'" + value


def write_csv(directory: Path, table: ExportTable, now_ms: int) -> Path:
    """Write `table` to a new file in `directory` (created 0700) and return its path. The
    file is created 0600 and never overwrites another export."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1000):
        suffix = f"-{attempt}" if attempt else ""
        path = directory / f"{table.name}-{stamp}{suffix}.csv"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(table.header)
            writer.writerows(_safe_rows(table.rows))
        return path
    raise FileExistsError(f"{directory}: too many exports named {table.name}-{stamp}")


def _safe_rows(rows: Iterable[Sequence[Cell]]) -> Iterable[list[Cell]]:
    for row in rows:
        yield [safe_cell(cell) for cell in row]
