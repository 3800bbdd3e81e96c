"""Expression tree -> Python closures over lists of JSON values."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from airflow_provider_smart.views.errors import ViewError, shown
from airflow_provider_smart.views.fhirpath import functions, values
from airflow_provider_smart.views.fhirpath.parser import Node, parse


class Env:
    """What an expression may read besides its input: %constants, %rowIndex, $this, $index, %resource."""

    __slots__ = ("constants", "index", "resource", "row_index")

    def __init__(self, constants: Mapping[str, list[Any]]) -> None:
        self.constants = constants
        self.resource: Any = None
        self.row_index = 0
        self.index = 0


Compiled = Callable[[list[Any], Env], list[Any]]
_MISSING = object()


def navigate(focus: list[Any], name: str) -> list[Any]:
    """``focus.name``: child elements, flattening arrays; a choice element ``value`` finds ``valueX``."""
    out: list[Any] = []
    for item in focus:
        if type(item) is not dict:
            continue
        child = item.get(name, _MISSING)
        if child is _MISSING:
            child = _choice(item, name)
            if child is _MISSING:
                continue
        if type(child) is list:
            if None in child:
                out.extend(c for c in child if c is not None)
            else:
                out.extend(child)
        elif child is not None:
            out.append(child)
    return out


def navigate_path(focus: list[Any], names: tuple[str, ...]) -> list[Any]:
    for name in names:
        if not focus:
            return focus
        focus = navigate(focus, name)
    return focus


def _choice(item: dict[str, Any], name: str) -> Any:
    cut = len(name)
    for key, child in item.items():
        if len(key) > cut and key.startswith(name) and key[cut].isupper():
            return child
    return _MISSING


def choice_key(name: str, type_name: str) -> str:
    return name + type_name[:1].upper() + type_name[1:]


class Compiler:
    def __init__(self, text: str, constants: Mapping[str, Any]) -> None:
        self.text = text
        self.constants = constants

    def error(self, what: str) -> ViewError:
        return ViewError(f"FHIRPath {self.text!r}: {what}")

    def compile(self, node: Node) -> Compiled:
        method: Callable[[Node], Compiled] = getattr(self, "c_" + node.kind)
        return method(node)

    def c_empty(self, node: Node) -> Compiled:
        return lambda focus, env: []

    def c_lit(self, node: Node) -> Compiled:
        value = node.value
        return lambda focus, env: [value]

    def c_ext(self, node: Node) -> Compiled:
        name = node.name
        if name == "rowIndex":
            return lambda focus, env: [env.row_index]
        if name in ("resource", "context", "rootResource"):
            return lambda focus, env: [env.resource]
        if name not in self.constants:
            known = ", ".join(f"%{n}" for n in sorted(self.constants)) or "none"
            raise self.error(f"%{name} is not defined: add it to the view's 'constant' list (defined: {known})")
        return lambda focus, env: list(env.constants[name])

    def c_var(self, node: Node) -> Compiled:
        if node.name == "this":
            # Every expression (and every function argument) starts from its input, which is $this.
            return lambda focus, env: focus
        if node.name == "index":
            return lambda focus, env: [env.index]
        raise self.error(f"${node.name} is not supported (only $this and $index)")

    def c_member(self, node: Node) -> Compiled:
        # A chain ``a.b.c`` runs as one loop over its names, not as nested closures.
        names: list[str] = []
        current: Node | None = node
        while current is not None and current.kind == "member":
            names.append(current.name)
            current = current.base
        names.reverse()
        if current is None and names[0][:1].isupper():
            type_name, rest = names[0], tuple(names[1:])

            # A leading type name (``Patient.name``) selects resources of that type.
            def by_type(focus: list[Any], env: Env) -> list[Any]:
                items = [i for i in focus if type(i) is dict and i.get("resourceType") == type_name]
                if not items:
                    items = navigate(focus, type_name)
                return navigate_path(items, rest)

            return by_type
        path = tuple(names)
        if current is None:
            if len(path) == 1:
                name = path[0]
                return lambda focus, env: navigate(focus, name)
            return lambda focus, env: navigate_path(focus, path)
        base = self.compile(current)
        return lambda focus, env: navigate_path(base(focus, env), path)

    def c_index(self, node: Node) -> Compiled:
        assert node.base is not None
        base = self.compile(node.base)
        index = self.compile(node.args[0])

        def at(focus: list[Any], env: Env) -> list[Any]:
            items = base(focus, env)
            position = values.singleton(index(focus, env), "an indexer")
            if type(position) is not int:
                if position is None:
                    return []
                raise ViewError(f"FHIRPath indexer needs an integer, got {shown(position)}")
            return [items[position]] if 0 <= position < len(items) else []

        return at

    def c_unary(self, node: Node) -> Compiled:
        assert node.base is not None
        operand = self.compile(node.base)
        if node.name == "+":
            return operand

        def negate(focus: list[Any], env: Env) -> list[Any]:
            value = values.singleton(operand(focus, env), "unary '-'")
            if value is None:
                return []
            if not values.is_number(value):
                raise ViewError(f"cannot negate {shown(value)}")
            return [-value]

        return negate

    def c_typeop(self, node: Node) -> Compiled:
        assert node.base is not None
        type_name = str(node.value)
        source = self.typed_source(node.base, type_name)
        if node.name == "as":
            return source

        def is_type(focus: list[Any], env: Env) -> list[Any]:
            items = source(focus, env)
            return [bool(items)] if len(items) <= 1 else [True]

        return is_type

    def typed_source(self, base: Node, type_name: str) -> Compiled:
        """Items of ``base`` that are of ``type_name``; ``x.value`` of type T reads the key ``valueT``."""
        if base.kind == "member":
            parent = self.compile(base.base) if base.base is not None else None
            plain, chosen = base.name, choice_key(base.name, type_name)

            def member_of_type(focus: list[Any], env: Env) -> list[Any]:
                items = parent(focus, env) if parent is not None else focus
                out = navigate_direct(items, chosen)
                out.extend(v for v in navigate_direct(items, plain) if values.type_matches(v, type_name))
                return out

            return member_of_type
        inner = self.compile(base)
        return lambda focus, env: [v for v in inner(focus, env) if values.type_matches(v, type_name)]

    def c_call(self, node: Node) -> Compiled:
        if node.name in ("ofType", "as", "is"):
            if len(node.args) != 1 or node.args[0].kind != "member" or node.args[0].base is not None:
                raise self.error(f"{node.name}() takes one type name, e.g. {node.name}(Quantity)")
            target = node.args[0].name
            source = self._focus_typed(target) if node.base is None else self.typed_source(node.base, target)
            if node.name == "is":
                return lambda focus, env: [bool(source(focus, env))]
            return source
        base = self.compile(node.base) if node.base is not None else None
        return functions.build(self, node, base)

    def _focus_typed(self, type_name: str) -> Compiled:
        return lambda focus, env: [v for v in focus if values.type_matches(v, type_name)]

    def c_binop(self, node: Node) -> Compiled:
        left, right = (self.compile(arg) for arg in node.args)
        return functions.binary(node.name, left, right)


def navigate_direct(focus: list[Any], name: str) -> list[Any]:
    out: list[Any] = []
    for item in focus:
        if type(item) is dict:
            child = item.get(name)
            if type(child) is list:
                out.extend(c for c in child if c is not None)
            elif child is not None:
                out.append(child)
    return out


def compile_expression(text: str, constants: Mapping[str, Any]) -> Compiled:
    """Compile FHIRPath ``text``; ``constants`` names the %constants it may use (checked now)."""
    compiler = Compiler(text, constants)
    return compiler.compile(parse(text))
