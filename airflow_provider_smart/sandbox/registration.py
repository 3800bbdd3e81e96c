"""Aidbox-style client registration behind the admin credential (HTTP Basic).

``PUT /Client/{id}`` with ``type``, ``active``, ``auth.client_credentials`` (``client_assertion_types``,
``access_token_expiration``, ``token_format``), ``scope`` (list or space-separated), ``jwks_uri``
(loopback only; fetched and cached by the token endpoint) or inline ``jwks``, ``grant_types``;
``PUT /AccessPolicy/{id}`` with ``link: [{"resourceType": "Client", "id": ...}]``; GET of both.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any
from urllib.parse import urlsplit

import jwt
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from airflow_provider_smart.sandbox.context import get_state
from airflow_provider_smart.sandbox.outcomes import FhirHTTPError
from airflow_provider_smart.sandbox.state import SandboxState

router = APIRouter()


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


def check_jwks(jwks: Any, where: str) -> None:
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
        check_jwks(body["jwks"], "jwks")
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
