"""FHIRPath trees -> SQL expressions over typed FHIR structs (the R4 model says each element's cardinality).

An :class:`Expr` is either one value (``many=False``: a struct, a primitive or NULL for empty) or a list
(``many=True``: a LIST, NULL or ``[]`` for empty). The FHIR type of its items is carried along so that
every navigation step is resolved against the R4 model at compile time: a 0..1 element is a field
access, a 0..* element a list, a choice element read through ``ofType()`` its typed key. Whatever the
compiler cannot express exactly raises :class:`ViewCompileError` naming it, so a compiled view never
computes something the Python evaluator would not.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_smart.parquet import model
from airflow_provider_smart.views.errors import ViewError
from airflow_provider_smart.views.fhirpath.parser import Node, parse
from airflow_provider_smart.views.sql.boundaries import boundary_sql
from airflow_provider_smart.views.sql.errors import ViewCompileError

# Leaf kinds of the R4 model -> the SQL type an NDJSON reader gives them.
LEAF_SQL = {
    "string": "VARCHAR",
    "boolean": "BOOLEAN",
    "int32": "BIGINT",
    "int64": "BIGINT",
    "decimal": "DOUBLE",
}
_NUMERIC = frozenset({"int32", "int64", "decimal", "integer", "number"})
# FHIRPath type names accepted by ofType() on a choice element, by the model's leaf kind of that key.
_PRIMITIVE_KIND = {
    "boolean": "boolean",
    "integer": "int32",
    "positiveInt": "int32",
    "unsignedInt": "int32",
    "integer64": "int64",
    "decimal": "decimal",
}


@dataclass(frozen=True)
class Expr:
    sql: str
    many: bool
    type: str | None  # FHIR complex type or model leaf kind of the items; None when unknown
    path: tuple[str, ...] | None = None  # the keys from the resource root, when the items are elements of it


@dataclass
class Needs:
    """The elements a view reads, as a tree per FHIR type: the NDJSON reader's column spec comes from it."""

    type: str
    children: dict[str, Needs | str] = field(default_factory=dict)  # name -> subtree or leaf kind
    arrays: dict[str, bool] = field(default_factory=dict)

    def add(self, name: str, kind: str, is_array: bool) -> Needs | None:
        self.arrays[name] = is_array
        if kind in model.LEAF_KINDS:
            self.children[name] = kind
            return None
        child = self.children.get(name)
        if not isinstance(child, Needs):
            child = Needs(kind)
            self.children[name] = child
        return child

    def sql_type(self) -> str:
        if not self.children:
            # A complex element read only to test presence: any one field keeps list lengths and NULLs.
            first = next(iter(model_elements(self.type)), None)
            if first is None:
                raise ViewCompileError(f"type {self.type} has no elements to read")
            kind, is_array = model.element(self.type, first) or ("string", False)
            self.add(first, kind if kind in model.LEAF_KINDS else "json", is_array)
        parts = []
        for name, child in self.children.items():
            base = LEAF_SQL.get(child, "JSON") if isinstance(child, str) else child.sql_type()
            parts.append(f"{quote(name)} {base}{'[]' if self.arrays[name] else ''}")
        return f"STRUCT({', '.join(parts)})"


def model_elements(type_name: str) -> list[str]:
    return [n for n in model.element_names(type_name) if not n.startswith("_")]


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


# Lambda and alias names count from 0 in each compilation (see :func:`fresh_names`): the SQL of a view is
# the same text whatever was compiled before it, and threads compiling at once never share a counter.
_names: ContextVar[Iterator[int]] = ContextVar("sql_names")


@contextmanager
def fresh_names() -> Iterator[None]:
    token = _names.set(itertools.count())
    try:
        yield
    finally:
        _names.reset(token)


def fresh(prefix: str = "x") -> str:
    try:
        counter = _names.get()
    except LookupError:
        counter = itertools.count()
        _names.set(counter)
    return f"{prefix}{next(counter)}"


class Scope:
    """What an expression sees: its input ``focus`` (as an Expr), the resource root, constants, %rowIndex."""

    def __init__(
        self,
        root: Expr,
        focus: Expr,
        constants: Mapping[str, list[Any]],
        needs: Needs,
        row_index: str = "0",
    ) -> None:
        self.root = root
        self.focus = focus
        self.constants = constants
        self.needs = needs
        self.row_index = row_index

    def at(self, focus: Expr, row_index: str | None = None) -> Scope:
        return Scope(self.root, focus, self.constants, self.needs, self.row_index if row_index is None else row_index)


def as_list(e: Expr) -> str:
    if e.many:
        return f"coalesce({e.sql}, [])"
    x = fresh()
    return f"list_filter([{e.sql}], lambda {x}: {x} IS NOT NULL)"


def items(e: Expr) -> str:
    """A list, NULL meaning empty: for list functions, which give NULL for NULL (``coalesce`` copies lists,
    measured at half the cost of the observations view, so only what must give ``[]`` uses :func:`as_list`)."""
    return e.sql if e.many else as_list(e)


def as_one(e: Expr, what: str) -> str:
    """One value (NULL when empty); more than one is a run-time error, as in the evaluator."""
    if not e.many:
        return e.sql
    message = literal(f"{what} expects one value but got more than one")
    return f"(CASE WHEN len({e.sql}) > 1 THEN error({message}) ELSE ({e.sql})[1] END)"


class SqlExpressions:
    """Compiles one FHIRPath text against a scope; ``needs`` collects what the reader must supply."""

    def __init__(self, text: str) -> None:
        self.text = text

    def refuse(self, what: str) -> ViewCompileError:
        return ViewCompileError(f"FHIRPath {self.text!r}: {what} cannot be compiled to SQL")

    def compile(self, scope: Scope) -> Expr:
        return self.node(parse(self.text), scope)

    def node(self, node: Node, scope: Scope) -> Expr:
        method = getattr(self, "n_" + node.kind, None)
        if method is None:
            raise self.refuse(f"a {node.kind} expression")
        result: Expr = method(node, scope)
        return result

    # -- terms ------------------------------------------------------------------------------------------
    def n_empty(self, node: Node, scope: Scope) -> Expr:
        return Expr("NULL", False, None)

    def n_lit(self, node: Node, scope: Scope) -> Expr:
        value = node.value
        if isinstance(value, bool):
            return Expr(literal(value), False, "boolean")
        if isinstance(value, int):
            return Expr(literal(value), False, "int64")
        if isinstance(value, float):
            return Expr(f"CAST({value!r} AS DOUBLE)", False, "decimal")
        return Expr(literal(value), False, "string")

    def n_ext(self, node: Node, scope: Scope) -> Expr:
        if node.name == "rowIndex":
            return Expr(scope.row_index, False, "int64")
        if node.name in ("resource", "rootResource", "context"):
            return scope.root
        if node.name not in scope.constants:
            raise ViewError(
                f"FHIRPath {self.text!r}: %{node.name} is not defined: add it to the view's 'constant' list"
            )
        value = scope.constants[node.name][0]
        if isinstance(value, (dict, list)):
            raise self.refuse(f"the complex constant %{node.name}")
        return self.n_lit(Node("lit", value=value), scope)

    def n_var(self, node: Node, scope: Scope) -> Expr:
        if node.name == "this":
            return scope.focus
        raise self.refuse(f"${node.name}")

    # -- navigation -------------------------------------------------------------------------------------
    def n_member(self, node: Node, scope: Scope) -> Expr:
        if node.base is None:
            if node.name == scope.root.type and scope.focus is scope.root:
                return scope.root
            return self.navigate(scope.focus, node.name, scope)
        return self.navigate(self.node(node.base, scope), node.name, scope)

    def navigate(self, base: Expr, name: str, scope: Scope, key: str | None = None) -> Expr:
        """``base.name`` (``key`` is the JSON key to read, e.g. ``valueQuantity`` for ``value`` of Quantity)."""
        key = key or name
        if base.type is None or base.type in model.LEAF_KINDS or base.type in ("number", "bool"):
            raise self.refuse(f"'.{name}' on a value of unknown or primitive type")
        spec = model.element(base.type, key)
        if spec is None:
            if any(k.startswith(name) and k[len(name) : len(name) + 1].isupper() for k in model_elements(base.type)):
                raise self.refuse(f"'{name}' (a choice element) without ofType(); write {name}.ofType(<type>)")
            raise self.refuse(f"'{name}', which FHIR R4 {base.type} does not define,")
        kind, is_array = spec
        self._need(base, key, kind, is_array, scope)
        path = (*base.path, key) if base.path is not None else None
        if base.path == ():  # the resource root: a column of the source
            return Expr(f"src.{quote(key)}", is_array, kind, path)
        if not base.many:
            return Expr(f"({base.sql}).{quote(key)}", is_array, kind, path)
        x = fresh()
        mapped = f"list_transform({base.sql}, lambda {x}: {x}.{quote(key)})"
        if is_array:
            mapped = f"flatten({mapped})"
        return Expr(f"list_filter({mapped}, lambda {x}: {x} IS NOT NULL)", True, kind, path)

    def _need(self, base: Expr, key: str, kind: str, is_array: bool, scope: Scope) -> None:
        """Record that the reader must supply ``key`` below ``base`` (by its path from the resource root)."""
        if base.path is None:
            raise self.refuse(f"'.{key}' on a computed value")
        tree = scope.needs
        for name in base.path:
            child = tree.children.get(name)
            assert isinstance(child, Needs)
            tree = child
        tree.add(key, kind, is_array)

    def n_index(self, node: Node, scope: Scope) -> Expr:
        assert node.base is not None
        base = self.node(node.base, scope)
        index = self.node(node.args[0], scope)
        if index.type not in ("int64", "int32"):
            raise self.refuse("an indexer that is not an integer")
        return Expr(f"({items(base)})[({as_one(index, 'an indexer')}) + 1]", False, base.type, base.path)

    # -- functions --------------------------------------------------------------------------------------
    def n_call(self, node: Node, scope: Scope) -> Expr:
        handler = getattr(self, "f_" + node.name, None)
        if handler is None:
            raise self.refuse(f"function {node.name}()")
        if node.name == "ofType":  # reads the typed key of its base element, so compiles the base itself
            return self.f_ofType(node, scope.focus, scope)
        base = self.node(node.base, scope) if node.base is not None else scope.focus
        result: Expr = handler(node, base, scope)
        return result

    def _arity(self, node: Node, low: int, high: int) -> None:
        if not low <= len(node.args) <= high:
            raise ViewError(f"FHIRPath {self.text!r}: {node.name}() takes {low} to {high} argument(s)")

    def f_ofType(self, node: Node, base: Expr, scope: Scope) -> Expr:
        self._arity(node, 1, 1)
        arg = node.args[0]
        if arg.kind != "member" or arg.base is not None:
            raise ViewError(f"FHIRPath {self.text!r}: ofType() takes one type name, e.g. ofType(Quantity)")
        type_name = arg.name
        source = node.base
        if source is None or source.kind != "member":
            raise self.refuse("ofType() on anything but an element (e.g. value.ofType(Quantity))")
        parent = self.node(source.base, scope) if source.base is not None else scope.focus
        if parent.path == () and source.base is None and source.name == scope.root.type:
            raise self.refuse("ofType() on the resource")
        key = source.name + type_name[:1].upper() + type_name[1:]
        if parent.type and model.element(parent.type, key) is not None:
            result = self.navigate(parent, source.name, scope, key=key)
            wanted = _PRIMITIVE_KIND.get(type_name)
            if wanted is not None and result.type != wanted and result.type in LEAF_SQL:
                raise self.refuse(f"ofType({type_name}) on {key}")
            return result
        plain = model.element(parent.type, source.name) if parent.type else None
        if plain is not None and plain[0] == type_name:
            return self.navigate(parent, source.name, scope)
        if plain is None and parent.type and model.element(parent.type, source.name) is None:
            choices = [k for k in model_elements(parent.type) if k.startswith(source.name)]
            if choices:
                return Expr("NULL", False, None)  # a choice element never of that type: always empty
        raise self.refuse(f"{source.name}.ofType({type_name})")

    def f_first(self, node: Node, base: Expr, scope: Scope) -> Expr:
        self._arity(node, 0, 0)
        return Expr(f"({base.sql})[1]", False, base.type, base.path) if base.many else base

    def f_last(self, node: Node, base: Expr, scope: Scope) -> Expr:
        self._arity(node, 0, 0)
        return Expr(f"({base.sql})[-1]", False, base.type, base.path) if base.many else base

    def f_exists(self, node: Node, base: Expr, scope: Scope) -> Expr:
        self._arity(node, 0, 1)
        if node.args:
            base = self._filter(node.args[0], base, scope)
        if base.many:
            return Expr(f"(coalesce(len({base.sql}), 0) > 0)", False, "boolean")
        return Expr(f"(({base.sql}) IS NOT NULL)", False, "boolean")

    def f_empty(self, node: Node, base: Expr, scope: Scope) -> Expr:
        self._arity(node, 0, 0)
        if base.many:
            return Expr(f"(coalesce(len({base.sql}), 0) = 0)", False, "boolean")
        return Expr(f"(({base.sql}) IS NULL)", False, "boolean")

    def f_count(self, node: Node, base: Expr, scope: Scope) -> Expr:
        self._arity(node, 0, 0)
        if base.many:
            return Expr(f"coalesce(len({base.sql}), 0)", False, "int64")
        return Expr(f"(CASE WHEN ({base.sql}) IS NULL THEN 0 ELSE 1 END)", False, "int64")

    def f_not(self, node: Node, base: Expr, scope: Scope) -> Expr:
        self._arity(node, 0, 0)
        return Expr(f"(NOT {self.boolean(base, 'not()')})", False, "boolean")

    def f_where(self, node: Node, base: Expr, scope: Scope) -> Expr:
        self._arity(node, 1, 1)
        return self._filter(node.args[0], base, scope)

    def _filter(self, criteria: Node, base: Expr, scope: Scope) -> Expr:
        x = fresh()
        item = Expr(x, False, base.type, base.path)
        if base.path == ():  # where() on the resource: a marker that is present when the test holds
            test = self.boolean(self.node(criteria, scope.at(base)), "where()")
            return Expr(f"(CASE WHEN coalesce({test}, false) THEN 1 END)", False, None, None)
        test = self.boolean(self.node(criteria, scope.at(item)), "where()")
        return Expr(f"list_filter({items(base)}, lambda {x}: coalesce({test}, false))", True, base.type, base.path)

    def f_lowBoundary(self, node: Node, base: Expr, scope: Scope) -> Expr:
        return self._boundary(node, base, high=False)

    def f_highBoundary(self, node: Node, base: Expr, scope: Scope) -> Expr:
        return self._boundary(node, base, high=True)

    def _boundary(self, node: Node, base: Expr, high: bool) -> Expr:
        self._arity(node, 0, 1)
        if node.args:
            raise self.refuse(f"{node.name}() with a precision")
        if base.type in _NUMERIC:
            raise self.refuse(f"{node.name}() of a number (its digits as written decide it; DuckDB reads 1 as 1.0)")
        if base.type != "string":
            raise self.refuse(f"{node.name}() of a value that is not a date, dateTime or time")
        # As in the evaluator: x.ofType(dateTime).lowBoundary() says whether a date-like text is a dateTime.
        source = node.base
        hint = None
        if source is not None and source.kind == "call" and source.name == "ofType" and source.args:
            hint = source.args[0].name
        return Expr(boundary_sql(as_one(base, f"{node.name}()"), high, hint), False, "string")

    def f_join(self, node: Node, base: Expr, scope: Scope) -> Expr:
        self._arity(node, 0, 1)
        separator = "''"
        if node.args:
            arg = self.node(node.args[0], scope)
            if arg.type != "string" or arg.many:
                raise self.refuse("join() with a separator that is not a string literal or constant")
            separator = arg.sql
        if base.type != "string":
            raise self.refuse("join() over values that are not strings")
        return Expr(f"array_to_string({as_list(base)}, {separator})", False, "string")

    def f_extension(self, node: Node, base: Expr, scope: Scope) -> Expr:
        self._arity(node, 1, 1)
        url = self.node(node.args[0], scope)
        if url.type != "string" or url.many:
            raise self.refuse("extension() with a url that is not a string literal or constant")
        extensions = self.navigate(base, "extension", scope)
        x = fresh()
        self._need(extensions, "url", "string", False, scope)
        sql = f"list_filter({items(extensions)}, lambda {x}: {x}.url = {url.sql})"
        return Expr(sql, True, "Extension", extensions.path)

    def f_getResourceKey(self, node: Node, base: Expr, scope: Scope) -> Expr:
        self._arity(node, 0, 0)
        if base is not scope.root:
            raise self.refuse("getResourceKey() on anything but the resource")
        return self.navigate(base, "id", scope)

    def f_getReferenceKey(self, node: Node, base: Expr, scope: Scope) -> Expr:
        self._arity(node, 0, 1)
        wanted: str | None = None
        if node.args:
            arg = node.args[0]
            if arg.kind != "member" or arg.base is not None:
                raise ViewError(
                    f"FHIRPath {self.text!r}: getReferenceKey() takes a resource type name, "
                    "e.g. getReferenceKey(Patient)"
                )
            wanted = arg.name
        if base.type != "Reference":
            raise self.refuse("getReferenceKey() on something that is not a Reference")
        reference = self.navigate(base, "reference", scope)
        if reference.many:
            x = fresh()
            key = reference_key_sql(x, wanted)
            mapped = f"list_transform({reference.sql}, lambda {x}: {key})"
            return Expr(f"list_filter({mapped}, lambda {x}: {x} IS NOT NULL)", True, "string")
        return Expr(reference_key_sql(reference.sql, wanted), False, "string")

    # -- operators --------------------------------------------------------------------------------------
    def boolean(self, e: Expr, what: str) -> str:
        """FHIRPath singleton evaluation as Boolean: empty -> NULL, a boolean -> it, any other one value -> true."""
        if e.type == "boolean":
            return as_one(e, what)
        return f"(({as_one(e, what)}) IS NOT NULL OR NULL)"

    def n_binop(self, node: Node, scope: Scope) -> Expr:
        op = node.name
        left, right = (self.node(arg, scope) for arg in node.args)
        if op in ("and", "or"):
            a, b = self.boolean(left, f"'{op}'"), self.boolean(right, f"'{op}'")
            return Expr(f"({a} {op.upper()} {b})", False, "boolean")
        if op == "implies":
            a, b = self.boolean(left, "'implies'"), self.boolean(right, "'implies'")
            return Expr(f"((NOT {a}) OR {b})", False, "boolean")
        if op in ("=", "!=", "<", "<=", ">", ">="):
            return self.compare(op, left, right)
        if op in ("+", "-", "*", "/"):
            if left.type not in _NUMERIC or right.type not in _NUMERIC:
                raise self.refuse(f"'{op}' on values that are not numbers")
            a, b = as_one(left, f"'{op}'"), as_one(right, f"'{op}'")
            if op == "/":
                return Expr(f"(CAST({a} AS DOUBLE) / nullif(CAST({b} AS DOUBLE), 0))", False, "decimal")
            both_int = left.type in ("int32", "int64", "integer") and right.type in ("int32", "int64", "integer")
            return Expr(f"({a} {op} {b})", False, "int64" if both_int else "decimal")
        raise self.refuse(f"operator '{op}'")

    def compare(self, op: str, left: Expr, right: Expr) -> Expr:
        kinds = {self._kind(left), self._kind(right)}
        if len(kinds) != 1 or None in kinds:
            raise self.refuse(f"'{op}' between values of types {left.type} and {right.type}")
        if op in ("=", "!=") and (left.many or right.many):
            a, b = as_list(left), as_list(right)
            test = f"({a} = {b})" if op == "=" else f"({a} <> {b})"
            return Expr(f"(CASE WHEN len({a}) = 0 OR len({b}) = 0 THEN NULL ELSE {test} END)", False, "boolean")
        a, b = as_one(left, f"'{op}'"), as_one(right, f"'{op}'")
        sql_op = "<>" if op == "!=" else op
        return Expr(f"({a} {sql_op} {b})", False, "boolean")

    @staticmethod
    def _kind(e: Expr) -> str | None:
        if e.type in _NUMERIC:
            return "number"
        if e.type in ("string", "boolean"):
            return e.type
        return None

    def n_unary(self, node: Node, scope: Scope) -> Expr:
        assert node.base is not None
        operand = self.node(node.base, scope)
        if operand.type not in _NUMERIC:
            raise self.refuse("unary sign on a value that is not a number")
        if node.name == "+":
            return operand
        return Expr(f"(- {as_one(operand, 'unary -')})", False, operand.type)


def reference_key_sql(ref: str, wanted: str | None) -> str:
    """SQL for ``reference_id`` (views.fhirpath.functions): the id a reference string points at.

    Written with string functions, no lambdas: ``ref`` is a cheap field access, repeated rather than bound.
    ``Type/id``, ``.../Type/id/_history/v`` and ``urn:uuid:id`` give ``id``; with ``wanted``, a typed
    reference of another type gives NULL. The first branch takes the common relative form (``Patient/id``,
    no other ``/``, no ``:``) with plain string functions: measured 9x cheaper than the regular expression,
    which was a third of the observations view's CPU.
    """
    if wanted is not None and not wanted.isalnum():
        raise ViewCompileError(f"getReferenceKey({wanted}): not a resource type name")
    if wanted is not None:
        skip = len(wanted) + 2  # substr is 1-based: the text after 'Type/'
        common = (
            f"WHEN starts_with({ref}, '{wanted}/') AND NOT contains(substr({ref}, {skip}), '/') "
            f"THEN nullif(substr({ref}, {skip}), '') "
        )
        # Type/id without a version: the last segment when the one before it is the wanted type.
        last = f"(CASE WHEN split_part({ref}, '/', -2) = '{wanted}' THEN nullif(split_part({ref}, '/', -1), '') END)"
    else:
        common = (
            f"WHEN NOT contains({ref}, ':') AND NOT contains({ref}, '/_history/') "
            f"THEN (CASE WHEN contains({ref}, '/') THEN nullif(split_part({ref}, '/', -1), '') END) "
        )
        last = f"(CASE WHEN contains({ref}, '/') THEN nullif(split_part({ref}, '/', -1), '') END)"
    # Drop a trailing /_history/<version> when at least Type/id is left before it (the rare, slow path).
    plain = f"regexp_replace({ref}, '^(.*/.*)/_history/[^/]*$', '\\1')"
    typed = f"WHEN NOT regexp_matches({plain}, '(^|/){wanted}/[^/]*$') THEN NULL " if wanted is not None else ""
    versioned = (
        f"CASE WHEN NOT contains({plain}, '/') OR ends_with({plain}, '/') THEN NULL "
        f"{typed}ELSE regexp_extract({plain}, '[^/]*$') END"
    )
    return (
        f"(CASE {common}"
        f"WHEN {ref} IS NULL OR {ref} = '' THEN NULL "
        f"WHEN starts_with({ref}, 'urn:uuid:') THEN substr({ref}, 10) "
        f"WHEN starts_with({ref}, 'urn:oid:') THEN substr({ref}, 9) "
        f"WHEN contains({ref}, '/_history/') THEN {versioned} "
        f"ELSE {last} END)"
    )
