"""The sandbox's FastAPI application: authorization, admin switches, Bulk Data (when present), FHIR REST.

Routers are mounted in this order, because the first matching route wins:

1. ``sandbox/auth.py``: ``/Client``, ``/AccessPolicy``, ``/auth/token``, discovery and ``/fhir/metadata``.
2. ``sandbox/admin.py``: ``/_sandbox/...`` (fault switches, resource writes; admin credential).
3. ``sandbox/bulk.py``'s ``router`` under the prefix ``/fhir`` (so ``/fhir/$export``,
   ``/fhir/Patient/$export`` and ``/fhir/Group/{id}/$export`` are not taken for reads). The module is
   optional: the app works without it.
4. ``sandbox/fhir_rest.py``: read and search.

:class:`~airflow_provider_smart.sandbox.faults.FaultMiddleware` wraps everything.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow_provider_smart.sandbox import admin, auth, binaries, fhir_rest
from airflow_provider_smart.sandbox.faults import DroppedConnection, FaultMiddleware
from airflow_provider_smart.sandbox.outcomes import FHIR_JSON, FhirHTTPError, operation_outcome
from airflow_provider_smart.sandbox.state import SandboxState

BULK_MODULE = "airflow_provider_smart.sandbox.bulk"


def _bulk_router() -> Any:
    try:
        module = importlib.import_module(BULK_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != BULK_MODULE:
            raise  # the bulk module exists but something it imports is missing: that is a real error
        return None
    return module.router


class _HideDroppedConnections(logging.Filter):
    """Drops made on purpose are not server errors; keep them out of the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DroppedConnection))


def create_app(state: SandboxState) -> FastAPI:
    app = FastAPI(title="SMART/FHIR sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sandbox = state

    @app.exception_handler(FhirHTTPError)
    async def fhir_error(request: Request, exc: FhirHTTPError) -> JSONResponse:
        return JSONResponse(exc.outcome, status_code=exc.status, headers=exc.headers, media_type=FHIR_JSON)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            operation_outcome("invalid", f"invalid request: {exc.errors()}"), status_code=400, media_type=FHIR_JSON
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not-found" if exc.status_code == 404 else "not-supported" if exc.status_code == 405 else "exception"
        return JSONResponse(
            operation_outcome(code, f"{exc.detail}: {request.method} {request.url.path}"),
            status_code=exc.status_code,
            media_type=FHIR_JSON,
        )

    app.include_router(auth.router)
    app.include_router(admin.router)
    app.include_router(binaries.admin_router)
    app.include_router(binaries.router)
    bulk_router = _bulk_router()
    if bulk_router is not None:
        app.include_router(bulk_router, prefix="/fhir")
    app.include_router(fhir_rest.router)
    app.add_middleware(FaultMiddleware, faults=state.faults)
    for name in ("uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _HideDroppedConnections) for f in logger.filters):
            logger.addFilter(_HideDroppedConnections())
    return app
