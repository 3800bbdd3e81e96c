"""Reading the tables back: a Parquet row -> the FHIR JSON resource it came from."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.parquet.schema import UNMAPPED_COLUMN

if TYPE_CHECKING:
    import pyarrow as pa

Converter = Callable[[Any], Any]
KIND_KEY = b"fhir.kind"


def _identity(value: Any) -> Any:
    return value


def _converter(field: pa.Field) -> Converter:
    import pyarrow as pa

    kind = (field.metadata or {}).get(KIND_KEY)
    typ = field.type
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        inner = _converter(typ.value_field)
        if inner is _identity and kind is None:
            return _identity
        return lambda items: [None if v is None else inner(v) for v in items]
    if pa.types.is_struct(typ):
        children = [(typ.field(i).name, _converter(typ.field(i))) for i in range(typ.num_fields)]
        return lambda row: {k: conv(row[k]) for k, conv in children if row.get(k) is not None}
    if kind == b"json":
        return json.loads
    if kind == b"decimal" and pa.types.is_string(typ):
        return Decimal
    return _identity


def _apply(resource: dict[str, Any], patches: list[list[Any]]) -> None:
    for path, value in patches:
        target: Any = resource
        for step in path[:-1]:
            target = target.setdefault(step, {}) if isinstance(target, dict) else target[step]
        last = path[-1]
        if isinstance(target, list):
            while len(target) <= last:
                target.append(None)
        target[last] = value


def row_converter(schema: pa.Schema) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function turning one row (as ``Table.to_pylist()`` gives it) back into the FHIR resource.

    Decimals stored as exact text come back as :class:`decimal.Decimal`; everything kept as JSON text
    (deep nesting, contained resources) and every unmapped value is restored in place.
    """
    fields = [(f.name, _converter(f)) for f in schema if f.name != UNMAPPED_COLUMN]

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        resource = {name: conv(row[name]) for name, conv in fields if row.get(name) is not None}
        unmapped = row.get(UNMAPPED_COLUMN)
        if unmapped:
            _apply(resource, json.loads(unmapped, parse_float=Decimal if _has_exact(schema) else float))
        return resource

    return convert


def _has_exact(schema: pa.Schema) -> bool:
    return (schema.metadata or {}).get(b"fhir.decimal") == b"string"


def row_to_resource(row: dict[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """Convert one row of a table with ``schema`` back to the FHIR JSON resource (as a dict)."""
    return row_converter(schema)(row)


def iter_resources(source: Any, *, batch_size: int = 4096) -> Iterator[dict[str, Any]]:
    """Yield the FHIR resources stored in a Parquet file written by this package.

    :param source: a path, an ``ObjectStoragePath``, a file object, or a ``pyarrow.Table``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(source, pa.Table):
        convert = row_converter(source.schema)
        for batch in source.to_batches(max_chunksize=batch_size):
            yield from (convert(r) for r in batch.to_pylist())
        return
    opened = source.open("rb") if hasattr(source, "open") and not isinstance(source, str) else None
    try:
        pf = pq.ParquetFile(opened if opened is not None else source)
        convert = row_converter(pf.schema_arrow)
        for batch in pf.iter_batches(batch_size=batch_size):
            yield from (convert(r) for r in batch.to_pylist())
    finally:
        if opened is not None:
            opened.close()
