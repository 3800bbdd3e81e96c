"""Discovery: ``.well-known/smart-configuration``, the server's token-signing JWKS, and ``/fhir/metadata``."""

from __future__ import annotations

import json
from typing import Any

import jwt
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from airflow_provider_smart import __version__
from airflow_provider_smart.sandbox.context import fhir_base, get_state, root_url, token_url
from airflow_provider_smart.sandbox.outcomes import FHIR_JSON
from airflow_provider_smart.sandbox.token_endpoint import ALLOWED_ALGORITHMS, TOKEN_ALGORITHM

router = APIRouter()


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
    state = get_state(request)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(state.signing_key.public_key()))
    public.update({"kid": state.signing_kid, "alg": TOKEN_ALGORITHM, "use": "sig"})
    return JSONResponse({"keys": [public]})


_EXPORT_DEFINITIONS = {
    "system": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
    "patient": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
    "group": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
}


def _played(request: Request) -> tuple[str, tuple[str, ...]]:
    """The software name reported and the export levels declared (a played vendor's, when it publishes them)."""
    from airflow_provider_smart.vendors import get_profile

    vendor = get_state(request).config.vendor
    if not vendor:
        return "airflow-provider-smart sandbox", tuple(_EXPORT_DEFINITIONS)
    profile = get_profile(vendor)
    levels = profile.value("export_levels") or tuple(_EXPORT_DEFINITIONS)
    return f"airflow-provider-smart sandbox playing {profile.title}", tuple(levels)


@router.get("/fhir/metadata")
def get_metadata(request: Request) -> JSONResponse:
    state = get_state(request)
    software, levels = _played(request)
    operations = {
        "system": [{"name": "export", "definition": _EXPORT_DEFINITIONS["system"]}] if "system" in levels else [],
        "Patient": [{"name": "export", "definition": _EXPORT_DEFINITIONS["patient"]}] if "patient" in levels else [],
        "Group": [{"name": "export", "definition": _EXPORT_DEFINITIONS["group"]}] if "group" in levels else [],
    }
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
        "software": {"name": software, "version": __version__},
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
                        **({"operation": operations[resource_type]} if operations.get(resource_type) else {}),
                    }
                    for resource_type in state.resource_types()
                ],
                **({"operation": operations["system"]} if operations["system"] else {}),
            }
        ],
    }
    return JSONResponse(statement, media_type=FHIR_JSON)
