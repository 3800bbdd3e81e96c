"""Schema records: which fields of a resource type have been seen, with types fixed by FHIR R4.

A record is a tree of nodes. A node is a leaf (``string``, ``boolean``, ``int32``, ``int64``,
``decimal``, ``json``) or a struct of named children; either may be a list. Width comes from the data
(only elements that appeared get a node), types come from the model (never from the data), and a
record only ever grows. Its JSON form is compact: a leaf is its kind, a struct is an object of its
children, a list is a one-element array, e.g. ``{"code": {"coding": [{"system": "string"}]}}``.

This module has no pyarrow import: arrow types are built in ``arrow.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_provider_smart.parquet import model

RECORD_FORMAT = "fhir-r4-parquet-schema/1"
# How many times one complex type may appear on the path from the root (the root itself included):
# Extension in Extension in Extension is typed, a fourth level is kept as JSON text.
MAX_SAME_TYPE_DEPTH = 3
UNMAPPED_COLUMN = "unmapped_json"
DECIMAL_MODES = ("float64", "string")


class SchemaError(ValueError):
    """A schema record that does not fit FHIR R4 or this writer's options."""


class Node:
    """One field of a schema record."""

    __slots__ = ("children", "fhir_type", "is_list", "kind", "leafy", "lineage")

    def __init__(self, kind: str, is_list: bool, fhir_type: str | None = None, lineage: tuple[str, ...] = ()):
        self.kind = kind  # a leaf kind or "struct"
        self.is_list = is_list
        self.fhir_type = fhir_type  # complex type of a struct (model lookups), None for leaves
        self.lineage = lineage  # complex types from the root down to this struct, for the nesting cap
        self.children: dict[str, Node] = {}
        self.leafy = kind != "struct"  # has a leaf below it; records only grow, so once True stays True

    def child_for(self, name: str) -> Node | None:
        """A new node for element ``name`` as FHIR R4 defines it (not attached), or None if R4 has none."""
        spec = model.element(self.fhir_type, name)
        if spec is None:
            return None
        type_name, is_array = spec
        if type_name in model.LEAF_KINDS:
            return Node(type_name, is_array)
        if self.lineage.count(type_name) >= MAX_SAME_TYPE_DEPTH:
            return Node("json", is_array)
        return Node("struct", is_array, type_name, (*self.lineage, type_name))

    def add(self, name: str) -> Node | None:
        """The child ``name``, adding it first when FHIR R4 defines it; None for a non-R4 element."""
        existing = self.children.get(name)
        if existing is not None:
            return existing
        child = self.child_for(name)
        if child is not None:
            self.children[name] = child
        return child

    def to_json(self) -> Any:
        inner: Any = {k: v.to_json() for k, v in self.children.items()} if self.kind == "struct" else self.kind
        return [inner] if self.is_list else inner

    def is_empty(self) -> bool:
        """A struct with no leaf below it: it has no column (Parquet cannot store an empty struct)."""
        if self.leafy:
            return False
        if any(not c.is_empty() for c in self.children.values()):
            self.leafy = True
            return False
        return True

    def count(self) -> int:
        return 1 + sum(c.count() for c in self.children.values())


def new_root(resource_type: str) -> Node:
    root = Node("struct", False, resource_type if model.is_resource_type(resource_type) else None, (resource_type,))
    root.add("resourceType")
    if root.fhir_type is None:  # a type R4 does not know: keep resourceType, everything else is unmapped
        root.children["resourceType"] = Node("string", False)
    return root


def _load_into(parent: Node, fields: Mapping[str, Any], where: str) -> None:
    for name, spec in fields.items():
        expected = parent.child_for(name) if name != "resourceType" or parent.fhir_type else Node("string", False)
        path = f"{where}.{name}"
        if expected is None:
            raise SchemaError(f"schema record field {path} is not an element of FHIR R4; remove it from the record")
        is_list = isinstance(spec, list)
        inner = spec[0] if is_list and len(spec) == 1 else spec
        if is_list and len(spec) != 1:
            raise SchemaError(f"schema record field {path}: a list is written as a one-element array")
        kind = "struct" if isinstance(inner, dict) else inner
        if kind != expected.kind or is_list != expected.is_list:
            want = expected.to_json() if expected.kind != "struct" else ("[{...}]" if expected.is_list else "{...}")
            raise SchemaError(
                f"schema record field {path} is {spec!r} but FHIR R4 makes it {want!r}; "
                "types are fixed by FHIR R4, fix or delete the record"
            )
        parent.children[name] = expected
        if kind == "struct":
            _load_into(expected, inner, path)


class SchemaRecord:
    """The schema of one resource type: the tree, the decimal mode, and whether it may grow."""

    def __init__(self, resource_type: str, decimal: str = "float64", pinned: bool = False, root: Node | None = None):
        if decimal not in DECIMAL_MODES:
            raise SchemaError(f"decimal must be one of {DECIMAL_MODES}, not {decimal!r}")
        self.resource_type = resource_type
        self.decimal = decimal
        self.pinned = pinned
        self.root = root or new_root(resource_type)
        self.version = 0  # bumped on every growth; parts remember the version they were written with

    @classmethod
    def from_json(cls, value: Mapping[str, Any], *, pinned: bool = False) -> SchemaRecord:
        if not isinstance(value, Mapping) or "resourceType" not in value or "fields" not in value:
            raise SchemaError(
                'a schema record is a JSON object {"format": ..., "resourceType": ..., "decimal": ..., "fields": {...}}'
            )
        rtype = str(value["resourceType"])
        record = cls(rtype, str(value.get("decimal", "float64")), pinned)
        if not isinstance(value["fields"], Mapping):
            raise SchemaError(f"schema record of {rtype}: 'fields' must be an object")
        _load_into(record.root, value["fields"], rtype)
        return record

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "fhirVersion": model.fhir_version(),
            "resourceType": self.resource_type,
            "decimal": self.decimal,
            "unmappedColumn": UNMAPPED_COLUMN,
            "fields": self.root.to_json(),
        }

    def merge(self, other: SchemaRecord) -> None:
        """Grow this record by every field of ``other`` (same type and decimal mode)."""
        if other.resource_type != self.resource_type:
            raise SchemaError(f"cannot merge a {other.resource_type} record into a {self.resource_type} record")
        if other.decimal != self.decimal:
            raise SchemaError(
                f"{self.resource_type}: the stored schema keeps decimals as {other.decimal} but this run asks for "
                f"{self.decimal}; a column's type never changes, so write to another destination"
            )
        if _merge(self.root, other.root):
            self.version += 1


def _merge(dst: Node, src: Node) -> bool:
    grew = False
    for name, child in src.children.items():
        mine = dst.children.get(name)
        if mine is None:
            dst.children[name] = _copy(child)
            grew = True
        elif child.kind == "struct":
            grew = _merge(mine, child) or grew
    return grew


def _copy(node: Node) -> Node:
    out = Node(node.kind, node.is_list, node.fhir_type, node.lineage)
    out.children = {k: _copy(v) for k, v in node.children.items()}
    return out
