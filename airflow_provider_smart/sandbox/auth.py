"""The sandbox's authorization server: Aidbox-style client registration, discovery, and ``POST /auth/token``.

Registration (admin credential, HTTP Basic): ``PUT /Client/{id}`` with ``type``, ``active``,
``auth.client_credentials`` (``client_assertion_types``, ``access_token_expiration``, ``token_format``),
``scope`` (list or space-separated), ``jwks_uri`` (loopback only; fetched and cached) or inline ``jwks``,
``grant_types``; ``PUT /AccessPolicy/{id}`` with ``link: [{"resourceType": "Client", "id": ...}]``.

The token endpoint verifies SMART Backend Services client assertions strictly (see :func:`_verify_assertion`)
and issues access tokens that are JWTs signed with the server's own key. :func:`require_token` is the FastAPI
dependency that FHIR routes use to check a bearer token and its scopes.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from airflow_provider_smart.sandbox.outcomes import FHIR_JSON, FhirHTTPError, OAuthError
from airflow_provider_smart.sandbox.scopes import ScopeError, allows, grant_scopes
from airflow_provider_smart.sandbox.state import SandboxState

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Assertion algorithms accepted: SMART requires RS384 and ES384; the others are common and safe.
ALLOWED_ALGORITHMS = ("RS384", "ES384", "RS256", "RS512", "ES256", "ES512", "PS384")
TOKEN_ALGORITHM = "RS384"  # noqa: S105 (an algorithm name, not a secret)

router = APIRouter()


def get_state(request: Request) -> SandboxState:
    state: SandboxState = request.app.state.sandbox
    return state


def root_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def token_url(request: Request) -> str:
    return root_url(request) + "/auth/token"


def fhir_base(request: Request) -> str:
    return root_url(request) + "/fhir"


# -- admin credential ------------------------------------------------------------------------------
def require_admin(request: Request) -> None:
    """HTTP Basic check of the admin credential; 401 OperationOutcome otherwise."""
    import base64

    state = get_state(request)
    header = request.headers.get("authorization", "")
    user = password = ""
    if header[:6].lower() == "basic ":
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            user = password = ""
    expected_user, expected_password = state.admin_auth
    # Compared as bytes: compare_digest refuses non-ASCII text, and a wrong password must be a 401.
    same_user = secrets.compare_digest(user.encode(), expected_user.encode())
    same_password = secrets.compare_digest(password.encode(), expected_password.encode())
    if not (same_user and same_password):
        raise FhirHTTPError(
            401,
            "login",
            "admin endpoints need the sandbox admin credential (HTTP Basic; see SandboxServer.admin_auth "
            "or the credential printed at start-up)",
            {"WWW-Authenticate": 'Basic realm="sandbox"'},
        )


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise FhirHTTPError(400, "invalid", f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise FhirHTTPError(400, "invalid", "the body must be a JSON object")
    return body


def _is_loopback_url(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _check_jwks(jwks: Any, where: str) -> None:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise FhirHTTPError(422, "invalid", f"{where} must be a JWKS: a JSON object with a non-empty 'keys' list")
    for key in jwks["keys"]:
        if not isinstance(key, dict):
            raise FhirHTTPError(422, "invalid", f"{where}: every key must be a JSON object")
        if any(name in key for name in ("d", "p", "q", "dp", "dq", "qi")):
            raise FhirHTTPError(422, "invalid", f"{where} holds a private key: register the public key set only")
        try:
            jwt.PyJWK(key)
        except jwt.PyJWTError as exc:
            raise FhirHTTPError(422, "invalid", f"{where}: unusable key {key.get('kid')!r}: {exc}") from None


def store_client(state: SandboxState, client_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Validate and store a Client registration; returns (stored document, created). Raises FhirHTTPError."""
    scope = body.get("scope", [])
    if isinstance(scope, str):
        scope = scope.split()
    if not isinstance(scope, list) or not all(isinstance(item, str) for item in scope):
        raise FhirHTTPError(422, "invalid", "scope must be a list of strings (or one space-separated string)")
    jwks_uri = body.get("jwks_uri")
    if body.get("jwks") is not None:
        _check_jwks(body["jwks"], "jwks")
    elif isinstance(jwks_uri, str) and jwks_uri:
        if not _is_loopback_url(jwks_uri):
            raise FhirHTTPError(
                422, "invalid", f"jwks_uri {jwks_uri!r} is not a loopback http(s) URL; the sandbox fetches only those"
            )
    else:
        raise FhirHTTPError(422, "required", "a Client needs its public keys: jwks_uri (loopback URL) or inline jwks")
    grant_types = body.get("grant_types", [])
    if not isinstance(grant_types, list):
        raise FhirHTTPError(422, "invalid", "grant_types must be a list, e.g. ['client_credentials']")
    stored = {**body, "id": client_id, "resourceType": "Client", "scope": scope}
    with state.lock:
        created = client_id not in state.clients
        state.clients[client_id] = stored
        if isinstance(jwks_uri, str):
            state.jwks_cache.pop(jwks_uri, None)
    return stored, created


def store_access_policy(state: SandboxState, policy_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Validate and store an AccessPolicy; returns (stored document, created). Raises FhirHTTPError."""
    links = body.get("link", [])
    if not isinstance(links, list) or not all(isinstance(link, dict) for link in links):
        raise FhirHTTPError(422, "invalid", "link must be a list like [{'resourceType': 'Client', 'id': 'my-client'}]")
    stored = {**body, "id": policy_id, "resourceType": "AccessPolicy"}
    with state.lock:
        created = policy_id not in state.access_policies
        state.access_policies[policy_id] = stored
    return stored, created


@router.put("/Client/{client_id}", dependencies=[Depends(require_admin)])
async def put_client(client_id: str, request: Request) -> JSONResponse:
    stored, created = store_client(get_state(request), client_id, await _json_body(request))
    return JSONResponse(stored, status_code=201 if created else 200)


@router.get("/Client/{client_id}", dependencies=[Depends(require_admin)])
def get_client(client_id: str, request: Request) -> JSONResponse:
    client = get_state(request).clients.get(client_id)
    if client is None:
        raise FhirHTTPError(404, "not-found", f"no Client {client_id!r}")
    return JSONResponse(client)


@router.put("/AccessPolicy/{policy_id}", dependencies=[Depends(require_admin)])
async def put_access_policy(policy_id: str, request: Request) -> JSONResponse:
    stored, created = store_access_policy(get_state(request), policy_id, await _json_body(request))
    return JSONResponse(stored, status_code=201 if created else 200)


@router.get("/AccessPolicy/{policy_id}", dependencies=[Depends(require_admin)])
def get_access_policy(policy_id: str, request: Request) -> JSONResponse:
    policy = get_state(request).access_policies.get(policy_id)
    if policy is None:
        raise FhirHTTPError(404, "not-found", f"no AccessPolicy {policy_id!r}")
    return JSONResponse(policy)


# -- discovery -------------------------------------------------------------------------------------
def smart_configuration(request: Request) -> dict[str, Any]:
    state = get_state(request)
    return {
        "issuer": root_url(request),
        "token_endpoint": token_url(request),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ALLOWED_ALGORITHMS),
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.read", "system/*.rs"] + [f"system/{t}.read" for t in state.resource_types()],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        "jwks_uri": root_url(request) + "/.well-known/jwks.json",
    }


@router.get("/fhir/.well-known/smart-configuration")
@router.get("/.well-known/smart-configuration")
def get_smart_configuration(request: Request) -> JSONResponse:
    return JSONResponse(smart_configuration(request))


@router.get("/.well-known/jwks.json")
def get_server_jwks(request: Request) -> JSONResponse:
    """The public key the server signs access tokens with."""
    import json

    state = get_state(request)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(state.signing_key.public_key()))
    public.update({"kid": state.signing_kid, "alg": TOKEN_ALGORITHM, "use": "sig"})
    return JSONResponse({"keys": [public]})


@router.get("/fhir/metadata")
def get_metadata(request: Request) -> JSONResponse:
    state = get_state(request)
    search_params = [
        {"name": name, "type": kind}
        for name, kind in (("_id", "token"), ("_lastUpdated", "date"), ("patient", "reference"), ("date", "date"))
    ]
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-01-01",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "software": {"name": "airflow-provider-smart sandbox"},
        "implementation": {"description": "Local SMART/FHIR sandbox", "url": fhir_base(request)},
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [{"url": "token", "valueUri": token_url(request)}],
                        }
                    ],
                },
                "resource": [
                    {
                        "type": resource_type,
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": search_params,
                    }
                    for resource_type in state.resource_types()
                ],
            }
        ],
    }
    return JSONResponse(statement, media_type=FHIR_JSON)


# -- the token endpoint ----------------------------------------------------------------------------
async def _client_keys(state: SandboxState, client: dict[str, Any], refresh: bool = False) -> list[dict[str, Any]]:
    """The client's public keys: inline ``jwks`` or its ``jwks_uri`` (cached; refetched when asked)."""
    if client.get("jwks") is not None:
        return list(client["jwks"]["keys"])
    uri = str(client.get("jwks_uri"))
    cached = state.jwks_cache.get(uri)
    if cached is not None and not refresh and time.monotonic() - cached[0] < state.config.jwks_cache_seconds:
        return list(cached[1]["keys"])
    try:
        async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as http:
            response = await http.get(uri, headers={"Accept": "application/json"})
        state.jwks_fetches[uri] = state.jwks_fetches.get(uri, 0) + 1
        response.raise_for_status()
        jwks = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise OAuthError(
            "invalid_client", f"could not fetch the client's jwks_uri {uri}: {type(exc).__name__}: {exc}", 401
        ) from None
    try:
        _check_jwks(jwks, f"the document at jwks_uri {uri}")
    except FhirHTTPError as exc:
        raise OAuthError("invalid_client", str(exc), 401) from None
    state.jwks_cache[uri] = (time.monotonic(), jwks)
    return list(jwks["keys"])


def _pick_key(keys: list[dict[str, Any]], kid: str | None) -> dict[str, Any] | None:
    if kid is None:
        return keys[0] if len(keys) == 1 else None
    return next((key for key in keys if key.get("kid") == kid), None)


def _invalid(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 401)


async def _verify_assertion(state: SandboxState, assertion: str, audience: str) -> tuple[str, dict[str, Any]]:
    """Check a client assertion the way SMART Backend Services requires; returns (client_id, client)."""
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise _invalid(f"client_assertion is not a well-formed JWT: {exc}") from None
    client_id = unverified.get("iss")
    if not isinstance(client_id, str) or not client_id:
        raise _invalid("the assertion's iss claim must be the client_id")
    if unverified.get("sub") != client_id:
        raise _invalid("the assertion's sub claim must equal its iss claim (both the client_id)")
    client = state.clients.get(client_id)
    if client is None:
        raise _invalid(f"unknown client {client_id!r}: register it with PUT /Client/{client_id}")
    if client.get("active") is not True:
        raise _invalid(f"client {client_id!r} is not active")
    if "client_credentials" not in (client.get("grant_types") or []):
        raise OAuthError("unauthorized_client", f"client {client_id!r} may not use the client_credentials grant")
    credentials = (client.get("auth") or {}).get("client_credentials")
    if isinstance(credentials, dict) and JWT_BEARER not in (credentials.get("client_assertion_types") or [JWT_BEARER]):
        raise OAuthError("unauthorized_client", f"client {client_id!r} is not registered for jwt-bearer assertions")
    if not state.linked_policies(client_id):
        raise OAuthError(
            "unauthorized_client",
            f"no AccessPolicy links client {client_id!r}: PUT /AccessPolicy/<id> with "
            f'link [{{"resourceType": "Client", "id": "{client_id}"}}]',
        )
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise _invalid(f"assertion alg {alg!r} is not allowed; use one of {', '.join(ALLOWED_ALGORITHMS)}")
    if header.get("typ") != "JWT":
        raise _invalid(f"the assertion's typ header must be 'JWT', got {header.get('typ')!r}")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _invalid("the assertion's kid header must be a string")
    keys = await _client_keys(state, client)
    if kid is None and len(keys) > 1:
        raise _invalid("the assertion needs a kid header: the client's JWKS has several keys")
    key = _pick_key(keys, kid)
    if key is None and client.get("jwks") is None:
        key = _pick_key(await _client_keys(state, client, refresh=True), kid)  # the client may have rotated
    if key is None:
        raise _invalid(f"no key with kid {kid!r} in the client's registered JWKS")
    if key.get("alg") not in (None, alg):
        raise _invalid(f"key {kid!r} is registered for alg {key.get('alg')!r}, the assertion uses {alg!r}")
    try:
        public = jwt.PyJWK(key, algorithm=alg)
        claims = jwt.decode(
            assertion,
            key=public,
            algorithms=[alg],
            audience=audience,
            issuer=client_id,
            leeway=state.config.clock_skew,
            options={"require": ["exp", "iss", "sub", "aud", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise _invalid("the assertion has expired (exp is in the past)") from None
    except jwt.InvalidAudienceError:
        raise _invalid(
            f"the assertion's aud must be the token URL {audience!r}, got {unverified.get('aud')!r}"
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        raise _invalid(f"the assertion lacks the required claim {exc.claim!r}") from None
    except jwt.InvalidSignatureError:
        raise _invalid(f"the assertion's signature does not verify with the registered key {kid!r}") from None
    except jwt.PyJWTError as exc:
        raise _invalid(f"the assertion does not verify: {type(exc).__name__}: {exc}") from None
    exp = claims["exp"]
    if not isinstance(exp, int | float):
        raise _invalid("the assertion's exp must be a number")
    if exp > time.time() + state.config.max_assertion_lifetime + state.config.clock_skew:
        raise _invalid(f"the assertion's exp is more than {state.config.max_assertion_lifetime} seconds ahead")
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti:
        raise _invalid("the assertion's jti must be a non-empty string")
    if not state.remember_jti(client_id, jti, float(exp) + state.config.clock_skew):
        raise _invalid("the assertion's jti was used before: make a fresh assertion for every token request")
    return client_id, client


def _oauth_response(error: OAuthError) -> JSONResponse:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
    return JSONResponse(
        {"error": error.error, "error_description": error.description}, status_code=error.status, headers=headers
    )


@router.post("/auth/token")
async def post_token(request: Request) -> JSONResponse:
    try:
        return await _issue_token(request)
    except OAuthError as error:
        return _oauth_response(error)


async def _issue_token(request: Request) -> JSONResponse:
    state = get_state(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError(
            "invalid_request", "the token request must be form-encoded (application/x-www-form-urlencoded)"
        )
    form = await request.form()
    values = {name: form.getlist(name) for name in form}
    for name, items in values.items():
        if len(items) > 1:
            raise OAuthError("invalid_request", f"parameter {name!r} is repeated")
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required (client_credentials)")
    if grant_type != "client_credentials":
        raise OAuthError(
            "unsupported_grant_type", f"grant_type {grant_type!r} is not supported; use client_credentials"
        )
    if form.get("client_assertion_type") != JWT_BEARER:
        raise OAuthError("invalid_request", f"client_assertion_type must be {JWT_BEARER}")
    assertion = form.get("client_assertion")
    if not isinstance(assertion, str) or not assertion:
        raise OAuthError("invalid_request", "client_assertion is required (a JWT signed with the client's key)")
    client_id, client = await _verify_assertion(state, assertion, token_url(request))
    if form.get("client_id") not in (None, client_id):
        raise _invalid("client_id does not match the assertion's iss")
    scope = form.get("scope")
    if not isinstance(scope, str) or not scope.strip():
        raise OAuthError("invalid_scope", "scope is required, e.g. system/*.read")
    try:
        granted = grant_scopes(scope.split(), client.get("scope") or [], state.resource_types())
    except ScopeError as exc:
        raise OAuthError("invalid_scope", str(exc)) from None
    lifetime = state.config.access_token_lifetime
    credentials = (client.get("auth") or {}).get("client_credentials") or {}
    registered_lifetime = credentials.get("access_token_expiration")
    if isinstance(registered_lifetime, int) and registered_lifetime > 0:
        lifetime = min(lifetime, registered_lifetime)
    if state.faults.token_lifetime is not None:
        lifetime = state.faults.token_lifetime
    now = time.time()
    claims = {
        "iss": root_url(request),
        "sub": client_id,
        "aud": fhir_base(request),
        "iat": int(now),
        "exp": int(now) + lifetime,
        "jti": uuid.uuid4().hex,
        "scope": " ".join(granted),
        "client_id": client_id,
        # Sub-second issue time: invalidate_tokens() must refuse tokens from the same second.
        "iat_ms": int(now * 1000),
    }
    token = jwt.encode(claims, state.signing_key, algorithm=TOKEN_ALGORITHM, headers={"kid": state.signing_kid})
    with state.lock:
        state.tokens_issued += 1
    return JSONResponse(
        {"access_token": token, "token_type": "bearer", "expires_in": lifetime, "scope": " ".join(granted)},
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


# -- checking bearer tokens ------------------------------------------------------------------------
@dataclass(frozen=True)
class AccessGrant:
    """What a verified access token allows."""

    client_id: str
    scopes: tuple[str, ...]

    def allows(self, resource_type: str, interaction: str = "read") -> bool:
        return allows(self.scopes, resource_type, interaction)


def _unauthorized(description: str) -> FhirHTTPError:
    return FhirHTTPError(401, "login", description, {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def verify_bearer(request: Request) -> AccessGrant:
    """The grant of the request's bearer token; 401 OperationOutcome when missing, invalid or expired."""
    state = get_state(request)
    header = request.headers.get("authorization", "")
    if header[:7].lower() != "bearer " or not header[7:].strip():
        raise _unauthorized("an access token is required: Authorization: Bearer <token> from /auth/token")
    try:
        claims = jwt.decode(
            header[7:].strip(),
            key=state.signing_key.public_key(),
            algorithms=[TOKEN_ALGORITHM],
            audience=fhir_base(request),
            options={"require": ["exp", "sub", "scope"]},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("the access token has expired: get a new one") from None
    except jwt.PyJWTError:
        raise _unauthorized("the access token is not valid for this server") from None
    if claims.get("iat_ms", 0) / 1000.0 < state.faults.tokens_not_before:
        raise _unauthorized("the access token was revoked: get a new one")
    return AccessGrant(client_id=str(claims["sub"]), scopes=tuple(str(claims["scope"]).split()))


def require_token(resource_type: str | None = None, interaction: str = "read") -> Any:
    """A FastAPI dependency: a valid bearer token whose scopes allow ``interaction`` on the resource type
    (taken from the ``resource_type`` path parameter when not given). 401 / 403 OperationOutcome otherwise."""

    def dependency(request: Request) -> AccessGrant:
        grant = verify_bearer(request)
        wanted = resource_type or request.path_params.get("resource_type")
        if resource_type is None and wanted and wanted not in get_state(request).resource_types():
            raise FhirHTTPError(404, "not-supported", f"resource type {wanted!r} is not served by this server")
        if wanted and not grant.allows(str(wanted), interaction):
            raise FhirHTTPError(
                403,
                "forbidden",
                f"the access token's scopes do not allow {interaction} on {wanted}; request a scope such as "
                f"system/{wanted}.read",
            )
        return grant

    return dependency
