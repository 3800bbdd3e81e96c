"""Building a Bulk Data ``$export`` kick-off request (system, Patient or Group level; GET or POST).

Vendor differences are settings, not code branches: how list parameters travel (comma-joined or
repeated), whether the server takes GET at all (STU4 ballot servers may be POST-only), and whether
unsupported parameters are tolerated (``Prefer: handling=lenient``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from airflow_provider_smart.transport.urls import fhir_base

ExportLevel = Literal["system", "patient", "group"]
KickoffMethod = Literal["auto", "GET", "POST"]
ListStyle = Literal["comma", "repeat"]

LEVELS: tuple[str, ...] = ("system", "patient", "group")
NDJSON = "application/fhir+ndjson"
FHIR_JSON = "application/fhir+json"


class ExportRequestError(ValueError):
    """A kick-off parameter is invalid; the message names the parameter and how to fix it."""


def _as_list(value: str | Iterable[str] | None, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ExportRequestError(f"{name} must hold strings, got {type(item).__name__}: {item!r}")
        text = item.strip()
        if text:
            out.append(text)
    return tuple(out)


def format_instant(value: datetime | str | None, name: str) -> str | None:
    """A FHIR ``instant`` (timezone required) from a datetime or an ISO 8601 string."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ExportRequestError(
                f"{name}={value!r} is not an ISO 8601 instant; pass e.g. '2024-01-31T00:00:00Z'"
            ) from exc
        value = parsed
    if not isinstance(value, datetime):
        raise ExportRequestError(f"{name} must be a datetime or an ISO 8601 string, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ExportRequestError(f"{name}={value.isoformat()} has no timezone; FHIR instants need one (e.g. UTC)")
    text = value.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class ExportRequest:
    """What to export. Build it with :meth:`create`, which checks every value."""

    level: ExportLevel = "system"
    group_id: str | None = None
    output_format: str | None = NDJSON
    since: str | None = None
    until: str | None = None
    types: tuple[str, ...] = ()
    elements: tuple[str, ...] = ()
    type_filters: tuple[str, ...] = ()
    patients: tuple[str, ...] = ()
    include_associated_data: tuple[str, ...] = ()
    organize_output_by: str | None = None
    allow_partial_manifests: bool | None = None
    method: KickoffMethod = "auto"
    type_style: ListStyle = "comma"
    type_filter_style: ListStyle = "repeat"
    lenient: bool = False
    extra_headers: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def create(
        cls,
        *,
        level: str = "system",
        group_id: str | None = None,
        output_format: str | None = NDJSON,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        types: str | Iterable[str] | None = None,
        elements: str | Iterable[str] | None = None,
        type_filters: str | Iterable[str] | None = None,
        patients: str | Iterable[str] | None = None,
        include_associated_data: str | Iterable[str] | None = None,
        organize_output_by: str | None = None,
        allow_partial_manifests: bool | None = None,
        method: str = "auto",
        type_style: str = "comma",
        type_filter_style: str = "repeat",
        lenient: bool = False,
    ) -> ExportRequest:
        lvl = (level or "").strip().lower()
        if lvl not in LEVELS:
            raise ExportRequestError(f"level={level!r} is not one of {', '.join(LEVELS)}")
        gid = (group_id or "").strip() or None
        if lvl == "group" and not gid:
            raise ExportRequestError("level='group' needs group_id (the id of the Group resource to export)")
        if lvl != "group" and gid:
            raise ExportRequestError(f"group_id={gid!r} is only used with level='group' (level is {lvl!r})")
        if gid and ("/" in gid or "?" in gid):
            raise ExportRequestError(f"group_id={gid!r} must be a bare id such as '42', not a reference or URL")
        mth = (method or "auto").strip()
        mth = mth.upper() if mth.lower() != "auto" else "auto"
        if mth not in ("auto", "GET", "POST"):
            raise ExportRequestError(f"method={method!r} must be 'auto', 'GET' or 'POST'")
        for name, style in (("type_style", type_style), ("type_filter_style", type_filter_style)):
            if style not in ("comma", "repeat"):
                raise ExportRequestError(f"{name}={style!r} must be 'comma' or 'repeat'")
        filters = _as_list(type_filters, "type_filters")
        for value in filters:
            head, sep, query = value.partition("?")
            if not sep or not head or not query or not head[:1].isupper():
                raise ExportRequestError(
                    f"type_filters value {value!r} must look like 'ResourceType?search-params', "
                    "e.g. 'MedicationRequest?status=active'"
                )
        if type_filter_style == "comma" and any("," in value for value in filters):
            raise ExportRequestError(
                "type_filter_style='comma' cannot carry a _typeFilter value that itself contains a comma "
                "(it would split in two); use type_filter_style='repeat'"
            )
        pats = tuple(_patient_reference(p) for p in _as_list(patients, "patients"))
        if pats and lvl == "system":
            raise ExportRequestError("patients can only narrow a Patient- or Group-level export, not level='system'")
        if pats and mth == "GET":
            raise ExportRequestError("the 'patient' parameter is only defined for POST kick-offs; use method='POST'")
        types_ = _as_list(types, "types")
        for t in types_:
            if not t.isalnum() or not t[:1].isupper():
                raise ExportRequestError(f"types value {t!r} is not a FHIR resource type such as 'Patient'")
        org = (organize_output_by or "").strip() or None
        return cls(
            level=lvl,  # type: ignore[arg-type]
            group_id=gid,
            output_format=(output_format or "").strip() or None,
            since=format_instant(since, "since"),
            until=format_instant(until, "until"),
            types=types_,
            elements=_as_list(elements, "elements"),
            type_filters=filters,
            patients=pats,
            include_associated_data=_as_list(include_associated_data, "include_associated_data"),
            organize_output_by=org,
            allow_partial_manifests=allow_partial_manifests,
            method=mth,  # type: ignore[arg-type]
            type_style=type_style,  # type: ignore[arg-type]
            type_filter_style=type_filter_style,  # type: ignore[arg-type]
            lenient=bool(lenient),
        )

    @property
    def http_method(self) -> str:
        if self.method != "auto":
            return self.method
        return "POST" if self.patients else "GET"

    def path(self) -> str:
        if self.level == "system":
            return "$export"
        if self.level == "patient":
            return "Patient/$export"
        return f"Group/{quote(self.group_id or '', safe='')}/$export"

    def scope(self) -> dict[str, Any]:
        """What identifies "the same export" for watermarks and state: everything except the time window."""
        return {
            "level": self.level,
            "group_id": self.group_id,
            "types": sorted(self.types),
            "elements": sorted(self.elements),
            "type_filters": sorted(self.type_filters),
            "patients": sorted(self.patients),
            "include_associated_data": sorted(self.include_associated_data),
            "organize_output_by": self.organize_output_by,
            "output_format": self.output_format,
        }

    def with_since(self, since: datetime | str | None) -> ExportRequest:
        from dataclasses import replace

        return replace(self, since=format_instant(since, "since"))


def _patient_reference(value: str) -> str:
    text = value.strip()
    if text.startswith("Patient/"):
        return text
    if "/" in text:
        raise ExportRequestError(f"patients value {value!r} must be a Patient id or 'Patient/<id>'")
    return f"Patient/{text}"


@dataclass(frozen=True)
class KickoffRequest:
    """The HTTP request to send: ``params`` is a list of pairs so keys may repeat."""

    method: str
    url: str
    params: list[tuple[str, str]]
    json: dict[str, Any] | None
    headers: dict[str, str]


def _joined(name: str, values: Sequence[str], style: ListStyle) -> list[tuple[str, str]]:
    if not values:
        return []
    if style == "comma":
        return [(name, ",".join(values))]
    return [(name, v) for v in values]


def build_kickoff(base_url: str, request: ExportRequest) -> KickoffRequest:
    """The kick-off request for ``request`` against the FHIR base URL ``base_url``."""
    url = f"{fhir_base(base_url)}/{request.path()}"
    prefer = "respond-async, handling=lenient" if request.lenient else "respond-async"
    headers = {"Accept": FHIR_JSON, "Prefer": prefer}
    headers.update(dict(request.extra_headers))
    pairs: list[tuple[str, str]] = []
    if request.output_format:
        pairs.append(("_outputFormat", request.output_format))
    if request.since:
        pairs.append(("_since", request.since))
    if request.until:
        pairs.append(("_until", request.until))
    pairs += _joined("_type", request.types, request.type_style)
    pairs += _joined("_elements", request.elements, request.type_style)
    pairs += _joined("includeAssociatedData", request.include_associated_data, request.type_style)
    pairs += _joined("_typeFilter", request.type_filters, request.type_filter_style)
    if request.organize_output_by:
        pairs.append(("organizeOutputBy", request.organize_output_by))
    if request.allow_partial_manifests is not None:
        pairs.append(("allowPartialManifests", "true" if request.allow_partial_manifests else "false"))

    if request.http_method == "GET":
        return KickoffRequest("GET", url, pairs, None, headers)

    parameters: list[dict[str, Any]] = []
    for name, value in pairs:
        if name in ("_since", "_until"):
            parameters.append({"name": name, "valueInstant": value})
        elif name == "allowPartialManifests":
            parameters.append({"name": name, "valueBoolean": value == "true"})
        elif name == "includeAssociatedData":
            parameters.append({"name": name, "valueCode": value})
        else:
            parameters.append({"name": name, "valueString": value})
    for ref in request.patients:
        parameters.append({"name": "patient", "valueReference": {"reference": ref}})
    headers["Content-Type"] = FHIR_JSON
    body = {"resourceType": "Parameters", "parameter": parameters}
    return KickoffRequest("POST", url, [], body, headers)
