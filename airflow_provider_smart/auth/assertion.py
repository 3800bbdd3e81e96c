"""The signed JWT client assertion of SMART Backend Services (client-confidential-asymmetric).

SMART App Launch 2.2: header ``alg``, ``kid``, ``typ=JWT``; claims ``iss`` = ``sub`` = client_id,
``aud`` = the token endpoint URL, ``exp`` no more than five minutes in the future, ``jti`` unique.
"""

from __future__ import annotations

import secrets
import time

import jwt

from airflow_provider_smart.auth.keys import SigningKey

#: ``client_assertion_type`` of the token request (RFC 7523).
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

#: The spec caps an assertion's lifetime at five minutes.
MAX_ASSERTION_LIFETIME = 300.0
#: A few seconds under the cap, so clock skew on the server side never makes it look too long.
DEFAULT_ASSERTION_LIFETIME = MAX_ASSERTION_LIFETIME - 10.0


def new_jti() -> str:
    """A fresh, unguessable assertion id (128 random bits)."""
    return secrets.token_urlsafe(24)


def build_client_assertion(
    client_id: str,
    token_url: str,
    key: SigningKey,
    *,
    lifetime: float = DEFAULT_ASSERTION_LIFETIME,
    now: float | None = None,
    include_iat: bool = True,
    jti: str | None = None,
) -> str:
    """Sign a client assertion for one token request. Each call gets its own ``jti``.

    :param lifetime: seconds until ``exp``; more than 300 is refused because servers reject it.
    :param now: the current time (seconds since the epoch), for tests.
    """
    if not client_id:
        raise ValueError("client_id is empty: set the connection's login to the registered client_id")
    if not token_url:
        raise ValueError("token URL is empty: set the token_url extra or fix discovery")
    if not 0 < lifetime <= MAX_ASSERTION_LIFETIME:
        raise ValueError(f"assertion lifetime must be within (0, {MAX_ASSERTION_LIFETIME:.0f}] seconds, got {lifetime}")
    issued = int(now if now is not None else time.time())
    claims: dict[str, str | int] = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": issued + int(lifetime),
        "jti": jti or new_jti(),
    }
    if include_iat:
        claims["iat"] = issued
    headers = {"alg": key.algorithm, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers=headers)
