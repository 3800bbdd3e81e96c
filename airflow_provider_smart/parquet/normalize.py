"""The exact path: fit one parsed resource to its schema record in Python.

Every value either fits its FHIR R4 type and goes to its typed column, or is recorded as a patch
``[path, value]`` (path = keys and list indexes from the resource root) for the unmapped-JSON column.
Nothing is dropped. The fast path (the Arrow JSON parser) is used whenever it gives the same result;
this path handles the rest: explicit nulls, non-R4 fields, wrong JSON types, deep nesting, contained
resources, and the exact-decimal option.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from airflow_provider_smart.parquet.schema import UNMAPPED_COLUMN, Node

_BAD = object()
# A path is a chain ``(parent_chain, step)`` built in O(1) per level; it is flattened only for a patch.
Path = tuple[Any, ...]


def _flat(chain: Path, *steps: str | int) -> list[str | int]:
    out: list[str | int] = list(reversed(steps))
    while chain:
        chain, step = chain
        out.append(step)
    out.reverse()
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot store a {type(value).__name__} as JSON")


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


class Normalizer:
    """Turns resources into rows of one schema record (growing it unless pinned)."""

    def __init__(self, root: Node, *, grow: bool, exact_decimal: bool) -> None:
        self.root = root
        self.grow = grow
        self.exact = exact_decimal
        self.grew = False

    def row(self, resource: dict[str, Any]) -> dict[str, Any]:
        patches: list[list[Any]] = []
        out = self._struct(resource, self.root, (), patches)
        out[UNMAPPED_COLUMN] = dumps(patches) if patches else None
        return out

    def _struct(self, obj: dict[str, Any], node: Node, path: Path, patches: list[list[Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        children = node.children
        for key, value in obj.items():
            child = children.get(key)
            if child is None and self.grow:
                child = node.add(key)
                if child is not None:
                    self.grew = True
            if child is None:
                patches.append([_flat(path, key), value])
                continue
            if child.is_list:
                if type(value) is not list:
                    patches.append([_flat(path, key), value])
                    continue
                mark = len(patches)
                items: list[Any] = []
                for i, item in enumerate(value):
                    if item is None:
                        items.append(None)
                        continue
                    conv = self._value(item, child, ((path, key), i), patches)
                    if conv is _BAD:
                        patches.append([_flat(path, key, i), item])
                        conv = None
                    items.append(conv)
                if child.kind == "struct" and child.is_empty():
                    del patches[mark:]  # no column for it yet: keep the whole list as JSON
                    patches.append([_flat(path, key), value])
                    continue
                out[key] = items
            else:
                conv = self._value(value, child, (path, key), patches) if value is not None else _BAD
                if conv is _BAD:
                    patches.append([_flat(path, key), value])
                else:
                    out[key] = conv
        return out

    def _value(self, value: Any, node: Node, path: Path, patches: list[list[Any]]) -> Any:
        kind = node.kind
        vtype = type(value)
        if kind == "string":
            return value if vtype is str else _BAD
        if kind == "struct":
            if vtype is not dict:
                return _BAD
            mark = len(patches)
            out = self._struct(value, node, path, patches)
            if not out and node.is_empty():
                del patches[mark:]  # no column for it yet: the caller keeps the whole value as JSON
                return _BAD
            return out
        if kind == "boolean":
            return value if vtype is bool else _BAD
        if kind == "int32":
            return value if vtype is int and -(2**31) <= value < 2**31 else _BAD
        if kind == "int64":
            return value if vtype is int and -(2**63) <= value < 2**63 else _BAD
        if kind == "decimal":
            if self.exact:
                if vtype is Decimal and value.is_finite():
                    return str(value)
                return str(value) if vtype is int else _BAD
            if vtype is float:
                return value if math.isfinite(value) else _BAD
            if vtype is int:
                try:
                    return float(value)
                except OverflowError:
                    return _BAD
            return _BAD
        if kind == "json":
            return dumps(value)
        raise AssertionError(f"unknown kind {kind}")
