"""API keys: created once (the secret shown to the operator and never again), verified on
every API request, revoked by name. Roles are ordered: viewer < operator < admin."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from typing import Final

from iotmeter_tui.backend.errors import InvalidRequest
from iotmeter_tui.backend.stores.metadata import API_KEY_ROLES, ApiKey, MetadataStore

# A recognisable prefix: secret scanners and people can tell an iotmeter key at a glance.
KEY_PREFIX: Final = "iotm_"
NAME_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_NAME_RE: Final = re.compile(NAME_PATTERN)
# secrets.token_urlsafe(32) is 43 characters; anything much longer is not one of ours.
_MAX_SECRET_CHARS: Final = 128
# Writing last_used_at on every request would make each read a write; once a minute is
# enough to tell a key in use from a forgotten one.
TOUCH_EVERY_MS: Final = 60_000


def role_allows(role: str, needed: str) -> bool:
    """True when `role` may do what `needed` may (admin > operator > viewer); an unknown
    role allows nothing."""
    if role not in API_KEY_ROLES or needed not in API_KEY_ROLES:
        return False
    return API_KEY_ROLES.index(role) >= API_KEY_ROLES.index(needed)


def hash_secret(secret: str) -> str:
    """sha256 hex of a key. A fast hash is right here, unlike for passwords: the secret is
    256 random bits, so there is no dictionary to try and brute force is out of reach
    whatever the hash costs; a slow hash would only slow every API request down."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class ApiKeyService:
    def __init__(self, metadata: MetadataStore, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.metadata = metadata
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def create(self, name: str, role: str) -> tuple[ApiKey, str]:
        """A new key: its record and its secret (shown once; only its hash is stored).
        InvalidRequest for a bad name or role, AlreadyExists when the name is taken."""
        if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
            raise InvalidRequest(f"{name!r} is not an API key name (letters, digits, '_.-', "
                                 "at most 64, starting with a letter or digit)")
        if role not in API_KEY_ROLES:
            raise InvalidRequest(f"{role!r} is not a role; use one of {', '.join(API_KEY_ROLES)}")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(name, role, hash_secret(secret), self._now())
        self.metadata.add_api_key(key)
        return key, secret

    def list(self) -> list[ApiKey]:
        """Every key by name, revoked ones included (never a secret: there is none stored)."""
        return self.metadata.list_api_keys()

    def get(self, name: str) -> ApiKey | None:
        return self.metadata.get_api_key(name)

    def revoke(self, name: str) -> bool:
        """True when the key was active and is now revoked; a revoked key never verifies."""
        return self.metadata.revoke_api_key(name, at=self._now())

    def verify(self, secret: str) -> ApiKey | None:
        """The active key this secret belongs to, else None (unknown, malformed, revoked).

        The lookup is by hash, so the database compares digests of the secret, never the
        secret itself; the final compare_digest keeps the one in-process comparison
        constant-time as well. Records the use at most once a minute per key."""
        if (not isinstance(secret, str) or not secret.startswith(KEY_PREFIX)
                or len(secret) > _MAX_SECRET_CHARS):
            return None
        digest = hash_secret(secret)
        key = self.metadata.get_api_key_by_hash(digest)
        if key is None or not hmac.compare_digest(key.key_hash, digest) or not key.active:
            return None
        now = self._now()
        if key.last_used_at is None or now - key.last_used_at >= TOUCH_EVERY_MS:
            self.metadata.touch_api_key(key.name, at=now)
        return key
