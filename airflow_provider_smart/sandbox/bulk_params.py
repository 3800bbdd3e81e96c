"""Bulk Data kick-off parameters: read from a query string or a Parameters resource, then checked.

Strict by default: anything the sandbox does not support is a 400 OperationOutcome. With
``Prefer: handling=lenient`` the same problems become warnings that end up in the export's error file,
as Bulk Data 2.0 / STU3 describe.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airflow_provider_smart.sandbox.bulk_filters import (
    ElementSelection,
    FilterError,
    TypeQuery,
    parse_elements,
    parse_type_filter,
)

OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
ASSOCIATED_DATA_VALUES = frozenset({"LatestProvenanceResources", "RelevantProvenanceResources"})
KNOWN_PARAMETERS = frozenset(
    {
        "_outputFormat",
        "_since",
        "_until",
        "_type",
        "_elements",
        "_typeFilter",
        "patient",
        "includeAssociatedData",
        "organizeOutputBy",
        "allowPartialManifests",
    }
)
#: Parameters that may be given once only.
_SINGLE = frozenset({"_outputFormat", "_since", "_until", "organizeOutputBy", "allowPartialManifests"})


class KickoffError(Exception):
    """A kick-off the sandbox refuses: carries the HTTP status and the OperationOutcome issues."""

    def __init__(self, status: int, issues: list[dict[str, Any]]):
        super().__init__("; ".join(str(i.get("diagnostics")) for i in issues))
        self.status = status
        self.issues = issues


def issue(severity: str, code: str, diagnostics: str, expression: str | None = None) -> dict[str, Any]:
    """One OperationOutcome.issue."""
    result: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        result["expression"] = [expression]
    return result


def operation_outcome(issues: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


@dataclass
class ExportRequest:
    """A checked kick-off: what to export, and the warnings a lenient kick-off collected."""

    level: str  # "system", "patient" or "group"
    request_url: str
    group_id: str | None = None
    output_format: str = "application/fhir+ndjson"
    since: datetime | None = None
    until: datetime | None = None
    types: list[str] | None = None
    elements: ElementSelection | None = None
    type_filters: dict[str, list[TypeQuery]] = field(default_factory=dict)
    patients: list[str] | None = None
    include_associated: list[str] = field(default_factory=list)
    organize_output_by: str | None = None
    allow_partial_manifests: bool = False
    lenient: bool = False
    #: Patient/Group level without _type or includeAssociatedData: add the compartment's Provenance.
    implicit_provenance: bool = False
    warnings: list[dict[str, Any]] = field(default_factory=list)


def parameters_from_resource(body: Any) -> list[tuple[str, Any]]:
    """(name, value) pairs of a FHIR Parameters resource, the POST kick-off body."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise KickoffError(
            400,
            [
                issue(
                    "error",
                    "invalid",
                    "a POST kick-off body must be a FHIR Parameters resource (resourceType Parameters)",
                )
            ],
        )
    pairs: list[tuple[str, Any]] = []
    for item in body.get("parameter") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise KickoffError(400, [issue("error", "invalid", "each Parameters.parameter needs a name")])
        values = [v for k, v in item.items() if k.startswith("value")]
        if len(values) != 1:
            raise KickoffError(
                400,
                [issue("error", "invalid", f"parameter {item['name']!r} needs exactly one value[x]", item["name"])],
            )
        value = values[0]
        if isinstance(value, dict) and "reference" in value:
            value = value["reference"]
        elif isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str):
            raise KickoffError(
                400, [issue("error", "invalid", f"parameter {item['name']!r} has an unreadable value", item["name"])]
            )
        pairs.append((item["name"], value))
    return pairs


def _parse_instant(name: str, text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise KickoffError(
            400,
            [
                issue(
                    "error",
                    "invalid",
                    f"{name}={text!r} is not a FHIR instant; give a full time with a zone, e.g. 2024-01-31T00:00:00Z",
                    name,
                )
            ],
        )
    return when


def _split(values: Sequence[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


class _Collector:
    """Either raises (strict) or records a warning (lenient) for an unsupported request part."""

    def __init__(self, lenient: bool):
        self.lenient = lenient
        self.warnings: list[dict[str, Any]] = []

    def problem(self, diagnostics: str, expression: str, *, code: str = "not-supported", status: int = 400) -> None:
        if not self.lenient:
            raise KickoffError(status, [issue("error", code, diagnostics, expression)])
        self.warnings.append(issue("warning", code, f"ignored: {diagnostics}", expression))


def parse_kickoff(
    pairs: Sequence[tuple[str, str]],
    *,
    level: str,
    request_url: str,
    method: str,
    supported_types: Iterable[str],
    compartment_types: Iterable[str],
    lenient: bool,
    group_id: str | None = None,
) -> ExportRequest:
    """Check kick-off parameters against what the sandbox supports.

    :param supported_types: resource types the server can export at all.
    :param compartment_types: resource types of the Patient compartment (Patient and Group level).
    """
    collect = _Collector(lenient)
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        if name not in KNOWN_PARAMETERS:
            collect.problem(f"unknown kick-off parameter {name!r}", name)
            continue
        grouped.setdefault(name, []).append(value)
    for name in _SINGLE:
        if len(grouped.get(name, [])) > 1:
            raise KickoffError(400, [issue("error", "invalid", f"{name} may be given only once", name)])

    request = ExportRequest(level=level, request_url=request_url, group_id=group_id, lenient=lenient)

    if "_outputFormat" in grouped:
        fmt = grouped["_outputFormat"][0].strip()
        if fmt not in OUTPUT_FORMATS:
            collect.problem(
                f"_outputFormat {fmt!r} is not supported; use application/fhir+ndjson, application/ndjson or ndjson",
                "_outputFormat",
            )
    if "_since" in grouped:
        request.since = _parse_instant("_since", grouped["_since"][0])
    if "_until" in grouped:
        request.until = _parse_instant("_until", grouped["_until"][0])
    if request.since and request.until and request.until <= request.since:
        raise KickoffError(400, [issue("error", "invalid", "_until must be later than _since", "_until")])

    supported = set(supported_types)
    allowed = supported if level == "system" else set(compartment_types) & supported
    if "_type" in grouped:
        types: list[str] = []
        for name in _split(grouped["_type"]):
            if name not in supported:
                collect.problem(f"resource type {name!r} is not exported by this server", "_type")
            elif name not in allowed:
                collect.problem(
                    f"resource type {name!r} is outside the Patient compartment; "
                    "ask for it with a system-level [base]/$export",
                    "_type",
                )
            elif name not in types:
                types.append(name)
        if not types:
            raise KickoffError(400, [issue("error", "invalid", "_type names no resource type this server exports")])
        request.types = types

    if "_elements" in grouped:
        try:
            request.elements = parse_elements(_split(grouped["_elements"]), supported)
        except FilterError as exc:
            collect.problem(str(exc), "_elements")

    for text in grouped.get("_typeFilter", []):
        # Repeated _typeFilter values are OR-ed; one value may also hold comma-joined queries (2.0).
        for query_text in _split_type_filter(text):
            try:
                query = parse_type_filter(query_text, supported)
            except FilterError as exc:
                collect.problem(str(exc), "_typeFilter")
                continue
            if request.types is not None and query.resource_type not in request.types:
                collect.problem(f"_typeFilter for {query.resource_type} does not match any _type value", "_typeFilter")
                continue
            request.type_filters.setdefault(query.resource_type, []).append(query)

    if "patient" in grouped:
        if method != "POST":
            collect.problem("the patient parameter is accepted only in a POST kick-off (a Parameters body)", "patient")
        elif level == "system":
            collect.problem("the patient parameter does not apply to a system-level export", "patient")
        else:
            ids = []
            for ref in _split(grouped["patient"]):
                kind, _, pid = ref.rpartition("/")
                if kind.rsplit("/", 1)[-1] != "Patient" or not pid:
                    raise KickoffError(
                        400,
                        [
                            issue(
                                "error",
                                "invalid",
                                f"patient {ref!r} is not a reference like Patient/123",
                                "patient",
                            )
                        ],
                    )
                ids.append(pid)
            request.patients = ids

    if "includeAssociatedData" in grouped:
        for value in _split(grouped["includeAssociatedData"]):
            if value in ASSOCIATED_DATA_VALUES:
                request.include_associated.append(value)
            else:
                collect.problem(f"includeAssociatedData value {value!r} is not supported", "includeAssociatedData")

    if "organizeOutputBy" in grouped:
        by = grouped["organizeOutputBy"][0].strip()
        if by != "Patient":
            collect.problem(f"organizeOutputBy {by!r} is not supported; only Patient is", "organizeOutputBy")
        elif level == "system" and request.types is not None and "Patient" not in request.types:
            collect.problem("organizeOutputBy=Patient needs Patient among the exported types", "organizeOutputBy")
        else:
            request.organize_output_by = by

    if "allowPartialManifests" in grouped:
        flag = grouped["allowPartialManifests"][0].strip().lower()
        if flag not in ("true", "false"):
            raise KickoffError(
                400, [issue("error", "invalid", "allowPartialManifests must be true or false", "allowPartialManifests")]
            )
        request.allow_partial_manifests = flag == "true"

    request.warnings = collect.warnings
    return request


def _split_type_filter(text: str) -> list[str]:
    """Split comma-joined _typeFilter queries; a comma inside a query's values stays (it follows ``=``)."""
    parts: list[str] = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            continue
        # A new query starts with "Type?"; anything else continues the previous query's value list.
        head = piece.split("?", 1)[0]
        if "?" in piece and head[:1].isupper() and head.isalnum():
            parts.append(piece)
        elif parts:
            parts[-1] = f"{parts[-1]},{piece}"
        else:
            parts.append(piece)
    return parts
