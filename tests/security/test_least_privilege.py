"""The least-privilege example files: deploy/postgres/roles.sql gives an
owner that migrates and a runtime role that only reads and writes rows, on a real
PostgreSQL; the InfluxDB and S3 examples grant one database / one bucket."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from iotmeter_tui.backend.errors import StoreError
from iotmeter_tui.backend.stores.metadata_postgres import open_postgres_metadata
from testsupport.services import SHARED_POSTGRES_URL

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def roles() -> Iterator[dict[str, str]]:
    suffix = secrets.token_hex(4)
    names = {"owner": f"iot_owner_{suffix}", "runtime": f"iot_app_{suffix}",
             "database": f"iot_lp_{suffix}"}
    result = subprocess.run(
        ["psql", SHARED_POSTGRES_URL, "-q", "-v", "ON_ERROR_STOP=1",
         "-v", f"owner={names['owner']}", "-v", f"runtime={names['runtime']}",
         "-v", f"database={names['database']}", "-v", "owner_password=o-secret",
         "-v", "runtime_password=r-secret", "-f", str(ROOT / "deploy/postgres/roles.sql")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    try:
        yield names
    finally:
        with psycopg.connect(SHARED_POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{names["database"]}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{names["owner"]}"')
            conn.execute(f'DROP ROLE IF EXISTS "{names["runtime"]}"')


def url(role: str, database: str) -> str:
    return f"postgresql://{role}@127.0.0.1:5432/{database}"


def test_the_owner_migrates_and_the_runtime_role_only_touches_rows(
        roles: dict[str, str]) -> None:
    runtime = open_postgres_metadata(url(roles["runtime"], roles["database"]))
    try:
        # Before the owner migrated: the runtime role cannot create the schema.
        with pytest.raises(StoreError, match="permission denied"):
            runtime.create_device("dc-0001", "power_meter_dc")
    finally:
        runtime.close()

    owner = open_postgres_metadata(url(roles["owner"], roles["database"]))
    try:
        assert owner.migrate()  # every migration, as the owner
    finally:
        owner.close()

    runtime = open_postgres_metadata(url(roles["runtime"], roles["database"]))
    try:
        device = runtime.create_device("dc-0001", "power_meter_dc")  # rows and identities
        assert runtime.get_device("dc-0001") == device
        assert runtime.delete_device("dc-0001") is not None
    finally:
        runtime.close()

    with psycopg.connect(url(roles["runtime"], roles["database"]), autocommit=True) as conn:
        for statement in ("CREATE TABLE intruder (a int)", "DROP TABLE devices",
                          "ALTER TABLE devices ADD COLUMN x int",
                          "TRUNCATE schema_migrations"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_the_s3_policy_grants_one_bucket_and_no_bucket_administration() -> None:
    policy = json.loads((ROOT / "deploy/s3/iotmeter-policy.json").read_text())
    resources = {r for s in policy["Statement"] for r in (
        s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])}
    assert resources == {"arn:aws:s3:::iot-data", "arn:aws:s3:::iot-data/*"}
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    assert not any("*" in a for a in actions)
    # Objects are written and read, never deleted or re-permissioned by the collector.
    assert actions.isdisjoint({"s3:DeleteObject", "s3:DeleteBucket", "s3:PutBucketPolicy",
                               "s3:CreateBucket", "s3:PutObjectAcl"})
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket"} <= actions
