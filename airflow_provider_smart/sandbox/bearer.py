"""Checking bearer tokens on FHIR routes: :func:`require_token` (a FastAPI dependency) and :func:`verify_bearer`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt
from fastapi import Request

from airflow_provider_smart.sandbox.context import fhir_base, get_state
from airflow_provider_smart.sandbox.outcomes import FhirHTTPError
from airflow_provider_smart.sandbox.scopes import allows
from airflow_provider_smart.sandbox.token_endpoint import TOKEN_ALGORITHM


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
            # Expiry is judged on the sandbox's clock (state.clock), which tests may move; pyjwt reads the
            # real one.
            options={"require": ["exp", "sub", "scope"], "verify_exp": False, "verify_iat": False},
        )
    except jwt.PyJWTError:
        raise _unauthorized("the access token is not valid for this server") from None
    if not isinstance(claims["exp"], int | float) or claims["exp"] <= state.clock.time():
        raise _unauthorized("the access token has expired: get a new one")
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
