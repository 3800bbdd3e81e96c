"""The web app of the presigned file origin (a second uvicorn on another loopback port).

``GET /bulk-files/{job}/{name}.ndjson?generation=&expires=&signature=``. Refuses, as S3 does, a request
that carries an ``Authorization`` header besides the signed query (400), a bad signature (403) and an
expired URL (403). Every request is recorded in ``state.bulk.origins`` under the origin name ``files``
(and, by ``SandboxServer``, every request to the FHIR server under ``fhir``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from airflow_provider_smart.sandbox.bulk import get_bulk, serve_file
from airflow_provider_smart.sandbox.state import SandboxState

ORIGIN = "files"


def _s3_error(status: int, code: str, message: str) -> Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return Response(body, status_code=status, media_type="application/xml")


class OriginLogMiddleware:
    """Records every request of an origin, and whether it carried an Authorization header."""

    def __init__(self, app: Any, state: SandboxState, origin: str):
        self.app = app
        self.state = state
        self.origin = origin

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            carried = any(name == b"authorization" for name, _ in scope.get("headers") or [])
            get_bulk(self.state).origins.record(self.origin, authorization=carried)
        await self.app(scope, receive, send)


def create_file_origin_app(state: SandboxState) -> Any:
    """The ASGI app of the file origin: the routes, the sandbox's fault middleware, the origin log."""
    from airflow_provider_smart.sandbox.faults import FaultMiddleware

    app = FastAPI(title="SMART sandbox file origin", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/bulk-files/{job_id}/{file_name}")
    def presigned_file(job_id: str, file_name: str, request: Request) -> Response:
        if "authorization" in request.headers:
            return _s3_error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the signed query string or the Authorization header "
                "should be specified",
            )
        runtime = get_bulk(state)
        query = request.query_params
        name = file_name.removesuffix(".ndjson")
        problem = runtime.signer.check(
            job_id, name, query.get("generation", ""), query.get("expires", ""), query.get("signature", "")
        )
        if problem is not None:
            code = "AccessDenied" if "expired" in problem else "SignatureDoesNotMatch"
            return _s3_error(403, code, problem)
        return serve_file(runtime, state, job_id, name, query.get("generation"), request)

    @app.get("/attachment-files/{binary_id}")
    def presigned_attachment(binary_id: str, request: Request) -> Response:
        if "authorization" in request.headers:
            return _s3_error(400, "InvalidArgument", "Only one auth mechanism allowed")
        query = request.query_params
        problem = state.binaries.check(binary_id, query.get("expires", ""), query.get("signature", ""))
        if problem is not None:
            return _s3_error(403, "AccessDenied" if "expired" in problem else "SignatureDoesNotMatch", problem)
        content = state.binaries.get(binary_id)
        if content is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return Response(content.data, media_type=content.content_type)

    return OriginLogMiddleware(FaultMiddleware(app, state.faults), state, ORIGIN)
