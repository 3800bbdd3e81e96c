"""A ViewDefinition -> one SQL query (DuckDB first; the dialect is a parameter so another can follow).

The query reads a relation ``src`` whose columns are the resource's top-level elements, typed as FHIR R4
defines them (a 0..* element is a LIST, a complex element a STRUCT): DuckDB's ``read_json`` with the
column spec :attr:`CompiledView.columns_spec` gives exactly that from NDJSON, reading only the elements the
view uses. Rows are built as the evaluator builds them: a select's own columns times each nested select,
``forEach`` over a list of foci, ``unionAll`` as a list concatenation, all as LISTs of STRUCT rows that the
outer query unnests. Values are cast to the types of the view's Parquet table (``views/arrow.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_smart.views.definition import ColumnSpec, SelectPlan, ViewPlan, compile_view
from airflow_provider_smart.views.errors import ViewError
from airflow_provider_smart.views.sql.errors import ViewCompileError
from airflow_provider_smart.views.sql.expressions import (
    LEAF_SQL,
    Expr,
    Needs,
    Scope,
    SqlExpressions,
    as_list,
    as_one,
    fresh,
    fresh_names,
    items,
    literal,
    model_elements,
    quote,
)

DIALECTS = ("duckdb",)
_INTEGERS = frozenset({"integer", "positiveInt", "unsignedInt", "integer64"})
SOURCE = "{source}"  # where the relation of resources goes in CompiledView.sql


@dataclass(frozen=True)
class CompiledView:
    plan: ViewPlan
    sql: str  # with ``{source}`` standing for the relation of resources (alias src)
    columns_spec: dict[str, str]  # top-level element -> SQL type, for read_json(columns=...)
    values: str  # "typed" (the Parquet table's types) or "json" (each value as JSON text)

    def query(self, source: str) -> str:
        return self.sql.replace(SOURCE, source)


def output_type(spec: ColumnSpec) -> str:
    """The SQL type of a column in the view's table: the same types as ``views/arrow.py``."""
    declared = spec.type or "string"
    if declared == "boolean":
        base = "BOOLEAN"
    elif declared in _INTEGERS:
        base = "BIGINT"
    elif declared == "decimal":
        base = "DOUBLE"
    elif declared == "date":
        base = "DATE"
    elif declared in ("dateTime", "instant"):
        base = "TIMESTAMPTZ"
    elif declared == "time":
        base = "TIME"
    else:
        base = "VARCHAR"
    return f"{base}[]" if spec.collection else base


def _typed(value: str, kind: str | None, spec: ColumnSpec) -> str:
    """One value (SQL of model leaf ``kind``) cast to the column's table type, refusing what would be lossy."""
    declared = spec.type or "string"
    if declared == "boolean":
        if kind != "boolean":
            raise ViewCompileError(f"column {spec.name!r}: a {kind} value declared boolean")
        return value
    if declared in _INTEGERS:
        if kind in ("int32", "int64"):
            return f"CAST({value} AS BIGINT)"
        if kind == "decimal":
            message = literal(f"column {spec.name!r} (declared {declared}): a value is not an integer")
            return f"(CASE WHEN {value} = trunc({value}) THEN CAST({value} AS BIGINT) ELSE error({message}) END)"
        raise ViewCompileError(f"column {spec.name!r}: a {kind} value declared {declared}")
    if declared == "decimal":
        if kind not in ("int32", "int64", "decimal"):
            raise ViewCompileError(f"column {spec.name!r}: a {kind} value declared decimal")
        return f"CAST({value} AS DOUBLE)"
    if declared == "date":
        _string_only(kind, spec)
        return f"CAST({_first_instant(value)} AS DATE)"
    if declared in ("dateTime", "instant"):
        _string_only(kind, spec)
        return f"CAST({_first_instant(value)} AS TIMESTAMPTZ)"
    if declared == "time":
        _string_only(kind, spec)
        return f"CAST({value} AS TIME)"
    if kind == "boolean" or kind in LEAF_SQL:
        return f"CAST({value} AS VARCHAR)"
    raise ViewCompileError(f"column {spec.name!r}: a value of type {kind} as text")


def _first_instant(value: str) -> str:
    """A partial date (``1970`` or ``1970-06``) as its first day, as ``views/arrow.py`` stores it."""
    return f"(CASE len({value}) WHEN 4 THEN {value} || '-01-01' WHEN 7 THEN {value} || '-01' ELSE {value} END)"


def _string_only(kind: str | None, spec: ColumnSpec) -> None:
    if kind != "string":
        raise ViewCompileError(f"column {spec.name!r}: a {kind} value declared {spec.type}")


class _ViewCompiler:
    def __init__(self, plan: ViewPlan, values: str) -> None:
        self.plan = plan
        self.values = values
        self.needs = Needs(plan.resource)
        self.root = Expr("src", False, plan.resource, ())
        self.uses_row_index = any("rowIndex" in c.path for c in plan.columns)

    def scope(self, focus: Expr, row_index: str = "0") -> Scope:
        return Scope(self.root, focus, self.plan.constants, self.needs, row_index)

    def column(self, spec: ColumnSpec, scope: Scope, where: str) -> str:
        try:
            e = SqlExpressions(spec.path).compile(scope)
        except ViewCompileError as exc:
            raise ViewCompileError(f"{where} ({spec.name}): {exc}") from None
        if e.type not in LEAF_SQL and e.sql != "NULL":
            raise ViewError(
                f"{where} ({spec.name}): the path selects a complex element ({e.type}); select a primitive child "
                "such as '.value' or '.code'"
            )
        if spec.collection:
            x = fresh()
            inner = self._value(x, e.type, spec)
            return f"list_transform({as_list(e)}, lambda {x}: {inner})"
        if e.sql == "NULL":
            return f"CAST(NULL AS {self._sql_type(spec)})"
        if not e.many:
            return self._value(e.sql, e.type, spec)
        # The evaluator's message, with the count DuckDB computes.
        head = literal(f"column {spec.name!r} got ")
        tail = literal(
            ' values for one row; set "collection": true on the column to keep them as a list, '
            "or narrow the path (e.g. with first() or where())"
        )
        one = f"(CASE WHEN len({e.sql}) > 1 THEN error(concat({head}, len({e.sql}), {tail})) ELSE ({e.sql})[1] END)"
        return self._value(one, e.type, spec)

    def _value(self, value: str, kind: str | None, spec: ColumnSpec) -> str:
        if self.values == "json":
            return f"CAST(to_json({value}) AS VARCHAR)"
        return _typed(value, kind, spec)

    def _sql_type(self, spec: ColumnSpec) -> str:
        return "VARCHAR" if self.values == "json" else output_type(spec)

    # -- rows -----------------------------------------------------------------------------------------
    @staticmethod
    def one_row(select: SelectPlan) -> bool:
        """Whether a select yields exactly one row per focus (its columns can then be plain expressions)."""
        if select.for_each is not None or select.repeat is not None or select.union:
            return False
        return all(_ViewCompiler.one_row(child) for child in select.selects)

    def own_columns(self, select: SelectPlan, scope: Scope) -> list[tuple[str, str]]:
        return [
            (spec.name, self.column(spec, scope, f"{select.where}.column[{i}]"))
            for i, (spec, _) in enumerate(select.columns)
        ]

    def flat_columns(self, select: SelectPlan, scope: Scope) -> list[tuple[str, str]]:
        """Columns of a one-row select tree, in order."""
        out = self.own_columns(select, scope)
        for child in select.selects:
            out.extend(self.flat_columns(child, scope))
        return out

    def rows(self, select: SelectPlan, scope: Scope) -> str:
        """SQL for a LIST of STRUCT rows: every row ``select`` yields at ``scope.focus``."""
        if select.repeat is not None:
            raise ViewCompileError(f"{select.where}: 'repeat' cannot be compiled to SQL")
        if select.for_each is None:
            return self._rows_at(select, scope)
        assert select.for_each is not None
        key = "forEachOrNull" if select.or_null else "forEach"
        text = select.for_each_text
        assert text is not None
        try:
            foci = SqlExpressions(text).compile(scope)
        except ViewCompileError as exc:
            raise ViewCompileError(f"{select.where}.{key}: {exc}") from None
        if foci.type is None:
            raise ViewCompileError(f"{select.where}.{key}: iterating over values of unknown type cannot be compiled")
        f, i = fresh("f"), fresh("i")
        focus = Expr(f, False, foci.type, foci.path)
        per_focus = self._rows_at(select, scope.at(focus, f"({i} - 1)"))
        if not select.or_null:
            return f"flatten(list_transform({as_list(foci)}, lambda {f}, {i}: {per_focus}))"
        # forEachOrNull over nothing: one row, its own columns read from an empty focus, the rest NULL.
        own = self.own_columns(select, scope.at(focus, "0"))
        fields = [f"{quote(n)} := {c}" for n, c in own]
        fields.extend(f"{quote(s.name)} := CAST(NULL AS {self._sql_type(s)})" for s in select.specs[len(own) :])
        null_row = f"struct_pack({', '.join(fields)})"
        padded = f"(CASE WHEN len({as_list(foci)}) = 0 THEN [NULL] ELSE {as_list(foci)} END)"
        return (
            f"flatten(list_transform({padded}, lambda {f}, {i}: "
            f"CASE WHEN {f} IS NULL THEN [{null_row}] ELSE {per_focus} END))"
        )

    def _rows_at(self, select: SelectPlan, scope: Scope) -> str:
        own = self.own_columns(select, scope)
        names = [n for n, _ in own]
        current = f"[struct_pack({', '.join(f'{quote(n)} := {c}' for n, c in own)})]" if own else None
        parts: list[tuple[str, list[str]]] = []
        for child in select.selects:
            parts.append((self.rows(child, scope), [s.name for s in child.specs]))
        if select.union:
            branches = [self.rows(branch, scope) for branch in select.union]
            parts.append(
                (
                    f"list_concat({', '.join(branches)})" if len(branches) > 1 else branches[0],
                    [s.name for s in select.union[0].specs],
                )
            )
        for rows, child_names in parts:
            if current is None:
                current, names = rows, child_names
                continue
            a, b = fresh("a"), fresh("b")
            fields = [f"{quote(n)} := {a}.{quote(n)}" for n in names] + [
                f"{quote(n)} := {b}.{quote(n)}" for n in child_names
            ]
            current = (
                f"flatten(list_transform({current}, lambda {a}: "
                f"list_transform({rows}, lambda {b}: struct_pack({', '.join(fields)}))))"
            )
            names = names + child_names
        assert current is not None
        return current

    # -- the query ------------------------------------------------------------------------------------
    def simple_iteration(self, select: SelectPlan) -> bool:
        """A forEach(OrNull) whose body is one row per focus: a lateral join of the source, not a row list."""
        if select.for_each is None or select.repeat is not None or select.union or self.uses_row_index:
            return False
        if select.or_null and select.selects:
            return False  # the evaluator's null row leaves nested selects' columns NULL, whatever their path
        return all(self.one_row(child) for child in select.selects)

    def join(self, select: SelectPlan, scope: Scope) -> tuple[str, Scope]:
        """The lateral join of a simple iteration and the scope of its body (the focus is the join's column)."""
        key = "forEachOrNull" if select.or_null else "forEach"
        assert select.for_each_text is not None
        try:
            foci = SqlExpressions(select.for_each_text).compile(scope)
        except ViewCompileError as exc:
            raise ViewCompileError(f"{select.where}.{key}: {exc}") from None
        if foci.type is None:
            raise ViewCompileError(f"{select.where}.{key}: iterating over values of unknown type cannot be compiled")
        t, f = fresh("t"), fresh("f")
        kind = "LEFT JOIN" if select.or_null else "CROSS JOIN"
        on = " ON true" if select.or_null else ""
        # unnest of a NULL list gives no row (a LEFT JOIN's one NULL row), as an empty one.
        join = f"{kind} unnest({items(foci)}) AS {t}({f}){on}"
        return join, scope.at(Expr(f"{t}.{f}", False, foci.type, foci.path))

    def query(self) -> str:
        """One SELECT per unionAll branch of the root (UNION ALL): DuckDB unnests lists of structs far slower
        than it joins (measured 4x on the observations view), so iterations become lateral joins where the
        shape allows, and lists of STRUCT rows (:meth:`rows`) only where it does not."""
        scope = self.scope(self.root)
        # Each branch: its lateral joins and its columns by name.
        branches: list[tuple[list[str], dict[str, str]]] = [([], {})]
        for child in self.plan.root.selects:
            if self.one_row(child):
                for _, columns in branches:
                    columns.update(self.flat_columns(child, scope))
            elif self.simple_iteration(child):
                for joins, columns in branches:
                    join, inner = self.join(child, scope)
                    joins.append(join)
                    columns.update(self.flat_columns(child, inner))
            elif self.union_of_simple(child):
                grown: list[tuple[list[str], dict[str, str]]] = []
                for joins, columns in branches:
                    for branch in child.union:
                        own = dict(columns)
                        own.update(self.flat_columns(_without_union(child), scope))
                        added = list(joins)
                        if self.simple_iteration(branch):
                            join, inner = self.join(branch, scope)
                            added.append(join)
                            own.update(self.flat_columns(branch, inner))
                        else:
                            own.update(self.flat_columns(branch, scope))
                        grown.append((added, own))
                branches = grown
            else:
                for joins, columns in branches:
                    alias = fresh("r")
                    joins.append(f"CROSS JOIN unnest({self.rows(child, scope)}) AS {alias}({alias})")
                    columns.update({s.name: f"{alias}.{quote(s.name)}" for s in child.specs})
        wheres = [f"src.{quote('resourceType')} = {literal(self.plan.resource)}"]
        self.needs.add("resourceType", "string", False)
        for i, (text, _) in enumerate(self.plan.where):
            try:
                e = SqlExpressions(text).compile(scope)
            except ViewCompileError as exc:
                raise ViewCompileError(f"where[{i}]: {exc}") from None
            if (e.type in LEAF_SQL and e.type != "boolean") or model_type(e.type):
                raise ViewError(
                    f"where path {text!r} must give true or false, not {e.type} values; "
                    "compare or test it, e.g. 'name.family.exists()'"
                )
            if e.type != "boolean":
                raise ViewCompileError(f"where[{i}]: a path that does not give a boolean cannot be compiled to SQL")
            wheres.append(f"coalesce({as_one(e, f'where path {text!r}')}, false)")
        names = self.plan.column_names
        selects = []
        shared = len(branches) > 1
        for joins, columns in branches:
            listed = ",\n  ".join(f"{columns[n]} AS {quote(n)}" for n in names)
            selects.append(
                f"SELECT\n  {listed}\nFROM {'src' if shared else SOURCE + ' AS src'}\n"
                + "".join(f"{j}\n" for j in joins)
                + ("" if shared else f"WHERE {' AND '.join(wheres)}")
            )
        if not shared:
            return selects[0]
        # Several branches read the resources once: parsing them is most of the work.
        return (
            f"WITH src AS MATERIALIZED (SELECT * FROM {SOURCE} AS src WHERE {' AND '.join(wheres)})\n"  # noqa: S608
            + "\nUNION ALL\n".join(selects)
        )

    def union_of_simple(self, select: SelectPlan) -> bool:
        if select.for_each is not None or select.repeat is not None or not select.union:
            return False
        if not all(self.one_row(child) for child in select.selects):
            return False
        return all(self.one_row(b) or self.simple_iteration(b) for b in select.union)

    def columns_spec(self) -> dict[str, str]:
        spec: dict[str, str] = {}
        for name, child in self.needs.children.items():
            base = LEAF_SQL.get(child, "JSON") if isinstance(child, str) else child.sql_type()
            spec[name] = f"{base}{'[]' if self.needs.arrays[name] else ''}"
        return spec


def model_type(name: str | None) -> bool:
    """Whether ``name`` is a complex type or resource of the R4 model (not a primitive)."""
    return name is not None and name not in LEAF_SQL and bool(model_elements(name))


def _without_union(select: SelectPlan) -> SelectPlan:
    """The select's own columns and nested selects, without its unionAll (the branches add their own)."""
    return SelectPlan(where=select.where, columns=select.columns, selects=select.selects)


def compile_sql(view: Mapping[str, Any] | ViewPlan, *, dialect: str = "duckdb", values: str = "typed") -> CompiledView:
    """Compile a ViewDefinition to one SQL query, or raise :class:`ViewCompileError` naming what cannot be.

    :param view: a ViewDefinition (checked as the evaluator checks it) or its compiled plan.
    :param dialect: the SQL dialect; only ``"duckdb"`` so far.
    :param values: ``"typed"`` casts each column to its table type (``views/arrow.py``); ``"json"`` gives
        each value as JSON text, as the evaluator's plain values (used by the conformance suite).
    """
    if dialect not in DIALECTS:
        raise ViewCompileError(f"SQL dialect {dialect!r} is not supported; choose one of {', '.join(DIALECTS)}")
    if values not in ("typed", "json"):
        raise ValueError(f"values must be 'typed' or 'json', got {values!r}")
    plan = view if isinstance(view, ViewPlan) else compile_view(view)
    with fresh_names():
        compiler = _ViewCompiler(plan, values)
        sql = compiler.query()
        return CompiledView(plan=plan, sql=sql, columns_spec=compiler.columns_spec(), values=values)
