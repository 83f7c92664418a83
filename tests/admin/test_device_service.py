"""DeviceService on real metadata stores: registry changes, config validation and the
set_config command it sends, broker credentials, and the audit entry of every change."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotmeter_tui.backend.audit import Actor, AuditLog
from iotmeter_tui.backend.control.commands import CommandService
from iotmeter_tui.backend.devices import (
    DEVICE_KEYS,
    SERVER_KEYS,
    DeviceService,
    validate_config,
)
from iotmeter_tui.backend.errors import (
    AlreadyExists,
    InvalidRequest,
    NotFound,
    StoreUnavailable,
)
from iotmeter_tui.backend.stores.metadata import DeviceUpdate, MetadataStore

ALICE = Actor("alice", "cli")
CI = Actor("ci", "operator", request_id="req-1")


class RecordingCredentials:
    """A DeviceCredentials that remembers its calls and can be told to fail."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    def provision(self, device_id: str) -> str:
        self.calls.append(("provision", device_id))
        if self.fail == "provision":
            raise StoreUnavailable("broker", "dynamic security plugin did not answer")
        return f"pw-{device_id}"

    def revoke(self, device_id: str) -> None:
        self.calls.append(("revoke", device_id))
        if self.fail == "revoke":
            raise StoreUnavailable("broker", "dynamic security plugin did not answer")


def service(metadata: MetadataStore, **kwargs: Any) -> DeviceService:
    return DeviceService(metadata, CommandService(metadata), **kwargs)


def audit_rows(metadata: MetadataStore) -> list[tuple[str, str, str | None, str]]:
    return [(e.actor, e.action, e.target, e.result) for e in reversed(metadata.list_audit())]


def test_create_get_update_delete_are_audited(metadata: MetadataStore) -> None:
    devices = service(metadata)
    created = devices.create("dc-0001", "power_meter_dc", name="Feeder 7", location="North",
                             metadata={"rack": 2}, actor=ALICE)
    assert created.password is None
    assert devices.get("dc-0001") == created.device
    updated = devices.update("dc-0001", location="South", actor=CI)
    assert (updated.name, updated.location, updated.metadata) == ("Feeder 7", "South",
                                                                  {"rack": 2})
    deleted = devices.delete("dc-0001", actor=ALICE)
    assert deleted.device_id == "dc-0001" and devices.get("dc-0001") is None
    assert audit_rows(metadata) == [
        ("alice", "device.create", "dc-0001", "ok"),
        ("ci", "device.update", "dc-0001", "ok"),
        ("alice", "device.delete", "dc-0001", "ok"),
    ]
    update_entry = metadata.list_audit(action="device.update")[0]
    assert update_entry.request_id == "req-1" and update_entry.role == "operator"
    assert update_entry.detail == {"fields": ["location"]}


def test_refusals_are_audited_with_their_reason(metadata: MetadataStore) -> None:
    devices = service(metadata)
    devices.create("dc-0001", actor=ALICE)
    with pytest.raises(AlreadyExists):
        devices.create("dc-0001", actor=ALICE)
    with pytest.raises(InvalidRequest, match="not a device id"):
        devices.create("bad/id", actor=ALICE)
    with pytest.raises(NotFound, match="nobody"):
        devices.delete("nobody", actor=ALICE)
    assert audit_rows(metadata)[1:] == [
        ("alice", "device.create", "dc-0001", "conflict"),
        ("alice", "device.create", "bad/id", "invalid"),
        ("alice", "device.delete", "nobody", "not_found"),
    ]
    invalid = metadata.list_audit(action="device.create")[0]
    assert invalid.detail is not None and "not a device id" in invalid.detail["error"]


def test_no_actor_means_no_audit_entry(metadata: MetadataStore) -> None:
    service(metadata).create("dc-0001")
    assert metadata.list_audit() == []


@pytest.mark.parametrize("field, value, message", [
    ("name", "x" * 201, "longer than 200"),
    ("name", "evil\x1b[2Jname", "control characters"),
    ("location", "line\nbreak", "control characters"),
    ("location", 12, "must be text"),
    ("metadata", ["not", "an", "object"], "JSON object"),
    ("metadata", {"v": math.inf}, "not JSON"),
    ("metadata", {"blob": "x" * 20_000}, "larger than"),
])
def test_bad_descriptions_are_refused_by_name(metadata: MetadataStore, field: str, value: Any,
                                              message: str) -> None:
    devices = service(metadata)
    with pytest.raises(InvalidRequest, match=message):
        devices.create("dc-0001", **{field: value})
    assert devices.get("dc-0001") is None
    devices.create("dc-0001")
    with pytest.raises(InvalidRequest, match=message):
        devices.update("dc-0001", **{field: value})


def test_update_of_an_unknown_device_is_not_found(metadata: MetadataStore) -> None:
    with pytest.raises(NotFound):
        service(metadata).update("nobody", name="x")


def test_credentials_are_provisioned_and_revoked(metadata: MetadataStore) -> None:
    broker = RecordingCredentials()
    devices = service(metadata, credentials=broker)
    created = devices.create("dc-0001", actor=ALICE)
    assert created.password == "pw-dc-0001"
    devices.delete("dc-0001", actor=ALICE)
    assert broker.calls == [("provision", "dc-0001"), ("revoke", "dc-0001")]
    # The password never reaches the audit log.
    assert "pw-dc-0001" not in repr(metadata.list_audit())


def test_a_failed_provisioning_leaves_no_device(metadata: MetadataStore) -> None:
    devices = service(metadata, credentials=RecordingCredentials(fail="provision"))
    with pytest.raises(StoreUnavailable, match="broker"):
        devices.create("dc-0001", actor=ALICE)
    assert devices.get("dc-0001") is None
    assert audit_rows(metadata) == [("alice", "device.create", "dc-0001", "failed")]


def test_a_failed_revocation_keeps_the_device(metadata: MetadataStore) -> None:
    devices = service(metadata, credentials=RecordingCredentials(fail="revoke"))
    devices.create("dc-0001")
    with pytest.raises(StoreUnavailable):
        devices.delete("dc-0001", actor=ALICE)
    assert devices.get("dc-0001") is not None


def test_list_pages_with_tokens(metadata: MetadataStore) -> None:
    devices = service(metadata)
    for i in range(7):
        devices.create(f"dc-{i:04d}", name=f"feeder {i}")
    page = devices.list(limit=3)
    assert [d.device_id for d in page.devices] == ["dc-0000", "dc-0001", "dc-0002"]
    assert page.total == 7 and page.next_after is not None
    seen = [d.device_id for d in page.devices]
    while page.next_after is not None:
        page = devices.list(limit=3, after=page.next_after)
        seen += [d.device_id for d in page.devices]
    assert seen == [f"dc-{i:04d}" for i in range(7)]
    assert devices.list(search="feeder 3").devices[0].device_id == "dc-0003"
    with pytest.raises(InvalidRequest, match="cursor"):
        devices.list(after="garbage")
    with pytest.raises(InvalidRequest, match="status"):
        devices.list(status="sleeping")
    with pytest.raises(InvalidRequest, match="order"):
        devices.list(order_by="password")
    with pytest.raises(InvalidRequest, match="limit"):
        devices.list(limit=0)


def test_replace_config_sends_the_changed_device_keys(metadata: MetadataStore) -> None:
    devices = service(metadata)
    devices.create("dc-0001")
    change = devices.replace_config(
        "dc-0001", {"interval_s": 0.5, "nominal_v": 750, "x_note": "new feeder"}, actor=CI)
    assert change.command_id is not None and change.sent == {"interval_s": 0.5}
    cmd = metadata.get_command(change.command_id)
    assert cmd is not None
    assert (cmd.name, cmd.params, cmd.state, cmd.created_by) == (
        "set_config", {"interval_s": 0.5}, "queued", "ci")
    assert devices.get_config("dc-0001") == {"interval_s": 0.5, "nominal_v": 750,
                                             "x_note": "new feeder"}
    # The same device keys again: nothing to send; server keys change without a command.
    again = devices.replace_config("dc-0001", {"interval_s": 0.5, "nominal_v": 900},
                                   actor=CI)
    assert again.command_id is None and again.reason == "no device-applied key changed"
    assert devices.get_config("dc-0001") == {"interval_s": 0.5, "nominal_v": 900}
    only_server = devices.replace_config("dc-0001", {"gap_threshold": 5}, actor=CI)
    assert only_server.reason == "no device-applied key in the config"
    # The anomaly detector's per-device sensitivity is a server key too (0 turns it off).
    quiet = devices.replace_config("dc-0001", {"anomaly_sensitivity": 0}, actor=CI)
    assert quiet.command_id is None and devices.get_config("dc-0001") == {
        "anomaly_sensitivity": 0}
    both = devices.replace_config("dc-0001", {"heartbeat_s": 30, "report_temperature": False},
                                  actor=CI)
    assert both.sent == {"heartbeat_s": 30, "report_temperature": False}
    assert len(metadata.list_commands(device_id="dc-0001")) == 2
    entry = metadata.list_audit(action="device.config")[0]
    assert entry.detail == {"keys": ["heartbeat_s", "report_temperature"],
                            "command_id": both.command_id}


def test_replace_config_without_a_command_service_stores_only(metadata: MetadataStore) -> None:
    devices = DeviceService(metadata, None)
    devices.create("dc-0001")
    change = devices.replace_config("dc-0001", {"interval_s": 2}, actor=None)
    assert change.command_id is None and "stored only" in (change.reason or "")
    assert metadata.list_commands() == []


@pytest.mark.parametrize("values, message", [
    ({"interval_s": "fast"}, "config interval_s: must be a number"),
    ({"interval_s": math.nan}, "finite"),
    ({"interval_s": 10**400}, "finite"),
    ({"gap_threshold": 2**60}, "finite"),
    ({"x_big": -(10**400)}, "a note is text"),
    ({"interval_s": 0}, "not between 0.01 and 86400"),
    ({"heartbeat_s": True}, "config heartbeat_s: must be a number"),
    ({"report_temperature": 1}, "true or false"),
    ({"gap_threshold": 2.5}, "whole number"),
    ({"nominal_v": -750}, "nominal_v"),
    ({"anomaly_sensitivity": -1}, "anomaly_sensitivity"),
    ({"volts": 1}, "'volts' is not a known key"),
    ({"x_": 1}, "'x_' is not a known key"),
    ({"x_note": {"nested": 1}}, "a note is text"),
    ({"x_note": "bell\x07"}, "control characters"),
    ([1, 2], "must be an object"),
])
def test_bad_config_is_refused_naming_the_key(metadata: MetadataStore, values: Any,
                                              message: str) -> None:
    devices = service(metadata)
    devices.create("dc-0001")
    devices.replace_config("dc-0001", {"nominal_v": 750}, actor=None)
    with pytest.raises(InvalidRequest, match=message):
        devices.replace_config("dc-0001", values, actor=ALICE)
    assert devices.get_config("dc-0001") == {"nominal_v": 750}
    assert metadata.list_commands() == []
    assert audit_rows(metadata) == [("alice", "device.config", "dc-0001", "invalid")]


def test_config_of_an_unknown_device_is_not_found(metadata: MetadataStore) -> None:
    devices = service(metadata)
    with pytest.raises(NotFound):
        devices.get_config("nobody")
    with pytest.raises(NotFound):
        devices.replace_config("nobody", {"nominal_v": 750}, actor=None)


def test_validate_config_normalises_whole_numbers() -> None:
    assert validate_config({"gap_threshold": 5.0, "x_ok": True}) == {"gap_threshold": 5,
                                                                    "x_ok": True}


def test_a_deleted_device_heard_again_is_a_new_unknown_device(metadata: MetadataStore) -> None:
    devices = service(metadata)
    devices.create("dc-0001", "power_meter_dc", name="Feeder")
    devices.delete("dc-0001")
    metadata.apply_collector_batch([DeviceUpdate("dc-0001", 10_000)], [])
    again = devices.get("dc-0001")
    assert again is not None and (again.device_type, again.name) == ("unknown", None)


def test_audit_log_refuses_an_unknown_result(metadata: MetadataStore) -> None:
    with pytest.raises(ValueError, match="audit result"):
        AuditLog(metadata).record("a", "cli", "x", None, "maybe")


@pytest.mark.parametrize("ending", ["timed_out", "rejected", "failed"])
def test_the_same_config_again_retries_a_set_config_that_did_not_land(
        metadata: MetadataStore, ending: str) -> None:
    devices = service(metadata)
    devices.create("dc-0001")
    first = devices.replace_config("dc-0001", {"interval_s": 2, "heartbeat_s": 30,
                                               "nominal_v": 750}, actor=CI, timeout_s=60)
    assert first.command_id is not None
    cmd = metadata.get_command(first.command_id)
    assert cmd is not None and cmd.expires_at == cmd.created_at + 60_000
    # Still on its way: the same config sends nothing more.
    assert devices.replace_config("dc-0001", first.config, actor=CI).command_id is None
    metadata.update_command(first.command_id, state=ending, at=cmd.created_at + 1)
    # "Newest" is by created_at in ms: two commands in one millisecond have no order (their
    # ids are random), so the retry must come at least a millisecond after the first.
    time.sleep(0.002)
    retry = devices.replace_config("dc-0001", first.config, actor=CI)
    assert retry.command_id not in (None, first.command_id)
    assert retry.sent == {"interval_s": 2, "heartbeat_s": 30}
    # Once one is done, unchanged keys are not sent again.
    metadata.update_command(retry.command_id, state="done", at=cmd.created_at + 2)  # type: ignore[arg-type]
    assert devices.replace_config("dc-0001", first.config, actor=CI).command_id is None


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**52)
    | st.sampled_from([10**400, -(2**53) - 1, 2**53]) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(values=st.dictionaries(
    st.sampled_from([*DEVICE_KEYS, *SERVER_KEYS, "x_note", "x_", "volts", "X_a", "x_\x1b"])
    | st.text(max_size=10), _json_values, max_size=5) | _json_values)
def test_any_json_is_validated_or_refused_cleanly(values: Any) -> None:
    """What an API body may hold: a clean config or InvalidRequest, never another error."""
    try:
        clean = validate_config(values)
    except InvalidRequest as exc:
        assert "\n" not in str(exc)
        return
    assert set(clean) == set(values)
    for key, value in clean.items():
        if key in DEVICE_KEYS or key in SERVER_KEYS:
            assert value is True or value is False or math.isfinite(value)
        else:
            assert key.startswith("x_") and len(key) > 2


def test_audit_listing_bounds_its_limit(metadata: MetadataStore) -> None:
    audit = AuditLog(metadata)
    for n in range(3):
        audit.record("a", "cli", "x", str(n), "ok")
    assert [e.target for e in audit.list(limit=2)] == ["2", "1"]
    for bad in (0, -1, 1001):
        with pytest.raises(InvalidRequest, match="limit"):
            audit.list(limit=bad)
