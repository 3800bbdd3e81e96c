"""Admin endpoints under ``/_sandbox`` (admin credential): fault switches and writes to the store.

* ``GET /_sandbox/faults``: the active rules, request counts per path, and which requests were authorized.
* ``PUT /_sandbox/faults``: apply ``{"reset", "rules", "token_lifetime", "invalidate_tokens"}``
  (see :meth:`~airflow_provider_smart.sandbox.faults.Faults.apply_json`).
* ``GET /_sandbox/clock`` / ``PUT /_sandbox/clock``: the sandbox's "now"; apply ``{"freeze", "advance",
  "reset"}`` (see :class:`~airflow_provider_smart.sandbox.clock.SandboxClock`).
* ``PUT /_sandbox/fhir/{type}/{id}``: add or update a resource (bumps versionId and lastUpdated).
* ``DELETE /_sandbox/fhir/{type}/{id}``: delete a resource (kept as a deletion for incremental exports).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from airflow_provider_smart.sandbox.auth import get_state, require_admin
from airflow_provider_smart.sandbox.outcomes import FHIR_JSON, FhirHTTPError

router = APIRouter(prefix="/_sandbox", dependencies=[Depends(require_admin)])


@router.get("/faults")
def get_faults(request: Request) -> JSONResponse:
    return JSONResponse(get_state(request).faults.to_json())


@router.put("/faults")
async def put_faults(request: Request) -> JSONResponse:
    state = get_state(request)
    try:
        body = await request.json()
    except ValueError:
        raise FhirHTTPError(400, "invalid", "the body must be JSON") from None
    if not isinstance(body, dict):
        raise FhirHTTPError(400, "invalid", "the body must be a JSON object")
    try:
        state.faults.apply_json(body)
    except (TypeError, ValueError) as exc:
        raise FhirHTTPError(400, "invalid", f"bad fault settings: {exc}") from None
    return JSONResponse(state.faults.to_json())


@router.get("/clock")
def get_clock(request: Request) -> JSONResponse:
    return JSONResponse(get_state(request).clock.to_json())


@router.put("/clock")
async def put_clock(request: Request) -> JSONResponse:
    clock = get_state(request).clock
    try:
        clock.apply_json(await request.json())
    except (TypeError, ValueError) as exc:
        raise FhirHTTPError(400, "invalid", f"bad clock settings: {exc}") from None
    return JSONResponse(clock.to_json())


@router.put("/fhir/{resource_type}/{resource_id}")
async def put_resource(resource_type: str, resource_id: str, request: Request) -> JSONResponse:
    state = get_state(request)
    try:
        body = await request.json()
    except ValueError:
        raise FhirHTTPError(400, "invalid", "the body must be a FHIR resource in JSON") from None
    if not isinstance(body, dict) or body.get("resourceType") != resource_type:
        raise FhirHTTPError(400, "invalid", f"the body must be a {resource_type} resource")
    if body.get("id") not in (None, resource_id):
        raise FhirHTTPError(400, "invalid", "the body's id differs from the URL's id")
    existed = state.store.get(resource_type, resource_id) is not None
    stored = state.store.put({**body, "id": resource_id})
    return JSONResponse(stored, status_code=200 if existed else 201, media_type=FHIR_JSON)


@router.delete("/fhir/{resource_type}/{resource_id}")
def delete_resource(resource_type: str, resource_id: str, request: Request) -> Response:
    if not get_state(request).store.delete(resource_type, resource_id):
        raise FhirHTTPError(404, "not-found", f"no {resource_type}/{resource_id}")
    return Response(status_code=204)
