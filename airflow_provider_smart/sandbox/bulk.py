"""Bulk Data Access ($export) of the sandbox: kick-off, status, manifest, files, delete.

Endpoints (FHIR Bulk Data Access 2.0.0, with the STU3 3.0.0 additions):

* ``GET|POST [base]/$export``, ``[base]/Patient/$export``, ``[base]/Group/{id}/$export``: kick-off;
  202 with ``Content-Location`` = the status URL.
* ``GET [base]/$bulk-status/{job}``: 202 with ``X-Progress`` and ``Retry-After`` while in progress,
  200 with the manifest and ``Expires`` when complete, 500 OperationOutcome when the export failed.
* ``GET [base]/$bulk-status/{job}/manifest/{page}``: later manifest pages (``allowPartialManifests``).
* ``DELETE [base]/$bulk-status/{job}``: 202; the status URL answers 404 afterwards.
* ``GET [base]/$bulk-file/{job}/{name}.ndjson``: a file on the FHIR origin (bearer token needed).
  Files on the presigned origin are served by :mod:`airflow_provider_smart.sandbox.file_origin`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from airflow_provider_smart.sandbox.auth import AccessGrant, fhir_base, get_state, verify_bearer
from airflow_provider_smart.sandbox.bulk_files import ExportFile
from airflow_provider_smart.sandbox.bulk_jobs import ExportJob, JobGone, PolledTooSoon, build_manifest
from airflow_provider_smart.sandbox.bulk_params import (
    ExportRequest,
    KickoffError,
    issue,
    operation_outcome,
    parameters_from_resource,
    parse_kickoff,
)
from airflow_provider_smart.sandbox.bulk_runtime import BulkRuntime
from airflow_provider_smart.sandbox.bulk_serve import endless_response, file_response, without_ids_response
from airflow_provider_smart.sandbox.bulk_snapshot import StoreSnapshot
from airflow_provider_smart.sandbox.outcomes import FHIR_JSON
from airflow_provider_smart.sandbox.state import SandboxState
from airflow_provider_smart.transport.retry import format_http_date

router = APIRouter()
#: The caller's verified bearer token (401 OperationOutcome without one).
Grant = Annotated[AccessGrant, Depends(verify_bearer)]

_ACCEPTABLE = ("application/fhir+json", "application/json", "*/*", "application/*")


def get_bulk(state: SandboxState) -> BulkRuntime:
    runtime: BulkRuntime = state.bulk
    return runtime


def _outcome_response(status: int, issues: list[dict[str, Any]], headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(operation_outcome(issues), status_code=status, media_type=FHIR_JSON, headers=headers)


def _retry_after(runtime: BulkRuntime) -> str:
    seconds = runtime.settings.retry_after
    if runtime.settings.retry_after_http_date:
        return format_http_date(runtime.clock.now() + timedelta(seconds=seconds))
    return str(seconds)


def _prefer(request: Request) -> set[str]:
    tokens: set[str] = set()
    for header in request.headers.getlist("prefer"):
        tokens.update(part.strip().replace(" ", "").lower() for part in header.split(",") if part.strip())
    return tokens


def _status_url(request: Request, job_id: str) -> str:
    return f"{fhir_base(request)}/$bulk-status/{job_id}"


# -- kick-off ----------------------------------------------------------------------------------------
async def _kickoff(request: Request, grant: AccessGrant, level: str, group_id: str | None = None) -> Response:
    state = get_state(request)
    runtime = get_bulk(state)
    prefer = _prefer(request)
    if "respond-async" not in prefer:
        return _outcome_response(
            400, [issue("error", "invalid", "a Bulk Data kick-off needs the header Prefer: respond-async")]
        )
    accept = request.headers.get("accept")
    if accept and not any(kind in accept for kind in _ACCEPTABLE):
        return _outcome_response(
            406, [issue("error", "not-supported", f"Accept {accept!r} is not supported; use application/fhir+json")]
        )
    if runtime.faults.one_export_per_client and runtime.jobs.in_progress(grant.client_id):
        return _outcome_response(
            429,
            [issue("error", "throttled", "another export of this client is in progress; wait or DELETE it")],
            headers={"Retry-After": _retry_after(runtime)},
        )
    lenient = "handling=lenient" in prefer
    pairs: list[tuple[str, str]] = list(request.query_params.multi_items())
    try:
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                raise KickoffError(
                    400, [issue("error", "invalid", "the POST body is not JSON; send a FHIR Parameters resource")]
                ) from None
            pairs += parameters_from_resource(body)
        store = state.store
        vendor_warnings: list[dict[str, Any]] = []
        if state.config.vendor:
            from airflow_provider_smart.sandbox.vendor import apply_vendor_rules
            from airflow_provider_smart.vendors import get_profile

            members = store.group_member_ids(group_id) if group_id else None
            pairs, vendor_warnings = apply_vendor_rules(
                get_profile(state.config.vendor),
                level,
                pairs,
                scopes=grant.scopes,
                lenient=lenient,
                group_size=None if members is None else len(members),
                exports_in_progress=len(runtime.jobs.in_progress(grant.client_id)),
            )
        supported = state.resource_types()
        compartment = set(store.patient_compartment_types())
        export_request = parse_kickoff(
            pairs,
            level=level,
            request_url=str(request.url) if request.method == "GET" else str(request.url.replace(query="")),
            method=request.method,
            supported_types=supported,
            compartment_types=compartment,
            lenient=lenient,
            group_id=group_id,
        )
        export_request.warnings[:0] = vendor_warnings
        types = _granted_types(export_request.types, export_request, supported, compartment, grant, level)
        if export_request.include_associated and not grant.allows("Provenance", "read"):
            message = "includeAssociatedData needs a scope that reads Provenance, e.g. system/Provenance.read"
            if not export_request.lenient:
                raise KickoffError(403, [issue("error", "forbidden", message, "includeAssociatedData")])
            export_request.warnings.append(issue("warning", "forbidden", f"ignored: {message}"))
            export_request.include_associated = []
        export_request.implicit_provenance = (
            level != "system"
            and export_request.types is None
            and not export_request.include_associated
            and grant.allows("Provenance", "read")
        )
        snapshot = StoreSnapshot(store)
        snapshot.limit_since(export_request.since)
        job = await run_in_threadpool(
            runtime.jobs.start,
            export_request,
            snapshot,
            types=types,
            compartment_types=compartment,
            client_id=grant.client_id,
            error_file_fault=runtime.faults.error_file_severity if runtime.faults.error_file else None,
        )
    except KickoffError as exc:
        return _outcome_response(exc.status, exc.issues)
    if runtime.faults.fail_exports:
        runtime.jobs.fail(
            job.id,
            operation_outcome([issue("fatal", "exception", "the export failed in the sandbox (fault fail_exports)")]),
        )
    started = issue("information", "informational", f"export {job.id} started; poll the Content-Location URL")
    return JSONResponse(
        operation_outcome([started, *export_request.warnings]),
        status_code=202,
        media_type=FHIR_JSON,
        headers={"Content-Location": _status_url(request, job.id)},
    )


def _granted_types(
    asked: list[str] | None,
    export_request: ExportRequest,
    supported: list[str],
    compartment: set[str],
    grant: AccessGrant,
    level: str,
) -> list[str]:
    """The types to export: asked for (or all of the level) and allowed by the token's scopes.

    An explicit ``_type`` the token may not read is refused with 403 (or, lenient, dropped with a
    warning); without ``_type`` the export silently covers only the readable types, as the spec asks
    ("all supported resources within the scope of the client authorization").
    """
    if asked is None:
        candidates = [t for t in supported if level == "system" or t in compartment]
        types = [t for t in candidates if grant.allows(t, "read")]
        if not types:
            raise KickoffError(403, [issue("error", "forbidden", "the access token's scopes allow no exportable type")])
        return types
    refused = [t for t in asked if not grant.allows(t, "read")]
    if refused and not export_request.lenient:
        raise KickoffError(
            403,
            [
                issue(
                    "error",
                    "forbidden",
                    f"the access token's scopes do not allow reading {', '.join(refused)}; "
                    f"request e.g. system/{refused[0]}.read or leave it out of _type",
                    "_type",
                )
            ],
        )
    for name in refused:
        export_request.warnings.append(
            issue("warning", "forbidden", f"ignored: _type {name} is not readable with this token's scopes", "_type")
        )
    types = [t for t in asked if t not in refused]
    if not types:
        raise KickoffError(403, [issue("error", "forbidden", "the access token's scopes allow none of the _type")])
    return types


@router.api_route("/$export", methods=["GET", "POST"])
async def export_system(request: Request, grant: Grant) -> Response:
    return await _kickoff(request, grant, "system")


@router.api_route("/Patient/$export", methods=["GET", "POST"])
async def export_patients(request: Request, grant: Grant) -> Response:
    return await _kickoff(request, grant, "patient")


@router.api_route("/Group/{group_id}/$export", methods=["GET", "POST"])
async def export_group(group_id: str, request: Request, grant: Grant) -> Response:
    return await _kickoff(request, grant, "group", group_id)


# -- status, manifest, delete ---------------------------------------------------------------------------
def _own_job(runtime: BulkRuntime, job_id: str, grant: AccessGrant) -> ExportJob:
    job = runtime.jobs.get(job_id)
    if job.client_id != grant.client_id:
        # Another client's export is not even acknowledged.
        raise JobGone(job_id)
    return job


def _not_found(job_id: str) -> Response:
    return _outcome_response(404, [issue("error", "not-found", f"no export {job_id} (never started, or deleted)")])


def _file_url(request: Request, runtime: BulkRuntime, job: ExportJob, entry: ExportFile) -> str:
    if runtime.settings.presigned_files and runtime.files_base_url:
        return runtime.signer.sign(
            runtime.files_base_url, job.id, entry.name, job.generation, runtime.settings.presign_ttl
        )
    return f"{fhir_base(request)}/$bulk-file/{job.id}/{entry.name}.ndjson?generation={job.generation}"


def _manifest(request: Request, runtime: BulkRuntime, job: ExportJob, page: int) -> dict[str, Any]:
    presigned = bool(runtime.settings.presigned_files and runtime.files_base_url)
    return runtime.faults.rewrite_manifest(
        build_manifest(
            job,
            url_for=lambda entry: _file_url(request, runtime, job, entry),
            requires_access_token=not presigned,
            page=page,
            page_size=runtime.settings.manifest_page_size,
            page_url=lambda n: f"{_status_url(request, job.id)}/manifest/{n}",
        )
    )


def _manifest_response(request: Request, runtime: BulkRuntime, job: ExportJob, page: int) -> Response:
    manifest = _manifest(request, runtime, job, page)
    expires = format_http_date(runtime.jobs.expires_at(job))
    return JSONResponse(manifest, status_code=200, headers={"Expires": expires})


@router.get("/$bulk-status/{job_id}")
def export_status(job_id: str, request: Request, grant: Grant) -> Response:
    runtime = get_bulk(get_state(request))
    try:
        _own_job(runtime, job_id, grant)
        min_interval = runtime.settings.retry_after if runtime.faults.enforce_retry_after else None
        job = runtime.jobs.poll(job_id, min_interval=min_interval)
        if job.failed is not None:
            return JSONResponse(job.failed, status_code=500, media_type=FHIR_JSON)
        if job.completed_at is None:
            progress = runtime.faults.progress_text
            headers = {
                "X-Progress": runtime.jobs.progress(job) if progress is None else progress,
                "Retry-After": _retry_after(runtime),
            }
            if _partial_manifest_ready(runtime, job):
                # STU3: with allowPartialManifests a 202 may carry the files ready so far. The first page
                # is final once written; the completed manifest only adds its ``link``.
                manifest = _manifest(request, runtime, job, 1)
                manifest.pop("link", None)
                return JSONResponse(manifest, status_code=202, headers=headers)
            return Response(status_code=202, headers=headers)
        return _manifest_response(request, runtime, job, 1)
    except PolledTooSoon as exc:
        return _outcome_response(
            429,
            [issue("error", "throttled", f"polling too frequently: {exc}; honour Retry-After")],
            headers={"Retry-After": _retry_after(runtime)},
        )
    except JobGone:
        return _not_found(job_id)


def _partial_manifest_ready(runtime: BulkRuntime, job: ExportJob) -> bool:
    return bool(
        runtime.settings.partial_manifests_while_running
        and job.request.allow_partial_manifests
        and job.written.is_set()
        and job.failed is None
    )


@router.get("/$bulk-status/{job_id}/manifest/{page}")
def export_manifest_page(job_id: str, page: int, request: Request, grant: Grant) -> Response:
    runtime = get_bulk(get_state(request))
    try:
        job = _own_job(runtime, job_id, grant)
        if job.completed_at is None:
            return _outcome_response(
                409, [issue("error", "business-rule", "the export is not complete; poll the status URL first")]
            )
        return _manifest_response(request, runtime, job, page)
    except JobGone:
        return _not_found(f"{job_id} manifest page {page}")


@router.delete("/$bulk-status/{job_id}")
def export_delete(job_id: str, request: Request, grant: Grant) -> Response:
    runtime = get_bulk(get_state(request))
    try:
        _own_job(runtime, job_id, grant)
        runtime.jobs.delete(job_id)
    except JobGone:
        return _not_found(job_id)
    return _outcome_response(202, [issue("information", "informational", f"export {job_id} deleted")])


# -- files on the FHIR origin ----------------------------------------------------------------------------
def serve_file(
    runtime: BulkRuntime, state: SandboxState, job_id: str, name: str, generation: str | None, request: Request
) -> Response:
    """The checks both origins share (job, file, expiry, faults), then the file."""
    try:
        job = runtime.jobs.get(job_id)
    except JobGone:
        return _outcome_response(404, [issue("error", "not-found", f"no export {job_id}")])
    entry = job.file(name)
    if entry is None:
        return _outcome_response(404, [issue("error", "not-found", f"export {job_id} has no file {name}")])
    try:
        gen = int(generation or "")
    except ValueError:
        return _outcome_response(400, [issue("error", "invalid", "the file URL lacks its generation parameter")])
    gone = issue("error", "expired", "this file URL has expired; fetch the manifest again for fresh URLs")
    if gen in job.expired_generations or gen > job.generation:
        return _outcome_response(410, [gone])
    if runtime.clock.now() > runtime.jobs.expires_at(job):
        return _outcome_response(410, [issue("error", "expired", "the export's files have expired")])
    if runtime.faults.take_expire_file():
        runtime.jobs.expire_generation(job, gen)
        return _outcome_response(410, [gone])
    faults = runtime.faults
    if entry.kind == "output" and faults.endless_files is not None:
        response = endless_response(entry.path, faults.endless_files)
    elif entry.kind == "output" and faults.strip_ids:
        response = without_ids_response(entry.path, faults.strip_ids)
    else:
        response = file_response(
            entry.path, accept_encoding=request.headers.get("accept-encoding"), gzip_fault=faults.file_gzip
        )
    if runtime.faults.count_download():
        state.faults.invalidate_tokens()
    return response


@router.get("/$bulk-file/{job_id}/{file_name}")
def export_file(
    job_id: str,
    file_name: str,
    request: Request,
    grant: Grant,
) -> Response:
    state = get_state(request)
    runtime = get_bulk(state)
    try:
        _own_job(runtime, job_id, grant)
    except JobGone:
        return _not_found(job_id)
    name = file_name.removesuffix(".ndjson")
    return serve_file(runtime, state, job_id, name, request.query_params.get("generation"), request)
