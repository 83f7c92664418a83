"""Who is calling: an API key (`Authorization: Bearer iotm_...`, checked by ApiKeyService) or,
where an identity provider is configured, a JWT verified against its JWKS with the role taken
from a configured claim. Failures carry the reason the metrics count (missing, invalid,
revoked); a role too low is `forbidden` (403)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import jwt

from iotmeter_tui.backend.apikeys import ApiKeyService, hash_secret
from iotmeter_tui.backend.stores.metadata import API_KEY_ROLES

log = logging.getLogger(__name__)

JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                  "ES512", "EdDSA"]
# JWKS fetched at most this often (and again at once for an unknown key id).
JWKS_CACHE_S = 300
JWKS_TIMEOUT_S = 5


@dataclass(frozen=True, slots=True)
class Principal:
    name: str  # the key's name or the JWT's subject: the audit log's actor
    role: str
    kind: str  # "key" | "jwt"

    @property
    def bucket(self) -> str:
        """The rate limiter's key."""
        return f"{self.kind}:{self.name}"


class AuthFailure(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # missing | invalid | revoked
        self.detail = detail


class Authenticator:
    def __init__(self, keys: ApiKeyService, *, jwks_url: str | None = None,
                 audience: str | None = None, issuer: str | None = None,
                 role_claim: str = "iotmeter_role") -> None:
        self.keys = keys
        self.audience = audience
        self.issuer = issuer
        self.role_claim = role_claim
        self._jwks = (jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=JWKS_CACHE_S,
                                      timeout=JWKS_TIMEOUT_S) if jwks_url else None)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthFailure("missing", "this endpoint needs 'Authorization: Bearer <key>'")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthFailure("invalid", "the Authorization header is not 'Bearer <key>'")
        if credential.count(".") == 2 and self._jwks is not None:
            return self._from_jwt(credential)
        return self._from_key(credential)

    def _from_key(self, secret: str) -> Principal:
        key = self.keys.verify(secret)
        if key is None:
            known = self.keys.metadata.get_api_key_by_hash(hash_secret(secret))
            if known is not None and not known.active:
                raise AuthFailure("revoked", "this API key has been revoked")
            raise AuthFailure("invalid", "unknown API key")
        return Principal(key.name, key.role, "key")

    def _from_jwt(self, token: str) -> Principal:
        assert self._jwks is not None
        try:
            signing_key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token, signing_key.key, algorithms=JWT_ALGORITHMS, audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None})
        except jwt.PyJWKClientConnectionError as exc:
            # The identity provider is down: the token cannot be checked, so it is refused.
            log.warning("JWKS not reachable", extra={"event": "api_jwks_unreachable",
                                                     "error": str(exc)})
            raise AuthFailure("invalid", "the token cannot be verified now "
                              "(identity provider unreachable)") from None
        except (jwt.PyJWTError, jwt.PyJWKClientError) as exc:
            raise AuthFailure("invalid", f"bad token: {exc}") from None
        role = claims.get(self.role_claim)
        if role not in API_KEY_ROLES:
            raise AuthFailure("invalid", f"the token's {self.role_claim!r} claim is not one of "
                              f"{', '.join(API_KEY_ROLES)}")
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthFailure("invalid", "the token has no subject")
        return Principal(subject[:200], role, "jwt")
