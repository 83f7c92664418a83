"""ApiKeyService on real metadata stores: a secret shown once and stored only as a hash,
verified until revoked, roles ordered."""

from __future__ import annotations

import hashlib

import pytest

from iotmeter_tui.backend.apikeys import (
    KEY_PREFIX,
    TOUCH_EVERY_MS,
    ApiKeyService,
    hash_secret,
    role_allows,
)
from iotmeter_tui.backend.errors import AlreadyExists, InvalidRequest
from iotmeter_tui.backend.stores.metadata import API_KEY_ROLES, MetadataStore


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_key_verifies_until_revoked(metadata: MetadataStore) -> None:
    keys = ApiKeyService(metadata)
    key, secret = keys.create("ci", "operator")
    assert secret.startswith(KEY_PREFIX) and len(secret) >= len(KEY_PREFIX) + 43
    assert key.key_hash == hashlib.sha256(secret.encode()).hexdigest() == hash_secret(secret)
    stored = metadata.get_api_key("ci")
    assert stored is not None and secret not in repr(stored)
    verified = keys.verify(secret)
    assert verified is not None and (verified.name, verified.role) == ("ci", "operator")
    assert keys.revoke("ci") is True
    assert keys.verify(secret) is None
    assert keys.revoke("ci") is False
    assert [(k.name, k.active) for k in keys.list()] == [("ci", False)]


def test_each_key_is_new_and_names_are_unique(metadata: MetadataStore) -> None:
    keys = ApiKeyService(metadata)
    _, first = keys.create("a", "viewer")
    _, second = keys.create("b", "viewer")
    assert first != second
    with pytest.raises(AlreadyExists, match="'a'"):
        keys.create("a", "admin")


@pytest.mark.parametrize("secret", [
    "", "iotm_", "iotm_" + "x" * 43, "not-a-key", "iotm_" + "y" * 500, "iotm_\x00\udcff"])
def test_anything_else_does_not_verify(metadata: MetadataStore, secret: str) -> None:
    keys = ApiKeyService(metadata)
    keys.create("ci", "admin")
    assert keys.verify(secret) is None


def test_bad_names_and_roles_are_refused(metadata: MetadataStore) -> None:
    keys = ApiKeyService(metadata)
    with pytest.raises(InvalidRequest, match="not a role; use one of viewer, operator, admin"):
        keys.create("ci", "root")
    for name in ("", "-lead", "a b", "x" * 65, "nl\n"):
        with pytest.raises(InvalidRequest, match="API key name"):
            keys.create(name, "viewer")
    assert keys.list() == []


def test_use_is_recorded_at_most_once_a_minute(metadata: MetadataStore) -> None:
    clock = Clock()
    keys = ApiKeyService(metadata, clock=clock)
    _, secret = keys.create("ci", "viewer")
    keys.verify(secret)
    first = metadata.get_api_key("ci").last_used_at  # type: ignore[union-attr]
    assert first == int(clock.now * 1000)
    clock.now += 1
    keys.verify(secret)
    assert metadata.get_api_key("ci").last_used_at == first  # type: ignore[union-attr]
    clock.now += TOUCH_EVERY_MS / 1000
    keys.verify(secret)
    assert metadata.get_api_key("ci").last_used_at > first  # type: ignore[union-attr,operator]


def test_roles_are_ordered() -> None:
    assert API_KEY_ROLES == ("viewer", "operator", "admin")
    allowed = {(r, n) for r in API_KEY_ROLES for n in API_KEY_ROLES if role_allows(r, n)}
    assert allowed == {("viewer", "viewer"), ("operator", "viewer"), ("operator", "operator"),
                       ("admin", "viewer"), ("admin", "operator"), ("admin", "admin")}
    assert not role_allows("root", "viewer") and not role_allows("admin", "root")
