"""Search parameters of the sandbox: parsing, matching, ``_include`` targets and paging cursors.

Supported on every type: ``_id``, ``_lastUpdated`` (prefixes eq, ne, gt, ge, lt, le, sa, eb; repeatable),
``_count``, ``_include``, ``_sort=_lastUpdated``, ``_total`` (none / estimate / accurate), ``_format``.
Per type (where the element exists): ``patient``, ``subject``, ``code`` (``system|code``, ``code``,
``|code``, ``system|``), ``date``, ``status``; ``gender`` and ``birthdate`` on Patient; ``vaccine-code``
on Immunization. Repeating a parameter means AND; commas inside a value mean OR.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_provider_smart.sandbox.store import Resource, reference_id, to_micros

Predicate = Callable[[Resource], bool]
INFINITY = 2**62

RESULT_PARAMS = {"_count", "_include", "_sort", "_total", "_format", "_page_token"}
PATIENT_FIELDS = ("subject", "patient", "beneficiary")
CODE_FIELDS: dict[str, tuple[str, ...]] = {
    "Observation": ("code",),
    "Condition": ("code",),
    "Procedure": ("code",),
    "DiagnosticReport": ("code",),
    "AllergyIntolerance": ("code",),
    "MedicationRequest": ("medicationCodeableConcept",),
    "MedicationAdministration": ("medicationCodeableConcept",),
    "MedicationDispense": ("medicationCodeableConcept",),
    "MedicationStatement": ("medicationCodeableConcept",),
    "Medication": ("code",),
    "ServiceRequest": ("code",),
}
DATE_FIELDS: dict[str, tuple[str, ...]] = {
    "Observation": ("effectiveDateTime", "effectivePeriod", "effectiveInstant"),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod"),
    "Encounter": ("period",),
    "Procedure": ("performedDateTime", "performedPeriod"),
    "Immunization": ("occurrenceDateTime",),
    "DocumentReference": ("date",),
    "AllergyIntolerance": ("recordedDate",),
    "CarePlan": ("period",),
    "CareTeam": ("period",),
    "Claim": ("created",),
    "ExplanationOfBenefit": ("created",),
    "MedicationRequest": ("authoredOn",),
    "Condition": ("recordedDate",),
}
#: ``_include`` search parameters: the elements they follow and the type they point at (None: any).
INCLUDE_FIELDS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "patient": (PATIENT_FIELDS, "Patient"),
    "subject": (("subject",), None),
    "encounter": (("encounter", "context.encounter"), "Encounter"),
    "performer": (("performer", "performer.actor"), None),
    "requester": (("requester",), None),
    "general-practitioner": (("generalPractitioner",), None),
    "organization": (("managingOrganization", "serviceProvider", "organization"), "Organization"),
    "service-provider": (("serviceProvider",), "Organization"),
    "result": (("result",), "Observation"),
    "practitioner": (("participant.individual",), "Practitioner"),
    "author": (("author",), None),
}
_DATE = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


class SearchError(ValueError):
    """A search request the sandbox cannot answer; the message names the parameter and the fix."""


def date_range(text: str) -> tuple[int, int]:
    """``[start, end)`` in microseconds covered by a FHIR date/dateTime/instant at its precision."""
    match = _DATE.match(text.strip())
    if match is None:
        raise SearchError(f"{text!r} is not a FHIR date, dateTime or instant")
    year = int(match["year"])
    month = int(match["month"] or 1)
    day = int(match["day"] or 1)
    tz = match["tz"]
    offset = timedelta(0)
    if tz and tz != "Z":
        sign = -1 if tz[0] == "-" else 1
        offset = sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    try:
        start = datetime(year, month, day, tzinfo=UTC)
    except ValueError as exc:
        raise SearchError(f"{text!r} is not a valid date: {exc}") from None
    if match["hour"] is not None:
        start = start.replace(hour=int(match["hour"]), minute=int(match["minute"])) - offset
        if match["second"] is not None:
            fraction = match["fraction"] or ""
            micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
            start = start.replace(second=int(match["second"]), microsecond=micro)
            width = timedelta(microseconds=1) if fraction else timedelta(seconds=1)
        else:
            width = timedelta(minutes=1)
        begin = to_micros(start)
        return begin, begin + int(width.total_seconds() * 1_000_000)
    begin = to_micros(start)
    if match["day"] is not None:
        end = start + timedelta(days=1)
    elif match["month"] is not None:
        end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    else:
        end = datetime(year + 1, 1, 1, tzinfo=UTC)
    return begin, to_micros(end)


def _target_ranges(resource: Resource, fields: Sequence[str]) -> list[tuple[int, int]]:
    ranges = []
    for name in fields:
        value = resource.get(name)
        if isinstance(value, str):
            try:
                ranges.append(date_range(value))
            except SearchError:
                continue
        elif isinstance(value, dict):  # a Period
            try:
                start = date_range(value["start"])[0] if value.get("start") else -INFINITY
                end = date_range(value["end"])[1] if value.get("end") else INFINITY
            except SearchError:
                continue
            ranges.append((start, end))
    return ranges


def _compare(prefix: str, target: tuple[int, int], wanted: tuple[int, int]) -> bool:
    eq = wanted[0] <= target[0] and target[1] <= wanted[1]
    if prefix == "eq":
        return eq
    if prefix == "ne":
        return not eq
    if prefix == "gt":
        return target[1] > wanted[1]
    if prefix == "ge":
        return target[1] > wanted[1] or eq
    if prefix == "lt":
        return target[0] < wanted[0]
    if prefix == "le":
        return target[0] < wanted[0] or eq
    if prefix == "sa":
        return target[0] >= wanted[1]
    return target[1] <= wanted[0]  # eb


def split_prefix(value: str) -> tuple[str, str]:
    if value[:2] in _PREFIXES and len(value) > 2 and value[2].isdigit():
        return value[:2], value[2:]
    return "eq", value


def _date_predicate(name: str, value: str, fields: Sequence[str]) -> Predicate:
    alternatives = []
    for item in value.split(","):
        prefix, text = split_prefix(item)
        try:
            wanted = date_range(text)
        except SearchError as exc:
            raise SearchError(f"{name}: {exc}") from None
        alternatives.append((prefix, wanted))

    def check(resource: Resource) -> bool:
        ranges = _target_ranges(resource, fields)
        return any(_compare(p, target, wanted) for p, wanted in alternatives for target in ranges)

    return check


def _last_updated_predicate(value: str, load_time: int) -> tuple[Predicate, int | None, int | None]:
    """The predicate plus the key bounds it implies (for a quick start and stop of the scan)."""
    alternatives = []
    for item in value.split(","):
        prefix, text = split_prefix(item)
        try:
            alternatives.append((prefix, date_range(text)))
        except SearchError as exc:
            raise SearchError(f"_lastUpdated: {exc}") from None

    def check(resource: Resource) -> bool:
        text = (resource.get("meta") or {}).get("lastUpdated")
        moment = to_micros(text) if isinstance(text, str) and text else load_time
        return any(_compare(p, (moment, moment + 1), wanted) for p, wanted in alternatives)

    low: int | None = None
    high: int | None = None
    if len(alternatives) == 1:
        prefix, (start, end) = alternatives[0]
        if prefix in ("ge", "eq"):
            low = start
        elif prefix in ("gt", "sa"):
            low = end
        if prefix in ("le", "eq"):
            high = end - 1
        elif prefix in ("lt", "eb"):
            high = start - 1
    return check, low, high


def _walk(resource: Resource, path: str) -> list[Any]:
    values: list[Any] = [resource]
    for part in path.split("."):
        found: list[Any] = []
        for value in values:
            if isinstance(value, dict) and part in value:
                item = value[part]
                found.extend(item if isinstance(item, list) else [item])
        values = found
    return values


def references(resource: Resource, paths: Iterable[str]) -> list[str]:
    out = []
    for path in paths:
        for value in _walk(resource, path):
            if isinstance(value, dict) and isinstance(value.get("reference"), str):
                out.append(value["reference"])
    return out


def _reference_predicate(name: str, value: str, fields: Sequence[str], target_type: str | None) -> Predicate:
    wanted: list[tuple[str | None, str]] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            raise SearchError(f"{name}: empty reference")
        if "/" in item:
            parts = item.rstrip("/").split("/")
            wanted.append((parts[-2], parts[-1]))
        else:
            wanted.append((target_type, item))

    def check(resource: Resource) -> bool:
        for reference in references(resource, fields):
            for typ, rid in wanted:
                if reference_id(reference, typ) == rid:
                    return True
        return False

    return check


def _token_predicate(name: str, value: str, fields: Sequence[str]) -> Predicate:
    wanted: list[tuple[str | None, str | None]] = []
    for item in value.split(","):
        if "|" in item:
            system, _, code = item.partition("|")
            wanted.append((system, code or None))
        else:
            wanted.append((None, item))

    def check(resource: Resource) -> bool:
        for path in fields:
            for concept in _walk(resource, path):
                for coding in concept.get("coding") or [] if isinstance(concept, dict) else []:
                    for system, code in wanted:
                        if system is not None and (coding.get("system") or "") != system:
                            continue
                        if code is not None and coding.get("code") != code:
                            continue
                        return True
        return False

    return check


def _string_predicate(value: str, field_name: str) -> Predicate:
    options = set(value.split(","))
    return lambda resource: resource.get(field_name) in options


@dataclass
class Criteria:
    """A parsed search: predicates, key bounds, result parameters and what was ignored."""

    resource_type: str
    params: list[tuple[str, str]]
    predicates: list[Predicate] = field(default_factory=list)
    min_key: int | None = None
    max_key: int | None = None
    ids: set[str] | None = None
    patient_ids: set[str] | None = None  # the compartment(s) a patient= parameter limits the search to
    count: int = 50
    total: str = "accurate"
    total_given: bool = False
    includes: list[tuple[str, str | None]] = field(default_factory=list)  # (param, target type)
    ignored: list[str] = field(default_factory=list)

    def matches(self, resource: Resource) -> bool:
        if self.ids is not None and resource.get("id") not in self.ids:
            return False
        return all(predicate(resource) for predicate in self.predicates)


def parse_search(
    resource_type: str,
    params: Sequence[tuple[str, str]],
    *,
    lenient: bool,
    default_count: int,
    max_count: int,
    load_time: int,
) -> Criteria:
    """Turn query parameters into :class:`Criteria`; unknown ones raise (strict) or are listed (lenient)."""
    criteria = Criteria(resource_type, list(params), count=default_count)

    def unknown(name: str, why: str) -> None:
        if not lenient:
            raise SearchError(f"{why} (send 'Prefer: handling=lenient' to have it ignored)")
        criteria.ignored.append(f"{name}: {why}")

    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if modifier and name != "_include":
            unknown(raw_name, f"modifier :{modifier} of {name} is not supported")
            continue
        if name in ("_format",):
            continue
        if name == "_count":
            try:
                count = int(value)
            except ValueError:
                raise SearchError(f"_count must be a whole number, got {value!r}") from None
            if count < 0:
                raise SearchError("_count must be 0 or more")
            criteria.count = min(count, max_count)
        elif name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise SearchError(f"_total must be none, estimate or accurate, got {value!r}")
            criteria.total = value
            criteria.total_given = True
        elif name == "_sort":
            if value not in ("_lastUpdated",):
                unknown(raw_name, f"_sort={value} is not supported (only _sort=_lastUpdated)")
        elif name == "_include":
            parts = value.split(":")
            if len(parts) not in (2, 3) or parts[0] not in (resource_type, "*") or parts[1] not in INCLUDE_FIELDS:
                unknown(
                    raw_name,
                    f"_include={value} is not supported; use {resource_type}:<param> with param one of "
                    f"{', '.join(sorted(INCLUDE_FIELDS))}",
                )
                continue
            criteria.includes.append((parts[1], parts[2] if len(parts) == 3 else None))
        elif name == "_id":
            wanted = set(value.split(","))
            criteria.ids = wanted if criteria.ids is None else criteria.ids & wanted
        elif name == "_lastUpdated":
            check, low, high = _last_updated_predicate(value, load_time)
            criteria.predicates.append(check)
            if low is not None:
                criteria.min_key = low if criteria.min_key is None else max(criteria.min_key, low)
            if high is not None:
                criteria.max_key = high if criteria.max_key is None else min(criteria.max_key, high)
        elif name == "patient" and resource_type != "Patient":
            criteria.predicates.append(_reference_predicate(name, value, PATIENT_FIELDS, "Patient"))
            wanted = {item.strip().rstrip("/").split("/")[-1] for item in value.split(",")}
            criteria.patient_ids = wanted if criteria.patient_ids is None else criteria.patient_ids & wanted
        elif name == "subject":
            criteria.predicates.append(_reference_predicate(name, value, ("subject",), None))
        elif name == "code" and resource_type in CODE_FIELDS:
            criteria.predicates.append(_token_predicate(name, value, CODE_FIELDS[resource_type]))
        elif name == "vaccine-code" and resource_type == "Immunization":
            criteria.predicates.append(_token_predicate(name, value, ("vaccineCode",)))
        elif name == "date" and resource_type in DATE_FIELDS:
            criteria.predicates.append(_date_predicate(name, value, DATE_FIELDS[resource_type]))
        elif name == "birthdate" and resource_type == "Patient":
            criteria.predicates.append(_date_predicate(name, value, ("birthDate",)))
        elif name == "gender" and resource_type == "Patient":
            criteria.predicates.append(_string_predicate(value, "gender"))
        elif name == "status" and resource_type not in ("Patient", "Practitioner", "Organization", "Group"):
            criteria.predicates.append(_string_predicate(value, "status"))
        else:
            unknown(raw_name, f"unknown search parameter {raw_name!r} for {resource_type}")
    return criteria


def encode_cursor(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()


def decode_cursor(token: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        raise SearchError("_page_token is not a paging link this server made; start the search again") from None
    if not isinstance(data, dict) or "t" not in data or "p" not in data:
        raise SearchError("_page_token is not a paging link this server made; start the search again")
    return data
