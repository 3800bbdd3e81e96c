"""``POST /auth/token``: SMART Backend Services client assertions verified strictly, access tokens issued.

Checks, in order, each failing with an OAuth error whose ``error_description`` names the problem: a
form-encoded body; ``grant_type=client_credentials`` (``unsupported_grant_type``); the JWT bearer
``client_assertion_type`` and an assertion (``invalid_request``); a known, active client
(``invalid_client``, 401) allowed the grant and linked by an AccessPolicy (``unauthorized_client``); the
assertion's ``alg`` allowed, ``typ`` JWT, the key chosen by ``kid``, a valid signature, ``iss`` = ``sub``
= client id, ``aud`` = the token URL, ``exp`` present and at most 5 minutes ahead, a fresh ``jti``
(``invalid_client``, 401); the scope within the registration (``invalid_scope``). Access tokens are JWTs
signed with the server's own key.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jwt
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from airflow_provider_smart.sandbox.context import fhir_base, get_state, root_url, token_url
from airflow_provider_smart.sandbox.outcomes import FhirHTTPError, OAuthError
from airflow_provider_smart.sandbox.registration import check_jwks
from airflow_provider_smart.sandbox.scopes import ScopeError, grant_scopes
from airflow_provider_smart.sandbox.state import SandboxState

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Assertion algorithms accepted: SMART requires RS384 and ES384; the others are common and safe.
ALLOWED_ALGORITHMS = ("RS384", "ES384", "RS256", "RS512", "ES256", "ES512", "PS384")
TOKEN_ALGORITHM = "RS384"  # noqa: S105 (an algorithm name, not a secret)

router = APIRouter()


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
        check_jwks(jwks, f"the document at jwks_uri {uri}")
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
    now = state.clock.time()
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
