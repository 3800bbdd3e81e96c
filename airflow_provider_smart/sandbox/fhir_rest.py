"""FHIR REST read and search of the sandbox.

* ``GET /fhir/{type}/{id}``: read (scope: read).
* ``GET /fhir/{type}`` and ``POST /fhir/{type}/_search`` (form body, merged with the query): search
  (scope: search), answered with searchset Bundles (``total``, ``link`` self/next, entries with
  ``fullUrl`` and ``search.mode`` match / include / outcome).

Paging: the ``next`` link carries an opaque ``_page_token`` holding the query, a snapshot of the store
clock taken at the first page, and the key ``(lastUpdated, id)`` of the last resource sent. Later pages
read the store *as of* the snapshot from after that key, so every resource that matched when the search
began is returned exactly once, in the version it had then, however the data changes meanwhile. Links are
absolute, relative to the FHIR base (``Observation?_page_token=...``) or absolute paths
(``/fhir/Observation?...``), per ``SandboxConfig.next_links``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from airflow_provider_smart.sandbox.auth import AccessGrant, fhir_base, get_state, require_token
from airflow_provider_smart.sandbox.outcomes import FHIR_JSON, FhirHTTPError, operation_outcome
from airflow_provider_smart.sandbox.search import (
    INCLUDE_FIELDS,
    Criteria,
    SearchError,
    decode_cursor,
    encode_cursor,
    parse_search,
    references,
)
from airflow_provider_smart.sandbox.store import Key, Resource, from_micros

router = APIRouter()
#: Without ``_total``, a filtered search is counted only when its type has at most this many resources.
TOTAL_SCAN_LIMIT = 50_000
SearchGrant = Annotated[AccessGrant, Depends(require_token(interaction="search"))]
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]+$")


def _check_type(request: Request, resource_type: str) -> None:
    if not _TYPE_NAME.match(resource_type) or resource_type not in get_state(request).resource_types():
        raise FhirHTTPError(404, "not-supported", f"resource type {resource_type!r} is not served by this server")


@router.post("/fhir/{resource_type}/_search")
async def search_post(resource_type: str, request: Request, grant: SearchGrant) -> JSONResponse:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise FhirHTTPError(
            400, "invalid", "POST _search takes a form-encoded body (application/x-www-form-urlencoded)"
        )
    form = await request.form()
    params = list(request.query_params.multi_items()) + [(k, str(v)) for k, v in form.multi_items()]
    return await run_in_threadpool(_search, request, resource_type, params, grant)


@router.get("/fhir/{resource_type}")
def search_get(resource_type: str, request: Request, grant: SearchGrant) -> JSONResponse:
    return _search(request, resource_type, list(request.query_params.multi_items()), grant)


@router.get("/fhir/{resource_type}/{resource_id}", dependencies=[Depends(require_token(interaction="read"))])
def read(resource_type: str, resource_id: str, request: Request) -> JSONResponse:
    _check_type(request, resource_type)
    resource = get_state(request).store.get(resource_type, resource_id)
    if resource is None:
        raise FhirHTTPError(404, "not-found", f"{resource_type}/{resource_id} is not known")
    meta = resource.get("meta") or {}
    headers = {}
    if meta.get("versionId"):
        headers["ETag"] = f'W/"{meta["versionId"]}"'
    if meta.get("lastUpdated"):
        headers["Last-Modified"] = str(meta["lastUpdated"])
    return JSONResponse(resource, media_type=FHIR_JSON, headers=headers)


def _link(request: Request, resource_type: str, query: str) -> str:
    style = get_state(request).config.next_links
    if style == "relative":
        return f"{resource_type}?{query}"
    if style == "path":
        return f"/fhir/{resource_type}?{query}"
    return f"{fhir_base(request)}/{resource_type}?{query}"


def _lenient(request: Request) -> bool:
    prefer = request.headers.get("prefer", "")
    return any(part.strip().lower() == "handling=lenient" for part in prefer.split(","))


def _search(request: Request, resource_type: str, params: list[tuple[str, str]], grant: AccessGrant) -> JSONResponse:
    _check_type(request, resource_type)
    state = get_state(request)
    store = state.store
    tokens = [value for name, value in params if name == "_page_token"]
    try:
        if tokens:
            cursor = decode_cursor(tokens[0])
            if cursor["t"] != resource_type:
                raise SearchError("_page_token belongs to a search of another resource type")
            params = [(str(k), str(v)) for k, v in cursor["p"]]
            lenient = bool(cursor.get("l"))
            snapshot = int(cursor["s"])
            after: Key | None = (int(cursor["a"][0]), str(cursor["a"][1])) if cursor.get("a") else None
            total: int | None = cursor.get("n")
            offset = int(cursor.get("o", 0))
        else:
            lenient = _lenient(request)
            snapshot = store.now()
            after, total, offset = None, None, 0
        criteria = parse_search(
            resource_type,
            params,
            lenient=lenient,
            default_count=state.config.default_count,
            max_count=state.config.max_count,
            load_time=store.load_time,
        )
    except SearchError as exc:
        raise FhirHTTPError(400, "invalid" if "unknown" not in str(exc) else "not-supported", str(exc)) from None

    def scan(start_after: Key | None) -> Any:
        for key, resource in store.iter_entries(
            resource_type,
            min_key=criteria.min_key,
            max_key=criteria.max_key,
            after=start_after,
            as_of=snapshot,
            patient_ids=criteria.patient_ids,
        ):
            if criteria.matches(resource):
                yield key, resource

    page: list[tuple[Key, Resource]] = []
    has_more = False
    if criteria.count:
        for item in scan(after):
            if len(page) == criteria.count:
                has_more = True
                break
            page.append(item)
    if total is None and _wants_total(criteria, store.count(resource_type)):
        if after is None and not has_more and criteria.count:
            total = len(page)
        elif not criteria.predicates and criteria.ids is None:
            total = store.count(resource_type)
        else:
            total = sum(1 for _ in scan(None))

    base = fhir_base(request)
    entries: list[dict[str, Any]] = []
    if criteria.ignored and after is None:
        outcome = operation_outcome(
            "not-supported", "; ".join(f"ignored {item}" for item in criteria.ignored), severity="warning"
        )
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    for _, resource in page:
        entries.append(
            {"fullUrl": f"{base}/{resource_type}/{resource['id']}", "resource": resource, "search": {"mode": "match"}}
        )
    entries.extend(_includes(request, criteria, [resource for _, resource in page], grant))

    query_params = [(k, v) for k, v in params if k != "_page_token"]
    links = [{"relation": "self", "url": _link(request, resource_type, urlencode(query_params))}]
    if tokens:
        links[0]["url"] = _link(request, resource_type, urlencode([("_page_token", tokens[0])]))
    if has_more:
        last = page[-1][0]
        token = encode_cursor(
            {
                "t": resource_type,
                "p": query_params,
                "a": [last[0], last[1]],
                "s": snapshot,
                "n": total,
                "l": lenient,
                "o": offset + len(page),
            }
        )
        links.append({"relation": "next", "url": _link(request, resource_type, urlencode([("_page_token", token)]))})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": uuid.uuid4().hex,
        "meta": {"lastUpdated": from_micros(snapshot)},
        "type": "searchset",
    }
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    bundle["entry"] = entries
    return JSONResponse(bundle, media_type=FHIR_JSON)


def _wants_total(criteria: Criteria, type_count: int) -> bool:
    """``_total=accurate`` always counts; without ``_total`` only while counting is cheap (a plain
    listing, or a type small enough to scan), as large servers do; ``none`` never."""
    if criteria.total == "none":
        return False
    if criteria.total_given:
        return True
    return (not criteria.predicates and criteria.ids is None) or type_count <= TOTAL_SCAN_LIMIT


def _includes(
    request: Request, criteria: Criteria, matches: Sequence[Resource], grant: AccessGrant
) -> list[dict[str, Any]]:
    if not criteria.includes:
        return []
    store = get_state(request).store
    base = fhir_base(request)
    seen = {(criteria.resource_type, str(resource["id"])) for resource in matches}
    out = []
    for resource in matches:
        for param, target in criteria.includes:
            fields, default_target = INCLUDE_FIELDS[param]
            for reference in references(resource, fields):
                found = store.resolve(reference, target or default_target)
                if found is None:
                    continue
                key = (str(found["resourceType"]), str(found["id"]))
                # An included resource is shown only when the token may read its type.
                if key in seen or not grant.allows(key[0], "read"):
                    continue
                seen.add(key)
                out.append({"fullUrl": f"{base}/{key[0]}/{key[1]}", "resource": found, "search": {"mode": "include"}})
    return out
