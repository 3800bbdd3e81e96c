"""Arrow types for schema records, and conforming narrower tables to a wider schema.

Imported only by the writer and reader, never by a DAG file at module level.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_smart.parquet.schema import UNMAPPED_COLUMN, Node, SchemaRecord

# Field metadata telling the reader how to turn a stored value back into JSON.
KIND_KEY = b"fhir.kind"
JSON_META = {KIND_KEY: b"json"}
DECIMAL_META = {KIND_KEY: b"decimal"}
UNMAPPED_META = {KIND_KEY: b"unmapped"}

_LEAF_TYPES = {
    "string": pa.string(),
    "boolean": pa.bool_(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "json": pa.string(),
}


def _field(name: str, node: Node, decimal: str) -> pa.Field | None:
    """The Arrow field of ``node``; None for a struct with no typed field yet (Parquet cannot store one:
    such values are kept in the unmapped column until the struct gains a field)."""
    metadata = None
    if node.kind == "struct":
        fields = [f for f in (_field(k, v, decimal) for k, v in node.children.items()) if f is not None]
        if not fields:
            return None
        typ: pa.DataType = pa.struct(fields)
    elif node.kind == "decimal":
        typ = pa.float64() if decimal == "float64" else pa.string()
        metadata = DECIMAL_META
    else:
        typ = _LEAF_TYPES[node.kind]
        if node.kind == "json":
            metadata = JSON_META
    if node.is_list:
        typ = pa.list_(pa.field("element", typ, metadata=metadata))
    return pa.field(name, typ, metadata=metadata)


def data_schema(record: SchemaRecord) -> pa.Schema:
    """The schema of the FHIR fields only (what the JSON parser is told to produce)."""
    fields = (_field(k, v, record.decimal) for k, v in record.root.children.items())
    return pa.schema([f for f in fields if f is not None])


def table_schema(record: SchemaRecord) -> pa.Schema:
    """The stored schema: the FHIR fields plus the unmapped-JSON column, with file metadata."""
    schema = data_schema(record).append(pa.field(UNMAPPED_COLUMN, pa.string(), metadata=UNMAPPED_META))
    return schema.with_metadata(
        {b"fhir.resourceType": record.resource_type.encode(), b"fhir.decimal": record.decimal.encode()}
    )


FieldPath = tuple[str, ...]


def grow_from_arrow(node: Node, typ: pa.StructType, known: pa.StructType | None = None) -> list[FieldPath]:
    """Grow ``node`` by the fields the JSON parser found in the data (its inferred ``typ``).

    Only the shape of the inferred type is used (names, lists, objects): the types come from FHIR R4.
    Returns the paths (field names from ``node``, lists passed through) of the values that cannot be
    typed: a field R4 does not define, a shape R4 forbids, or an object with no typed field. Rows holding
    a value at one of these paths must take the exact path, which routes such values to the unmapped column.
    ``known`` is the type the parser was told: its fields are not walked again unless they hold new ones.
    """
    rejected: list[FieldPath] = []
    for i in range(typ.num_fields):
        field = typ.field(i)
        told = _told(known, field.name)
        if told is not None and told == field.type:
            continue
        child = node.add(field.name)
        if child is None:
            rejected.append((field.name,))
            continue
        ftype = field.type
        if pa.types.is_list(ftype) or pa.types.is_large_list(ftype):
            if not child.is_list:
                rejected.append((field.name,))
                continue
            ftype = ftype.value_type
            told = told.value_type if told is not None and pa.types.is_list(told) else None
        elif child.is_list:
            rejected.append((field.name,))
            continue
        if pa.types.is_struct(ftype):
            if child.kind != "struct":
                rejected.append((field.name,))
                continue
            below = grow_from_arrow(child, ftype, told if told is not None and pa.types.is_struct(told) else None)
            if child.is_empty():
                rejected.append((field.name,))
            else:
                rejected.extend((field.name, *path) for path in below)
        elif child.kind in ("struct", "json") or pa.types.is_null(ftype):
            rejected.append((field.name,))
    return rejected


def unexpected_paths(typ: pa.StructType, known: pa.StructType) -> list[FieldPath]:
    """The paths of fields in the parsed ``typ`` that the parser was not told about (``known``)."""
    found: list[FieldPath] = []
    for i in range(typ.num_fields):
        field = typ.field(i)
        told = _told(known, field.name)
        if told is None:
            found.append((field.name,))
            continue
        ftype = field.type
        if pa.types.is_list(ftype) and pa.types.is_list(told):
            ftype, told = ftype.value_type, told.value_type
        if pa.types.is_struct(ftype) and pa.types.is_struct(told) and ftype != told:
            found.extend((field.name, *path) for path in unexpected_paths(ftype, told))
    return found


def _told(known: pa.StructType | None, name: str) -> pa.DataType | None:
    if known is None:
        return None
    index = known.get_field_index(name)
    return None if index < 0 else known.field(index).type


def rows_with_value(table: pa.Table, path: FieldPath) -> set[int]:
    """Indexes of the rows of ``table`` holding a non-null value at ``path`` (lists are passed through)."""
    rows: set[int] = set()
    start = 0
    for chunk in table.column(path[0]).chunks:
        rows.update(start + int(i) for i in _present(chunk, path[1:]).to_pylist())
        start += len(chunk)
    return rows


def _present(array: pa.Array, path: FieldPath) -> pa.Array:
    """Indexes (into ``array``) of the entries with a non-null value at ``path`` below them."""
    if not path:  # the field itself: an empty list or object is a value too
        return pc.indices_nonzero(pc.is_valid(array))
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        parents = pc.list_parent_indices(array)
        inner = _present(pc.list_flatten(array), path)
        return pc.unique(parents.take(inner))
    return _present(pc.struct_field(array, path[0]), path[1:])


def conform(array: pa.Array, target: pa.DataType) -> pa.Array:
    """``array`` as ``target``, a type with the same or more struct fields (missing ones are null)."""
    if array.type == target:
        return array
    if pa.types.is_null(array.type):
        return pa.nulls(len(array), target)
    if pa.types.is_struct(target):
        present = {array.type.field(i).name for i in range(array.type.num_fields)}
        children = []
        for i in range(target.num_fields):
            field = target.field(i)
            if field.name in present:
                children.append(conform(array.field(field.name), field.type))
            else:
                children.append(pa.nulls(len(array), field.type))
        mask = pc.is_null(array) if array.null_count else None
        return pa.StructArray.from_arrays(children, fields=list(target), mask=mask)
    if pa.types.is_list(target):
        values = conform(array.values, target.value_type)
        mask = pc.is_null(array) if array.null_count else None
        return pa.ListArray.from_arrays(array.offsets, values, type=target, mask=mask)
    return array.cast(target)


def conform_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            chunks = [conform(chunk, field.type) for chunk in column.chunks]
            columns.append(pa.chunked_array(chunks, type=field.type))
        else:
            columns.append(pa.chunked_array([pa.nulls(len(table), field.type)], type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)
