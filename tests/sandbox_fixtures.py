"""Pytest fixtures for a running SMART/FHIR sandbox and clients registered on it.

* ``sandbox_server`` (module): a :class:`SandboxServer` with 10 generated patients (seed 42).
* ``sandbox`` (function): the same server with its faults, request log and clock reset for the test. Tests that
  change data should use ``fresh_sandbox`` (function-scoped server of its own) instead.
* ``sandbox_factory``: start servers with any :class:`SandboxConfig` (stopped after the test).
* ``smart_client``: a client registered on ``sandbox`` with a fresh RS384 key, inline JWKS, scope
  ``system/*.read``, an AccessPolicy, and ``AIRFLOW_CONN_SMART_FHIR_DEFAULT`` set (via monkeypatch).
* ``smart_client_factory``: the same with options: ``algorithm`` (RS384, ES384, ...), ``jwks_uri=True``
  (the JWKS is served by a small loopback HTTP server), ``scope``, ``conn_id``, ``server``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.sandbox.state import SandboxConfig
from tests.loopback import AnswerServer, send_json

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of a public JWK."""
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({name: jwk[name] for name in members}, sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def make_key(algorithm: str = "RS384") -> tuple[Any, str, dict[str, Any]]:
    """(private key, private PEM, public JWK with kid = thumbprint) for an algorithm."""
    if algorithm.startswith("ES"):
        key: Any = ec.generate_private_key(_CURVES[algorithm]())
        public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public["kid"] = jwk_thumbprint(public)
    return key, pem, public


@dataclass
class SmartClient:
    """A client registered on a sandbox. Never print ``private_key_pem``."""

    server: SandboxServer
    client_id: str
    conn_id: str
    algorithm: str
    private_key: Any = field(repr=False)
    private_key_pem: str = field(repr=False)
    jwk: dict[str, Any] = field(repr=False)
    scope: str = "system/*.read"
    jwks_uri: str | None = None
    #: For ``jwks_uri`` clients: the loopback server publishing the JWKS (set ``.jwks`` to rotate keys).
    jwks_server: Any = field(default=None, repr=False)
    #: More connection extras (e.g. ``allowed_internal_hosts`` for the sandbox's presigned file origin).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kid(self) -> str:
        return str(self.jwk["kid"])

    def assertion(self, *, headers: dict[str, Any] | None = None, key: Any = None, **claims: Any) -> str:
        """A signed client assertion; keyword arguments override claims (None removes one)."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.server.token_url,
            "exp": now + 240,
            "jti": uuid.uuid4().hex,
        }
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}
        header = {"kid": self.kid, "typ": "JWT", **(headers or {})}
        # typ=None is kept: it tells pyjwt to leave the typ header out.
        header = {name: value for name, value in header.items() if value is not None or name == "typ"}
        algorithm = header.pop("alg", self.algorithm)
        return jwt.encode(payload, key or self.private_key, algorithm=algorithm, headers=header)

    def token_response(self, scope: str | None = None, assertion: str | None = None) -> requests.Response:
        return requests.post(
            self.server.token_url,
            data={
                "grant_type": "client_credentials",
                "scope": scope or self.scope,
                "client_assertion_type": JWT_BEARER,
                "client_assertion": assertion or self.assertion(),
            },
            timeout=30,
        )

    def token(self, scope: str | None = None) -> str:
        response = self.token_response(scope)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def session(self, scope: str | None = None) -> requests.Session:
        """A requests session sending this client's bearer token."""
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.token(scope)}"
        return session

    def connection_json(self) -> str:
        return json.dumps(
            {
                "conn_type": "smart_fhir",
                "host": self.server.fhir_base,
                "login": self.client_id,
                "password": self.private_key_pem,
                "extra": {"scope": self.scope, "kid": self.kid, "algorithm": self.algorithm, **self.extra},
            }
        )


class _JwksServer:
    """A loopback HTTP server answering ``GET /jwks.json`` with a settable JWKS."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.hits = 0
        self.httpd = AnswerServer(self._answer)
        self.url = f"{self.httpd.url}/jwks.json"

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        self.hits += 1
        send_json(request, self.jwks, 200 if request.path == "/jwks.json" else 404)

    def close(self) -> None:
        self.httpd.close()


def register_client(
    server: SandboxServer,
    client_id: str,
    *,
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
    scope: str = "system/*.read",
    active: bool = True,
    grant_types: tuple[str, ...] = ("client_credentials",),
    policy: bool = True,
    access_token_expiration: int = 300,
) -> None:
    body: dict[str, Any] = {
        "type": "bulk-api-client",
        "active": active,
        "auth": {
            "client_credentials": {
                "client_assertion_types": [JWT_BEARER],
                "access_token_expiration": access_token_expiration,
                "token_format": "jwt",
            }
        },
        "scope": scope.split(),
        "grant_types": list(grant_types),
    }
    if jwks is not None:
        body["jwks"] = jwks
    if jwks_uri is not None:
        body["jwks_uri"] = jwks_uri
    response = requests.put(f"{server.base_url}/Client/{client_id}", json=body, auth=server.admin_auth, timeout=30)
    assert response.status_code in (200, 201), response.text
    if policy:
        response = requests.put(
            f"{server.base_url}/AccessPolicy/{client_id}",
            json={"engine": "allow", "link": [{"resourceType": "Client", "id": client_id}]},
            auth=server.admin_auth,
            timeout=30,
        )
        assert response.status_code in (200, 201), response.text


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(patients=10, seed=42)) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxServer]:
    sandbox_server.state.faults.reset()
    sandbox_server.state.clock.reset()
    yield sandbox_server
    sandbox_server.state.faults.reset()
    sandbox_server.state.clock.reset()


@pytest.fixture
def sandbox_factory() -> Iterator[Callable[..., SandboxServer]]:
    servers: list[SandboxServer] = []

    def start(config: SandboxConfig | None = None, **options: Any) -> SandboxServer:
        server = SandboxServer(config or SandboxConfig(**options)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fresh_sandbox(sandbox_factory: Callable[..., SandboxServer]) -> SandboxServer:
    return sandbox_factory(patients=10, seed=42)


@pytest.fixture
def smart_client_factory(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., SmartClient]]:
    jwks_servers: list[_JwksServer] = []

    def create(
        *,
        algorithm: str = "RS384",
        jwks_uri: bool = False,
        scope: str = "system/*.read",
        conn_id: str = "smart_fhir_default",
        server: SandboxServer | None = None,
        client_id: str | None = None,
        set_connection: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> SmartClient:
        target = server or sandbox
        key, pem, public = make_key(algorithm)
        client_id = client_id or f"client-{uuid.uuid4().hex[:10]}"
        uri = None
        jwks_server = None
        if jwks_uri:
            jwks_server = _JwksServer()
            jwks_server.jwks = {"keys": [public]}
            jwks_servers.append(jwks_server)
            uri = jwks_server.url
            register_client(target, client_id, jwks_uri=uri, scope=scope)
        else:
            register_client(target, client_id, jwks={"keys": [public]}, scope=scope)
        client = SmartClient(
            target, client_id, conn_id, algorithm, key, pem, public, scope, uri, jwks_server, dict(extra or {})
        )
        if set_connection:
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", client.connection_json())
        return client

    yield create
    for jwks_server in jwks_servers:
        jwks_server.close()


@pytest.fixture
def smart_client(smart_client_factory: Callable[..., SmartClient]) -> SmartClient:
    return smart_client_factory()


@pytest.fixture
def bulk_server(
    sandbox_factory: Callable[..., SandboxServer], smart_client_factory: Callable[..., SmartClient]
) -> Callable[..., tuple[SandboxServer, SmartClient]]:
    """A fresh sandbox with the Bulk settings a test asks for, and a registered client as the default conn.

    ``Retry-After`` defaults to one second so polling tests stay short; the data is ``patients`` patients
    made from ``seed``. ``allow_files_origin`` lets the connection reach the sandbox's second loopback
    origin (presigned files) through ``allowed_internal_hosts``: loopback addresses other than the FHIR
    server's own origin are refused otherwise, as a real deployment's internal hosts are.
    """
    from airflow_provider_smart.sandbox.bulk_jobs import BulkSettings

    def start(
        *, patients: int = 10, seed: int = 42, allow_files_origin: bool = False, **settings: Any
    ) -> tuple[SandboxServer, SmartClient]:
        settings.setdefault("retry_after", 1)
        server = sandbox_factory(SandboxConfig(patients=patients, seed=seed, bulk=BulkSettings(**settings)))
        extra = {"allowed_internal_hosts": server.files_base_url} if allow_files_origin else None
        return server, smart_client_factory(server=server, extra=extra)

    return start
