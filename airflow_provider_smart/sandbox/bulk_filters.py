"""``_typeFilter`` queries and ``_elements`` subsetting for the sandbox's Bulk Data export.

The sandbox supports a small, documented set of search parameters in ``_typeFilter``: ``_id``,
``_lastUpdated`` (with the eq/ne/gt/ge/lt/le prefixes), and the token parameters ``code``, ``status``,
``category``, ``gender`` and ``clinical-status`` (``code``, ``system|code``, ``|code``, comma = OR).
Different parameters in one query are AND-ed; several queries for one type are OR-ed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

#: Token search parameters: name -> the element holding the code(s).
TOKEN_PARAMETERS: dict[str, str] = {
    "code": "code",
    "status": "status",
    "category": "category",
    "gender": "gender",
    "clinical-status": "clinicalStatus",
}
DATE_PREFIXES = ("eq", "ne", "gt", "ge", "lt", "le")
#: Search result parameters, never allowed in _typeFilter.
RESULT_PARAMETERS = frozenset(
    {"_sort", "_count", "_include", "_revinclude", "_summary", "_total", "_elements", "_contained", "_containedType"}
)
#: Elements kept whatever _elements asks: needed to read the resource at all.
ALWAYS_KEPT = frozenset({"resourceType", "id", "meta"})
#: Mandatory (1..1 / 1..*) elements of common types: FHIR says servers SHOULD keep them under _elements.
MANDATORY_ELEMENTS: dict[str, frozenset[str]] = {
    "Observation": frozenset({"status", "code"}),
    "Condition": frozenset({"subject"}),
    "Encounter": frozenset({"status", "class"}),
    "Procedure": frozenset({"status", "subject"}),
    "MedicationRequest": frozenset({"status", "intent", "medication[x]", "subject"}),
    "Immunization": frozenset({"status", "vaccineCode", "patient", "occurrence[x]"}),
    "AllergyIntolerance": frozenset({"patient"}),
    "DiagnosticReport": frozenset({"status", "code"}),
    "Group": frozenset({"type", "actual"}),
    "Provenance": frozenset({"target", "recorded", "agent"}),
}
SUBSETTED_TAG = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


class FilterError(ValueError):
    """A _typeFilter or _elements value the sandbox cannot honour; the message says why and what works."""


Matcher = Callable[[dict[str, Any]], bool]


@dataclass
class TypeQuery:
    """One ``_typeFilter`` query: a resource type and AND-ed criteria."""

    resource_type: str
    text: str
    criteria: list[Matcher] = field(default_factory=list)

    def matches(self, resource: dict[str, Any]) -> bool:
        return all(criterion(resource) for criterion in self.criteria)


def parse_type_filter(text: str, supported_types: Iterable[str]) -> TypeQuery:
    """Parse ``Type?param=value&...`` (already URL-decoded once, as a query parameter value is)."""
    resource_type, sep, query = text.partition("?")
    if not sep or not resource_type:
        raise FilterError(f"_typeFilter {text!r} must look like ResourceType?param=value")
    if resource_type not in set(supported_types):
        raise FilterError(
            f"_typeFilter {text!r} names resource type {resource_type!r}, which this server does not export"
        )
    result = TypeQuery(resource_type=resource_type, text=text)
    for name, value in parse_qsl(query, keep_blank_values=True):
        base, _, modifier = name.partition(":")
        if base in RESULT_PARAMETERS:
            raise FilterError(f"_typeFilter {text!r} uses the search result parameter {base}, which is not allowed")
        if modifier:
            raise FilterError(f"_typeFilter {text!r}: the modifier :{modifier} is not supported")
        if not value:
            raise FilterError(f"_typeFilter {text!r}: parameter {base} has no value")
        if base == "_id":
            ids = set(value.split(","))
            result.criteria.append(lambda r, ids=ids: r.get("id") in ids)  # type: ignore[misc]
        elif base == "_lastUpdated":
            result.criteria.append(_date_criterion(text, value))
        elif base in TOKEN_PARAMETERS:
            result.criteria.append(_token_criterion(TOKEN_PARAMETERS[base], value))
        else:
            supported = ", ".join(["_id", "_lastUpdated", *TOKEN_PARAMETERS])
            raise FilterError(
                f"_typeFilter {text!r}: search parameter {base!r} is not supported (supported: {supported})"
            )
    if not result.criteria:
        raise FilterError(f"_typeFilter {text!r} has no search criteria")
    return result


def parse_fhir_instant(value: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _date_criterion(text: str, value: str) -> Matcher:
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    moment = parse_fhir_instant(value[2:] if value[:2] in DATE_PREFIXES else value)
    if moment is None:
        raise FilterError(
            f"_typeFilter {text!r}: _lastUpdated needs an instant with a zone, e.g. gt2024-01-01T00:00:00Z"
        )

    def check(resource: dict[str, Any]) -> bool:
        stamp = (resource.get("meta") or {}).get("lastUpdated")
        when = parse_fhir_instant(stamp) if isinstance(stamp, str) else None
        if when is None:
            return False
        return {
            "eq": when == moment,
            "ne": when != moment,
            "gt": when > moment,
            "ge": when >= moment,
            "lt": when < moment,
            "le": when <= moment,
        }[prefix]

    return check


def _codes(value: Any) -> list[tuple[str | None, str]]:
    """(system, code) pairs in a code, Coding, CodeableConcept, or a list of them."""
    if isinstance(value, str):
        return [(None, value)]
    if isinstance(value, list):
        return [pair for item in value for pair in _codes(item)]
    if isinstance(value, dict):
        if "coding" in value:
            return _codes(value["coding"])
        if isinstance(value.get("code"), str):
            return [(value.get("system"), value["code"])]
    return []


def _token_criterion(element: str, value: str) -> Matcher:
    wanted: list[tuple[str | None, str, bool]] = []  # (system, code, system given)
    for token in value.split(","):
        if "|" in token:
            system, _, code = token.partition("|")
            wanted.append((system or None, code, True))
        else:
            wanted.append((None, token, False))

    def check(resource: dict[str, Any]) -> bool:
        for system, code in _codes(resource.get(element)):
            for want_system, want_code, system_given in wanted:
                if want_code and code != want_code:
                    continue
                if system_given and system != want_system:
                    continue
                return True
        return False

    return check


@dataclass
class ElementSelection:
    """The ``_elements`` request: elements for every type, and per type."""

    common: set[str] = field(default_factory=set)
    by_type: dict[str, set[str]] = field(default_factory=dict)

    def for_type(self, resource_type: str) -> set[str] | None:
        """The elements to keep for a type, or None when _elements does not touch this type."""
        specific = self.by_type.get(resource_type)
        if not self.common and specific is None:
            return None
        return self.common | (specific or set())


def parse_elements(values: Iterable[str], supported_types: Iterable[str]) -> ElementSelection:
    supported = set(supported_types)
    selection = ElementSelection()
    for value in values:
        if "." in value:
            resource_type, _, element = value.partition(".")
            if resource_type not in supported:
                raise FilterError(f"_elements {value!r} names resource type {resource_type!r}, not exported here")
            if not element or "." in element:
                raise FilterError(f"_elements {value!r}: only root elements (Type.element) are allowed")
            selection.by_type.setdefault(resource_type, set()).add(element)
        else:
            selection.common.add(value)
    return selection


def _element_kept(key: str, keep: set[str]) -> bool:
    if key in keep or key in ALWAYS_KEPT:
        return True
    # Choice elements: "medication[x]" keeps medicationCodeableConcept and medicationReference.
    return any(
        name.endswith("[x]") and key.startswith(name[:-3]) and key[len(name) - 3 : len(name) - 2].isupper()
        for name in keep
    )


def apply_elements(resource: dict[str, Any], selection: ElementSelection | None) -> dict[str, Any]:
    """A copy of ``resource`` keeping only the asked and mandatory elements, tagged SUBSETTED."""
    if selection is None:
        return resource
    keep = selection.for_type(str(resource.get("resourceType")))
    if keep is None:
        return resource
    keep = keep | MANDATORY_ELEMENTS.get(str(resource.get("resourceType")), frozenset())
    result = {k: v for k, v in resource.items() if _element_kept(k, keep)}
    meta = dict(result.get("meta") or {})
    tags = [t for t in meta.get("tag") or [] if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, dict(SUBSETTED_TAG)]
    result["meta"] = meta
    return result
