"""Binary content behind DocumentReference attachments: same-origin ``Binary`` reads and presigned files.

* ``GET /fhir/Binary/{id}`` (token with read on Binary): the bytes in the Binary's own content type when
  the ``Accept`` header allows it (or ``*/*``), else the Binary resource in JSON with base64 ``data``
  (what a server does when a client asks only for FHIR). A Binary stored ``wrapped`` always answers JSON.
* Generated documents ``doc-<patient>-<k>`` link ``Binary/note-<patient>-<k>``, whose text is made from
  the id (no scan, no storage). Binaries added with ``PUT /_sandbox/binary/{id}`` are kept in memory.
* ``POST /_sandbox/binary/{id}/presign?ttl=600`` returns a URL on the second (file) origin,
  ``/attachment-files/{id}?expires=&signature=``, which refuses an ``Authorization`` header as S3 does.
"""

from __future__ import annotations

import base64
import re

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from airflow_provider_smart.sandbox.auth import get_state, require_admin, require_token
from airflow_provider_smart.sandbox.binary_store import BinaryContent
from airflow_provider_smart.sandbox.outcomes import FHIR_JSON, FhirHTTPError

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def binary_resource(binary_id: str, content: BinaryContent) -> dict[str, object]:
    return {
        "resourceType": "Binary",
        "id": binary_id,
        "contentType": content.content_type,
        "data": base64.b64encode(content.data).decode("ascii"),
    }


def _accepts_raw(accept: str, content_type: str) -> bool:
    wanted = [part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()]
    major = content_type.split("/")[0]
    return not wanted or any(w in (content_type, "*/*", f"{major}/*") for w in wanted)


router = APIRouter()


@router.get("/fhir/Binary/{binary_id}", dependencies=[Depends(require_token(resource_type="Binary"))])
def read_binary(binary_id: str, request: Request) -> Response:
    content = get_state(request).binaries.get(binary_id) if _ID.match(binary_id) else None
    if content is None:
        raise FhirHTTPError(404, "not-found", f"Binary/{binary_id} is not known")
    if content.wrapped or not _accepts_raw(request.headers.get("accept", ""), content.content_type):
        return JSONResponse(binary_resource(binary_id, content), media_type=FHIR_JSON)
    return Response(content.data, media_type=content.content_type)


admin_router = APIRouter(prefix="/_sandbox", dependencies=[Depends(require_admin)])


@admin_router.put("/binary/{binary_id}")
async def put_binary(binary_id: str, request: Request) -> JSONResponse:
    if not _ID.match(binary_id):
        raise FhirHTTPError(400, "invalid", "a Binary id is 1-64 letters, digits, '-' or '.'")
    content_type = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
    wrapped = request.query_params.get("wrapped", "false").lower() == "true"
    data = await request.body()
    get_state(request).binaries.put(binary_id, BinaryContent(content_type, data, wrapped))
    return JSONResponse({"id": binary_id, "contentType": content_type, "size": len(data), "wrapped": wrapped})


@admin_router.post("/binary/{binary_id}/presign")
def presign_binary(binary_id: str, request: Request, ttl: int = 600) -> JSONResponse:
    state = get_state(request)
    files_base = state.bulk.files_base_url
    if files_base is None:
        raise FhirHTTPError(409, "not-supported", "the file origin is not running")
    if state.binaries.get(binary_id) is None:
        raise FhirHTTPError(404, "not-found", f"Binary/{binary_id} is not known")
    return JSONResponse({"url": state.binaries.presign(files_base, binary_id, ttl)})
