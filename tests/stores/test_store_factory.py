"""The factory imports only the adapter a URL asks for: the embedded stores (a directory
archive, SQLite metadata and time series) run without loading the S3 client or psycopg."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from iotmeter_tui.backend.errors import StoreRejected
from iotmeter_tui.backend.stores.factory import open_archive, open_metadata, open_timeseries

SCRIPT = """
import json, sys
from iotmeter_tui.backend.stores.factory import open_archive, open_metadata, open_timeseries
root = sys.argv[1]
archive = open_archive(f"file://{root}/archive")
archive.put("dev-1/a.ndjson", b"{}\\n")
assert archive.get("dev-1/a.ndjson") == b"{}\\n"
metadata = open_metadata(f"sqlite:///{root}/meta.db")
metadata.check()
timeseries = open_timeseries(f"sqlite:///{root}/ts.db")
timeseries.check()
for store in (archive, metadata, timeseries):
    store.close()
print(json.dumps(sorted(sys.modules)))
"""


def test_embedded_stores_do_not_load_the_network_adapters(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                            text=True, timeout=120, check=True)
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert "iotmeter_tui.backend.stores.archive_dir" in loaded  # the script did open them
    assert "iotmeter_tui.backend.stores.metadata_sqlite" in loaded
    for absent in ("minio", "urllib3", "iotmeter_tui.backend.stores.archive_s3",
                   "psycopg", "psycopg_pool", "iotmeter_tui.backend.stores.metadata_postgres",
                   "iotmeter_tui.backend.stores.timeseries_influx"):
        assert absent not in loaded, absent


@pytest.mark.parametrize("opener, url", [
    (open_archive, "ftp://host/bucket"),
    (open_timeseries, "mysql://host/db"),
])
def test_an_unknown_scheme_is_rejected(opener: Callable[[str], object], url: str) -> None:
    with pytest.raises(StoreRejected, match="unsupported"):
        opener(url)


def test_an_unknown_metadata_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported metadata store URL scheme"):
        open_metadata("mysql://host/db")
