"""The sandbox's authorization server, assembled from its parts (one job per module):

* :mod:`~airflow_provider_smart.sandbox.registration`: ``PUT/GET /Client/{id}`` and ``/AccessPolicy/{id}``
  (admin credential).
* :mod:`~airflow_provider_smart.sandbox.discovery`: ``.well-known/smart-configuration``, the server's
  JWKS, ``/fhir/metadata``.
* :mod:`~airflow_provider_smart.sandbox.token_endpoint`: ``POST /auth/token``.
* :mod:`~airflow_provider_smart.sandbox.bearer`: :func:`require_token` / :func:`verify_bearer` for FHIR routes.

The names other sandbox modules use are importable from here.
"""

from __future__ import annotations

from fastapi import APIRouter

from airflow_provider_smart.sandbox import discovery, registration, token_endpoint
from airflow_provider_smart.sandbox.bearer import AccessGrant, require_token, verify_bearer
from airflow_provider_smart.sandbox.context import fhir_base, get_state, root_url, token_url
from airflow_provider_smart.sandbox.registration import require_admin, store_access_policy, store_client
from airflow_provider_smart.sandbox.token_endpoint import ALLOWED_ALGORITHMS, JWT_BEARER, TOKEN_ALGORITHM

__all__ = [
    "ALLOWED_ALGORITHMS",
    "JWT_BEARER",
    "TOKEN_ALGORITHM",
    "AccessGrant",
    "fhir_base",
    "get_state",
    "require_admin",
    "require_token",
    "root_url",
    "router",
    "store_access_policy",
    "store_client",
    "token_url",
    "verify_bearer",
]

router = APIRouter()
router.include_router(registration.router)
router.include_router(discovery.router)
router.include_router(token_endpoint.router)
