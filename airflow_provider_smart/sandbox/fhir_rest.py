"""FHIR REST read and search of the sandbox (``/fhir/{type}/{id}``, ``/fhir/{type}``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from airflow_provider_smart.sandbox.auth import get_state, require_token
from airflow_provider_smart.sandbox.outcomes import FHIR_JSON, FhirHTTPError

router = APIRouter()


@router.get("/fhir/{resource_type}/{resource_id}", dependencies=[Depends(require_token(interaction="read"))])
def read(resource_type: str, resource_id: str, request: Request) -> JSONResponse:
    resource = get_state(request).store.get(resource_type, resource_id)
    if resource is None:
        raise FhirHTTPError(404, "not-found", f"{resource_type}/{resource_id} is not known")
    version = (resource.get("meta") or {}).get("versionId")
    headers = {"ETag": f'W/"{version}"'} if version else {}
    return JSONResponse(resource, media_type=FHIR_JSON, headers=headers)
