"""View rows -> Arrow record batches with the columns the view declares (pyarrow imported on use).

Declared FHIR types map to Arrow types: boolean -> bool, integer/positiveInt/unsignedInt/integer64 ->
int64, decimal -> float64, date -> date32, dateTime/instant -> timestamp(us, UTC), time -> time64(us),
every other type (string, code, id, uri, ...) and an undeclared type -> string. ``collection: true``
gives a list of that type. A partial date or dateTime (``1970-06``) is stored as its first instant, and a
dateTime with no zone is read as UTC; keep such columns as ``string`` in the view to keep the exact text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.views.definition import ColumnSpec, ViewPlan
from airflow_provider_smart.views.errors import ViewError, shown
from airflow_provider_smart.views.fhirpath.boundaries import boundary

if TYPE_CHECKING:
    import pyarrow as pa

_INTEGERS = frozenset({"integer", "positiveInt", "unsignedInt", "integer64"})
_ZONE = re.compile(r"(Z|[+-]\d{2}:\d{2})$")


def arrow_type(spec: ColumnSpec) -> pa.DataType:
    import pyarrow as pa

    declared = spec.type or "string"
    if declared == "boolean":
        base = pa.bool_()
    elif declared in _INTEGERS:
        base = pa.int64()
    elif declared == "decimal":
        base = pa.float64()
    elif declared == "date":
        base = pa.date32()
    elif declared in ("dateTime", "instant"):
        base = pa.timestamp("us", tz="UTC")
    elif declared == "time":
        base = pa.time64("us")
    else:
        base = pa.string()
    return pa.list_(base) if spec.collection else base


def arrow_schema(plan: ViewPlan) -> pa.Schema:
    import pyarrow as pa

    fields = [
        pa.field(c.name, arrow_type(c), metadata={"fhir.type": c.type or "", "fhir.path": c.path}) for c in plan.columns
    ]
    return pa.schema(fields, metadata={"fhir.view": plan.name, "fhir.resource": plan.resource})


def _to_date(value: Any) -> date:
    return date.fromisoformat(boundary(value, False, "date"))


def _to_datetime(value: Any) -> datetime:
    text = value
    if len(value) < 19 or "T" not in value:
        # A partial dateTime (1970, 1970-06, 1970-06-15) as its first instant; it has no zone, so it is read
        # as UTC like a full dateTime without one (lowBoundary() would take the earliest zone, +14:00).
        first = boundary(value, False, "dateTime")
        if first is None:
            raise ValueError(f"{shown(value)} is not a dateTime")
        text = first if _ZONE.search(value) else _ZONE.sub("", first)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _to_time(value: Any) -> time:
    return time.fromisoformat(value)


def _to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _to_int(value: Any) -> int:
    if type(value) is bool or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{shown(value)} is not an integer")
    return int(value)


def _to_float(value: Any) -> float:
    if type(value) is bool or not isinstance(value, (int, float)):
        raise ValueError(f"{shown(value)} is not a number")
    return float(value)


def _to_bool(value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError(f"{shown(value)} is not true or false")
    return value


def _converter(spec: ColumnSpec) -> Callable[[Any], Any]:
    declared = spec.type or "string"
    if declared == "boolean":
        return _to_bool
    if declared in _INTEGERS:
        return _to_int
    if declared == "decimal":
        return _to_float
    if declared == "date":
        return _to_date
    if declared in ("dateTime", "instant"):
        return _to_datetime
    if declared == "time":
        return _to_time
    return _to_string


class BatchBuilder:
    """Turns row tuples into record batches of the view's schema; a value that does not fit its declared
    type raises :class:`ViewError` naming the column, the value and the fix."""

    def __init__(self, plan: ViewPlan) -> None:
        self.plan = plan
        self.schema = arrow_schema(plan)
        self.converters = [_converter(c) for c in plan.columns]

    def batch(self, rows: Sequence[tuple[Any, ...]]) -> pa.RecordBatch:
        import pyarrow as pa

        arrays = []
        for i, (spec, convert) in enumerate(zip(self.plan.columns, self.converters, strict=True)):
            column = [row[i] for row in rows]
            try:
                if spec.collection:
                    values = [None if v is None else [convert(x) for x in v] for v in column]
                else:
                    values = [None if v is None else convert(v) for v in column]
            except (ValueError, TypeError) as exc:
                raise ViewError(
                    f"view {self.plan.name!r}, column {spec.name!r} (declared {spec.type or 'no type'}): {exc}; "
                    "fix the column's 'type' or its path"
                ) from None
            arrays.append(pa.array(values, type=self.schema.field(i).type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)
