"""FHIRPath functions and operators the SQL on FHIR v2 subset names, compiled to closures."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.views.errors import ViewError, shown
from airflow_provider_smart.views.fhirpath import boundaries, values

if TYPE_CHECKING:
    from airflow_provider_smart.views.fhirpath.compiler import Compiled, Compiler, Env
    from airflow_provider_smart.views.fhirpath.parser import Node

Builder = Callable[["Compiler", "Node", "Compiled"], "Compiled"]
_BUILDERS: dict[str, tuple[int, int, Builder]] = {}


def _function(name: str, min_args: int = 0, max_args: int = 0) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        _BUILDERS[name] = (min_args, max_args, builder)
        return builder

    return register


def build(compiler: Compiler, node: Node, base: Compiled | None) -> Compiled:
    entry = _BUILDERS.get(node.name)
    if entry is None:
        known = ", ".join(sorted(_BUILDERS))
        raise compiler.error(f"function {node.name}() is not supported; supported: {known}")
    low, high, builder = entry
    if not low <= len(node.args) <= high:
        wanted = str(low) if low == high else f"{low} to {high}"
        raise compiler.error(f"{node.name}() takes {wanted} argument(s), got {len(node.args)}")
    source: Compiled = base if base is not None else _identity
    return builder(compiler, node, source)


def _identity(focus: list[Any], env: Env) -> list[Any]:
    return focus


def _per_item(criteria: Compiled, item: Any, index: int, env: Env) -> list[Any]:
    """Evaluate ``criteria`` with ``item`` as its input (and so as ``$this``) and ``index`` as ``$index``."""
    saved_index = env.index
    env.index = index
    try:
        return criteria([item], env)
    finally:
        env.index = saved_index


@_function("where", 1, 1)
def _where(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    criteria = compiler.compile(node.args[0])

    def where(focus: list[Any], env: Env) -> list[Any]:
        return [
            item
            for i, item in enumerate(source(focus, env))
            if values.to_bool(_per_item(criteria, item, i, env), "where()") is True
        ]

    return where


@_function("select", 1, 1)
def _select(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    projection = compiler.compile(node.args[0])

    def select(focus: list[Any], env: Env) -> list[Any]:
        out: list[Any] = []
        for i, item in enumerate(source(focus, env)):
            out.extend(_per_item(projection, item, i, env))
        return out

    return select


@_function("exists", 0, 1)
def _exists(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    if node.args:
        inner = _where(compiler, node, source)
        return lambda focus, env: [bool(inner(focus, env))]
    return lambda focus, env: [bool(source(focus, env))]


@_function("all", 1, 1)
def _all(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    criteria = compiler.compile(node.args[0])

    def all_(focus: list[Any], env: Env) -> list[Any]:
        return [
            all(
                values.to_bool(_per_item(criteria, item, i, env), "all()") is True
                for i, item in enumerate(source(focus, env))
            )
        ]

    return all_


@_function("empty")
def _empty(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    return lambda focus, env: [not source(focus, env)]


@_function("count")
def _count(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    return lambda focus, env: [len(source(focus, env))]


@_function("first")
def _first(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    def first(focus: list[Any], env: Env) -> list[Any]:
        items = source(focus, env)
        return items[:1]

    return first


@_function("last")
def _last(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    return lambda focus, env: source(focus, env)[-1:]


@_function("tail")
def _tail(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    return lambda focus, env: source(focus, env)[1:]


def _count_arg(compiler: Compiler, node: Node) -> Compiled:
    return compiler.compile(node.args[0])


@_function("skip", 1, 1)
def _skip(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    amount = _count_arg(compiler, node)

    def skip(focus: list[Any], env: Env) -> list[Any]:
        n = values.singleton(amount(focus, env), "skip()")
        return source(focus, env)[max(int(n or 0), 0) :]

    return skip


@_function("take", 1, 1)
def _take(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    amount = _count_arg(compiler, node)

    def take(focus: list[Any], env: Env) -> list[Any]:
        n = values.singleton(amount(focus, env), "take()")
        return source(focus, env)[: max(int(n or 0), 0)]

    return take


@_function("distinct")
def _distinct(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    def distinct(focus: list[Any], env: Env) -> list[Any]:
        out: list[Any] = []
        for item in source(focus, env):
            if not any(values.item_equal(item, seen) for seen in out):
                out.append(item)
        return out

    return distinct


@_function("not")
def _not(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    def not_(focus: list[Any], env: Env) -> list[Any]:
        value = values.to_bool(source(focus, env), "not()")
        return [] if value is None else [not value]

    return not_


@_function("hasValue")
def _has_value(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    def has_value(focus: list[Any], env: Env) -> list[Any]:
        items = source(focus, env)
        return [len(items) == 1 and type(items[0]) is not dict]

    return has_value


@_function("join", 0, 1)
def _join(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    separator = compiler.compile(node.args[0]) if node.args else (lambda focus, env: [""])

    def join(focus: list[Any], env: Env) -> list[Any]:
        sep = values.singleton(separator(focus, env), "join()") or ""
        items = source(focus, env)
        # An empty collection joins to the empty string (the SQL on FHIR "string join" test).
        return [str(sep).join(_as_text(v) for v in items)]

    return join


def _as_text(value: Any) -> str:
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is dict:
        raise ViewError("join()/toString() apply to primitive values, not to complex elements")
    return str(value)


@_function("toString")
def _to_string(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    def to_string(focus: list[Any], env: Env) -> list[Any]:
        value = values.singleton(source(focus, env), "toString()")
        return [] if value is None else [_as_text(value)]

    return to_string


def _string_test(name: str, test: Callable[[str, str], bool]) -> None:
    @_function(name, 1, 1)
    def _build(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
        argument = compiler.compile(node.args[0])

        def run(focus: list[Any], env: Env) -> list[Any]:
            value = values.singleton(source(focus, env), f"{name}()")
            other = values.singleton(argument(focus, env), f"{name}()")
            if value is None or other is None:
                return []
            if not isinstance(value, str) or not isinstance(other, str):
                raise ViewError(f"{name}() applies to strings, got {shown(value)} and {shown(other)}")
            return [test(value, other)]

        return run


_string_test("startsWith", str.startswith)
_string_test("endsWith", str.endswith)
_string_test("contains", lambda value, part: part in value)


#: RE2 refuses to build a pattern whose program would need more memory than this (e.g. ``a{1000}{1000}``).
_REGEX_MAX_MEM = 8 << 20


@functools.lru_cache(maxsize=256)
def _regex(pattern: str, function: str) -> Any:
    """``pattern`` compiled by RE2, which matches in time linear in the text whatever the pattern.

    Patterns may come from the data (a constant or a resource value), so a backtracking engine could
    spend minutes on one resource (``^(a+)+$``). RE2 has no lookaround and no backreferences; such a
    pattern is a :class:`ViewError` naming the pattern and the fix.
    """
    import re2  # here, not at the top: views are imported when a DAG file is parsed

    options = re2.Options()
    options.log_errors = False  # the error is raised below; RE2 would also print it to stderr
    options.max_mem = _REGEX_MAX_MEM
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ViewError(
            f"{function}(): pattern {shown(pattern)} cannot run ({shown(reason)}); patterns run on RE2, which "
            "matches in linear time and has no lookaround, backreferences or possessive repeats: rewrite the "
            "pattern without them"
        ) from None


_string_test("matches", lambda value, pattern: _regex(pattern, "matches").search(value) is not None)


#: ``$1`` in a replaceMatches() substitution (a fixed pattern of ours, so Python's engine is fine here).
_GROUP_REFERENCE = re.compile(r"\$(\d+)")


@_function("replaceMatches", 2, 2)
def _replace_matches(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    """FHIRPath ``replaceMatches(regex, substitution)``: ``$1`` in the substitution is the first group."""
    pattern_arg = compiler.compile(node.args[0])
    substitution_arg = compiler.compile(node.args[1])

    def replace_matches(focus: list[Any], env: Env) -> list[Any]:
        value = values.singleton(source(focus, env), "replaceMatches()")
        pattern = values.singleton(pattern_arg(focus, env), "replaceMatches()")
        substitution = values.singleton(substitution_arg(focus, env), "replaceMatches()")
        if value is None or pattern is None or substitution is None:
            return []
        if not all(isinstance(v, str) for v in (value, pattern, substitution)):
            raise ViewError(
                f"replaceMatches() applies to strings, got {shown(value)}, {shown(pattern)} and {shown(substitution)}"
            )
        regex = _regex(pattern, "replaceMatches")

        def expand(match: Any) -> str:
            def group(ref: Any) -> str:
                number = int(ref.group(1))
                return (match.group(number) or "") if number <= regex.groups else ref.group(0)

            return _GROUP_REFERENCE.sub(group, substitution)

        return [regex.sub(expand, value)]

    return replace_matches


@_function("extension", 1, 1)
def _extension(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    url = compiler.compile(node.args[0])

    def extension(focus: list[Any], env: Env) -> list[Any]:
        wanted = values.singleton(url(focus, env), "extension()")
        out: list[Any] = []
        for item in source(focus, env):
            if type(item) is dict:
                for ext in item.get("extension") or ():
                    if type(ext) is dict and ext.get("url") == wanted:
                        out.append(ext)
        return out

    return extension


@_function("getResourceKey")
def _resource_key(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    def resource_key(focus: list[Any], env: Env) -> list[Any]:
        out: list[Any] = []
        for item in source(focus, env):
            if type(item) is dict and item.get("resourceType") and item.get("id") is not None:
                out.append(item["id"])
        return out

    return resource_key


@_function("getReferenceKey", 0, 1)
def _reference_key(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
    wanted: str | None = None
    if node.args:
        arg = node.args[0]
        if arg.kind != "member" or arg.base is not None:
            raise compiler.error("getReferenceKey() takes a resource type name, e.g. getReferenceKey(Patient)")
        wanted = arg.name

    def reference_key(focus: list[Any], env: Env) -> list[Any]:
        out: list[Any] = []
        for item in source(focus, env):
            if type(item) is dict:
                key = reference_id(item.get("reference"), wanted)
                if key is not None:
                    out.append(key)
        return out

    return reference_key


def reference_id(reference: Any, wanted_type: str | None) -> str | None:
    """The id a reference points at, matching what getResourceKey() returns for that resource.

    ``Patient/123``, ``https://host/fhir/Patient/123/_history/2`` and ``urn:uuid:123`` give ``123``;
    with ``wanted_type``, a typed reference of another type gives None (``urn:uuid:`` carries no type).
    """
    if not isinstance(reference, str) or not reference:
        return None
    if reference.startswith("urn:uuid:") or reference.startswith("urn:oid:"):
        return reference[9:] if reference.startswith("urn:uuid:") else reference[8:]
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or not parts[-1]:
        return None
    if wanted_type is not None and parts[-2] != wanted_type:
        return None
    return parts[-1]


def _boundary(name: str, high: bool) -> None:
    @_function(name, 0, 1)
    def _build(compiler: Compiler, node: Node, source: Compiled) -> Compiled:
        # A date and a dateTime look alike in JSON: ``x.ofType(dateTime).lowBoundary()`` says which.
        hint = None
        base = node.base
        if base is not None and base.kind == "call" and base.name == "ofType" and base.args:
            hint = base.args[0].name

        def boundary(focus: list[Any], env: Env) -> list[Any]:
            value = values.singleton(source(focus, env), f"{name}()")
            if value is None:
                return []
            result = boundaries.boundary(value, high, hint)
            return [] if result is None else [result]

        return boundary


_boundary("lowBoundary", high=False)
_boundary("highBoundary", high=True)


def _logic(op: str, left: Compiled, right: Compiled) -> Compiled:
    what = f"'{op}'"

    def logic(focus: list[Any], env: Env) -> list[Any]:
        a = values.to_bool(left(focus, env), what)
        if op == "and" and a is False:
            return [False]
        if op == "or" and a is True:
            return [True]
        if op == "implies" and a is False:
            return [True]
        b = values.to_bool(right(focus, env), what)
        if op == "and":
            result = False if b is False else (True if a is True and b is True else None)
        elif op == "or":
            result = True if b is True else (False if a is False and b is False else None)
        elif op == "xor":
            result = None if a is None or b is None else a != b
        else:  # implies, with a true or empty
            result = True if b is True else (None if a is None else b)
        return [] if result is None else [result]

    return logic


def _arithmetic(op: str, left: Compiled, right: Compiled) -> Compiled:
    def arithmetic(focus: list[Any], env: Env) -> list[Any]:
        a = values.singleton(left(focus, env), f"'{op}'")
        b = values.singleton(right(focus, env), f"'{op}'")
        if op == "&":
            return [("" if a is None else _as_text(a)) + ("" if b is None else _as_text(b))]
        if a is None or b is None:
            return []
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            return [a + b]
        if not (values.is_number(a) and values.is_number(b)):
            raise ViewError(f"cannot compute {shown(a)} {op} {shown(b)}: arithmetic needs numbers")
        if op == "+":
            return [a + b]
        if op == "-":
            return [a - b]
        if op == "*":
            return [a * b]
        if b == 0:
            return []
        if op == "/":
            return [a / b]
        if op == "div":
            return [int(a // b)]
        return [a % b]

    return arithmetic


def binary(op: str, left: Compiled, right: Compiled) -> Compiled:
    if op in ("and", "or", "xor", "implies"):
        return _logic(op, left, right)
    if op in ("+", "-", "*", "/", "div", "mod", "&"):
        return _arithmetic(op, left, right)
    if op == "=":

        def eq(focus: list[Any], env: Env) -> list[Any]:
            result = values.equal(left(focus, env), right(focus, env))
            return [] if result is None else [result]

        return eq
    if op == "!=":

        def ne(focus: list[Any], env: Env) -> list[Any]:
            result = values.equal(left(focus, env), right(focus, env))
            return [] if result is None else [not result]

        return ne
    if op == "~":
        return lambda focus, env: [values.equivalent(left(focus, env), right(focus, env))]
    if op == "!~":
        return lambda focus, env: [not values.equivalent(left(focus, env), right(focus, env))]
    if op in ("<", "<=", ">", ">="):

        def order(focus: list[Any], env: Env) -> list[Any]:
            result = values.compare(op, left(focus, env), right(focus, env))
            return [] if result is None else [result]

        return order
    if op == "|":

        def union(focus: list[Any], env: Env) -> list[Any]:
            out: list[Any] = []
            for item in left(focus, env) + right(focus, env):
                if not any(values.item_equal(item, seen) for seen in out):
                    out.append(item)
            return out

        return union
    if op in ("in", "contains"):

        def membership(focus: list[Any], env: Env) -> list[Any]:
            element, collection = left(focus, env), right(focus, env)
            if op == "contains":
                element, collection = collection, element
            item = values.singleton(element, f"'{op}'")
            if item is None:
                return []
            return [any(values.item_equal(item, other) for other in collection)]

        return membership
    raise ViewError(f"operator {op!r} is not supported")
