"""A ViewDefinition checked and compiled once: the plan every resource then runs through."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_smart.views.errors import ViewError
from airflow_provider_smart.views.fhirpath import Compiled, compile_expression

_COLUMN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_SELECT_KEYS = frozenset({"column", "select", "unionAll", "forEach", "forEachOrNull", "repeat"})


@dataclass(frozen=True)
class ColumnSpec:
    """One output column: its name, its declared FHIR type (or None) and whether it holds a list."""

    name: str
    type: str | None
    collection: bool
    path: str


@dataclass
class SelectPlan:
    where: str
    columns: list[tuple[ColumnSpec, Compiled]] = field(default_factory=list)
    for_each: Compiled | None = None
    for_each_text: str | None = None  # the forEach/forEachOrNull path as written (the SQL compiler reads it)
    or_null: bool = False
    repeat: list[Compiled] | None = None
    selects: list[SelectPlan] = field(default_factory=list)
    union: list[SelectPlan] = field(default_factory=list)
    specs: list[ColumnSpec] = field(default_factory=list)  # every column this select yields, in order


@dataclass
class ViewPlan:
    name: str
    resource: str
    constants: dict[str, list[Any]]
    where: list[tuple[str, Compiled]]
    root: SelectPlan
    columns: list[ColumnSpec]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def _constant_value(entry: Any, where: str) -> tuple[str, Any]:
    if not isinstance(entry, Mapping):
        raise ViewError(f"{where}: a constant is an object with 'name' and one 'value[x]', got {entry!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not _COLUMN_NAME.match(name):
        raise ViewError(f"{where}: a constant needs a 'name' made of letters, digits and '_', got {name!r}")
    value_keys = [k for k in entry if k.startswith("value") and len(k) > 5 and k[5].isupper()]
    if len(value_keys) != 1:
        raise ViewError(
            f"{where} (%{name}): give exactly one value[x] such as valueString, valueInteger or valueDate; "
            f"found {value_keys or 'none'}"
        )
    return name, entry[value_keys[0]]


class _Builder:
    def __init__(self, constants: dict[str, list[Any]]) -> None:
        self.constants = constants

    def expression(self, text: Any, where: str) -> Compiled:
        if not isinstance(text, str):
            raise ViewError(f"{where}: a FHIRPath expression must be a string, got {type(text).__name__} {text!r}")
        try:
            return compile_expression(text, self.constants)
        except ViewError as exc:
            raise ViewError(f"{where}: {exc}") from None
        except RecursionError:
            raise ViewError(f"{where}: the expression is nested too deeply to compile; simplify it") from None

    def select(self, node: Any, where: str) -> SelectPlan:
        if not isinstance(node, Mapping):
            raise ViewError(f"{where}: a select is an object (column/select/unionAll/forEach), got {node!r}")
        unknown = set(node) - _SELECT_KEYS - {"description", "extension"}
        if unknown:
            raise ViewError(f"{where}: unknown key(s) {sorted(unknown)}; a select may hold {sorted(_SELECT_KEYS)}")
        plan = SelectPlan(where=where)
        iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in node]
        if len(iterators) > 1:
            raise ViewError(f"{where}: use only one of forEach, forEachOrNull and repeat, found {iterators}")
        if "forEach" in node:
            plan.for_each = self.expression(node["forEach"], f"{where}.forEach")
            plan.for_each_text = node["forEach"]
        elif "forEachOrNull" in node:
            plan.for_each = self.expression(node["forEachOrNull"], f"{where}.forEachOrNull")
            plan.for_each_text = node["forEachOrNull"]
            plan.or_null = True
        elif "repeat" in node:
            paths = node["repeat"]
            if not isinstance(paths, list) or not paths:
                raise ViewError(f"{where}.repeat: give a non-empty list of FHIRPath expressions, got {paths!r}")
            plan.repeat = [self.expression(p, f"{where}.repeat[{i}]") for i, p in enumerate(paths)]
        columns = node.get("column", [])
        if not isinstance(columns, list):
            raise ViewError(f"{where}.column: must be a list of columns, got {columns!r}")
        for i, column in enumerate(columns):
            spec = self.column(column, f"{where}.column[{i}]")
            plan.columns.append((spec, self.expression(spec.path, f"{where}.column[{i}].path")))
        plan.specs.extend(spec for spec, _ in plan.columns)
        for key, target in (("select", plan.selects), ("unionAll", plan.union)):
            children = node.get(key, [])
            if not isinstance(children, list):
                raise ViewError(f"{where}.{key}: must be a list of selects, got {children!r}")
            for i, child in enumerate(children):
                target.append(self.select(child, f"{where}.{key}[{i}]"))
        for child in plan.selects:
            plan.specs.extend(child.specs)
        if plan.union:
            first = [c.name for c in plan.union[0].specs]
            for i, branch in enumerate(plan.union[1:], start=1):
                names = [c.name for c in branch.specs]
                if names != first:
                    raise ViewError(
                        f"{where}.unionAll[{i}]: every branch must have the same columns in the same order; "
                        f"branch 0 has {first}, branch {i} has {names}"
                    )
            plan.specs.extend(plan.union[0].specs)
        if not plan.specs and not plan.selects and not plan.union:
            raise ViewError(f"{where}: a select needs at least one of 'column', 'select' or 'unionAll'")
        return plan

    def column(self, column: Any, where: str) -> ColumnSpec:
        if not isinstance(column, Mapping):
            raise ViewError(f"{where}: a column is an object with 'name' and 'path', got {column!r}")
        name, path = column.get("name"), column.get("path")
        if not isinstance(name, str) or not _COLUMN_NAME.match(name):
            raise ViewError(
                f"{where}: column name {name!r} must start with a letter and hold only letters, digits and '_'"
            )
        if not isinstance(path, str):
            raise ViewError(f"{where} ({name}): 'path' must be a FHIRPath string, got {path!r}")
        declared = column.get("type")
        if declared is not None and not isinstance(declared, str):
            raise ViewError(f"{where} ({name}): 'type' must be a FHIR type name such as 'string', got {declared!r}")
        collection = column.get("collection", False)
        if not isinstance(collection, bool):
            raise ViewError(f"{where} ({name}): 'collection' must be true or false, got {collection!r}")
        return ColumnSpec(name=name, type=declared, collection=collection, path=path)


def compile_view(view: Any) -> ViewPlan:
    """Check ``view`` against the ViewDefinition rules and compile its expressions.

    Raises :class:`ViewError` naming the part at fault and the fix.
    """
    if not isinstance(view, Mapping):
        raise ViewError(f"a ViewDefinition is a JSON object, got {type(view).__name__}")
    resource = view.get("resource")
    if not isinstance(resource, str) or not resource:
        raise ViewError("the ViewDefinition has no 'resource': name the FHIR resource type it reads, e.g. 'Patient'")
    select = view.get("select")
    if not isinstance(select, list) or not select:
        raise ViewError("the ViewDefinition has no 'select': give a list with at least one select of columns")
    constants: dict[str, list[Any]] = {}
    raw_constants = view.get("constant", [])
    if not isinstance(raw_constants, list):
        raise ViewError(f"'constant' must be a list, got {raw_constants!r}")
    for i, entry in enumerate(raw_constants):
        name, value = _constant_value(entry, f"constant[{i}]")
        constants[name] = [value]
    builder = _Builder(constants)
    root = builder.select({"select": select}, "view")
    wheres: list[tuple[str, Compiled]] = []
    raw_where = view.get("where", [])
    if not isinstance(raw_where, list):
        raise ViewError(f"'where' must be a list of {{'path': ...}} objects, got {raw_where!r}")
    for i, entry in enumerate(raw_where):
        path = entry.get("path") if isinstance(entry, Mapping) else None
        wheres.append((str(path), builder.expression(path, f"where[{i}].path")))
    names = [c.name for c in root.specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ViewError(f"column name(s) {duplicates} appear more than once: every column needs its own name")
    view_name = view.get("name")
    return ViewPlan(
        name=view_name if isinstance(view_name, str) and view_name else resource.lower(),
        resource=resource,
        constants=constants,
        where=wheres,
        root=root,
        columns=list(root.specs),
    )
