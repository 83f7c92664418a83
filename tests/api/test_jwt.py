"""JWT bearer tokens from an identity provider: verified against its JWKS, served here over
real HTTP by the test, with the role from the configured claim. Bad tokens are 401s; a role
too low a 403; the audit log names the token's subject."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from testsupport.api import LiveApi

AUDIENCE = "iotmeter-api"
ISSUER = "https://idp.example.net/"


class IdentityProvider:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "key-1"
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        self.jwks = json.dumps({"keys": [jwk]}).encode()
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(provider.jwks)))
                self.end_headers()
                self.wfile.write(provider.jwks)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/.well-known/jwks.json"

    def token(self, key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"sub": "alice@example.net", "aud": AUDIENCE, "iss": ISSUER, "iat": now,
                "exp": now + 300, "iotmeter_role": "operator"}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.key, algorithm="RS256", headers={"kid": self.kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.close()


@pytest.fixture
def jwt_api(serve_api: Callable[..., LiveApi], idp: IdentityProvider) -> LiveApi:
    return serve_api({"IOTMETER_API_JWKS_URL": idp.url, "IOTMETER_API_JWT_AUDIENCE": AUDIENCE,
                      "IOTMETER_API_JWT_ISSUER": ISSUER})


def test_a_valid_token_acts_with_its_role(jwt_api: LiveApi, idp: IdentityProvider) -> None:
    token = idp.token()
    assert jwt_api.call("GET", "/api/v1/devices", key=token).status_code == 200
    jwt_api.stores.metadata.create_device("dc-1", "power_meter_dc")
    sent = jwt_api.call("POST", "/api/v1/devices/dc-1/commands", key=token,
                        json={"name": "ping"})
    assert sent.status_code == 202
    assert sent.json()["created_by"] == "alice@example.net"
    # An operator may not create devices.
    assert jwt_api.call("POST", "/api/v1/devices", key=token,
                        json={"device_id": "dc-2"}).status_code == 403
    admin = idp.token(sub="root@example.net", iotmeter_role="admin")
    entries = jwt_api.call("GET", "/api/v1/audit", key=admin).json()["items"]
    assert {(e["actor"], e["role"], e["action"], e["result"]) for e in entries} >= {
        ("alice@example.net", "operator", "command.send", "ok"),
        ("alice@example.net", "operator", "device.create", "denied")}
    assert idp.fetches == 1  # the JWKS is cached, not fetched per request
    # API keys keep working beside tokens.
    assert jwt_api.call("GET", "/api/v1/devices", key="viewer").status_code == 200


@pytest.mark.parametrize("claims", [
    {"exp": int(time.time()) - 60},
    {"aud": "someone-else"},
    {"iss": "https://evil.example/"},
    {"iotmeter_role": None},
    {"iotmeter_role": "superuser"},
    {"sub": None},
], ids=["expired", "audience", "issuer", "no-role", "unknown-role", "no-subject"])
def test_bad_tokens_are_401(jwt_api: LiveApi, idp: IdentityProvider,
                            claims: dict[str, Any]) -> None:
    response = jwt_api.call("GET", "/api/v1/devices", key=idp.token(**claims))
    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"] == "application/problem+json"


def test_a_token_signed_by_another_key_is_401(jwt_api: LiveApi,
                                              idp: IdentityProvider) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    response = jwt_api.call("GET", "/api/v1/devices", key=idp.token(key=stranger))
    assert response.status_code == 401
    # An unsigned token is refused too.
    unsigned = jwt.encode({"sub": "x", "iotmeter_role": "admin", "exp": time.time() + 60,
                           "aud": AUDIENCE, "iss": ISSUER}, None, algorithm="none")
    assert jwt_api.call("GET", "/api/v1/devices", key=unsigned).status_code == 401


def test_identity_provider_down_is_401_not_500(serve_api: Callable[..., LiveApi],
                                                idp: IdentityProvider) -> None:
    token = idp.token()
    idp.close()
    api = serve_api({"IOTMETER_API_JWKS_URL": idp.url, "IOTMETER_API_JWT_AUDIENCE": AUDIENCE})
    response = api.call("GET", "/api/v1/devices", key=token)
    assert response.status_code == 401
    assert "unreachable" in response.json()["detail"]


def test_without_a_jwks_tokens_are_unknown_keys(api: LiveApi, idp: IdentityProvider) -> None:
    assert api.call("GET", "/api/v1/devices", key=idp.token()).status_code == 401
