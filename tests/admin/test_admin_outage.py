"""The administration services and verbs when a store is away: the change fails with the
store's one-line error, leaves nothing half-done, is audited when the audit log can still be
written, and works again once the store is back."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotmeter_tui.backend.audit import Actor
from iotmeter_tui.backend.broker import free_port
from iotmeter_tui.backend.control.commands import CommandService
from iotmeter_tui.backend.devices import DeviceService
from iotmeter_tui.backend.errors import StoreUnavailable
from iotmeter_tui.backend.stores.factory import open_metadata
from iotmeter_tui.backend.stores.metadata import MetadataStore
from testsupport import PrivatePostgres

REPO = Path(__file__).resolve().parents[2]
ALICE = Actor("alice", "cli")


@pytest.fixture
def pg_store(private_postgres: PrivatePostgres) -> Iterator[MetadataStore]:
    store = open_metadata(private_postgres.url, timeout_s=2.0)
    yield store
    store.close()


def test_a_change_while_the_database_is_down_fails_whole_and_works_after(
        private_postgres: PrivatePostgres, pg_store: MetadataStore) -> None:
    devices = DeviceService(pg_store, CommandService(pg_store))
    devices.create("dc-0001", actor=ALICE)
    private_postgres.stop()
    try:
        with pytest.raises(StoreUnavailable, match=r"^postgresql: "):
            devices.replace_config("dc-0001", {"interval_s": 1}, actor=ALICE)
        with pytest.raises(StoreUnavailable):
            devices.create("dc-0002", actor=ALICE)
    finally:
        private_postgres.start()
    # Nothing of the failed changes is there; no audit entry claims they happened.
    assert devices.get("dc-0002") is None
    assert pg_store.list_commands() == [] and pg_store.get_config("dc-0001") == {}
    assert [(e.action, e.result) for e in pg_store.list_audit()] == [("device.create", "ok")]
    change = devices.replace_config("dc-0001", {"interval_s": 1}, actor=ALICE)
    assert change.command_id is not None


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
    clean["PYTHONPATH"] = str(REPO) + os.pathsep + clean.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "iotmeter_tui", *args], cwd=REPO,
                          env={**clean, **env}, capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize("args", [
    ("device", "add", "dc-0001"), ("device", "list"), ("apikey", "create", "ci", "--role",
                                                         "viewer"), ("audit",)])
def test_verbs_on_an_unreachable_database_say_so_in_one_line(tmp_path: Path,
                                                              args: tuple[str, ...]) -> None:
    result = cli({"IOTMETER_HOME": str(tmp_path),
                  "IOTMETER_DB_URL": f"postgresql://iot:s3cret@127.0.0.1:{free_port()}/x"},
                 *args)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("iotmeter: postgresql: no connection")
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_archive_get_on_an_unreachable_s3_says_so_in_one_line(tmp_path: Path) -> None:
    result = cli({"IOTMETER_HOME": str(tmp_path), "IOTMETER_ARCHIVE_URL": "s3://iot-data",
                  "IOTMETER_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}",
                  "IOTMETER_S3_SECRET_KEY": "s3cret-key"}, "archive", "get", "dc-1")
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("iotmeter: s3: ")
    assert "s3cret-key" not in result.stderr
