"""The stores benchmark the stores issue asks for: time-series write throughput and query
latency (one device's day downsampled; latest values of 10,000 devices) on both adapters, then
archive objects/s on both adapters. Each part prints its figures and writes its own JSON under
bench/results/.

    .venv/bin/python bench/stores.py
"""

from __future__ import annotations

import runpy
from pathlib import Path

HERE = Path(__file__).parent

if __name__ == "__main__":
    for part in ("stores_timeseries.py", "stores_archive.py"):
        print(f"== {part}", flush=True)
        runpy.run_path(str(HERE / part), run_name="__main__")
