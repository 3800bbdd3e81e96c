"""FHIRPath text -> a small expression tree (precedence climbing over the grammar's operator table)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_provider_smart.views.errors import ViewError
from airflow_provider_smart.views.fhirpath.lexer import Token, tokenize, unescape


@dataclass(frozen=True, slots=True)
class Node:
    """One tree node. ``kind`` is one of: empty, lit, ext, var, member, call, index, binop, unary, typeop."""

    kind: str
    name: str = ""
    value: Any = None
    base: Node | None = None
    args: tuple[Node, ...] = ()


# Lowest to highest; each entry is the set of binary operators of one level.
_LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"implies"}),
    frozenset({"or", "xor"}),
    frozenset({"and"}),
    frozenset({"in", "contains"}),
    frozenset({"=", "~", "!=", "!~"}),
    frozenset({"<", ">", "<=", ">="}),
    frozenset({"|"}),
    frozenset({"is", "as"}),
    frozenset({"+", "-", "&"}),
    frozenset({"*", "/", "div", "mod"}),
)
_WORD_OPS = frozenset({"implies", "or", "xor", "and", "in", "contains", "is", "as", "div", "mod"})


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0

    def error(self, what: str) -> ViewError:
        token = self.tokens[min(self.pos, len(self.tokens) - 1)]
        where = "the end" if token.kind == "end" else f"{token.text!r} at position {token.pos}"
        return ViewError(f"FHIRPath {self.text!r}: {what} (at {where})")

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def take(self) -> Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, text: str) -> None:
        if self.peek().text != text or self.peek().kind not in ("op",):
            raise self.error(f"expected {text!r}")
        self.pos += 1

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise self.error("empty expression")
        node = self.binary(0)
        if self.peek().kind != "end":
            raise self.error("unexpected text after the expression")
        return node

    def is_binary(self, level: int) -> bool:
        token = self.peek()
        if token.kind == "op":
            return token.text in _LEVELS[level] and token.text not in _WORD_OPS
        return token.kind == "id" and token.text in _LEVELS[level]

    def binary(self, level: int) -> Node:
        if level == len(_LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.is_binary(level):
            op = self.take().text
            if op in ("is", "as"):
                left = Node("typeop", name=op, base=left, value=self.type_name())
            else:
                right = self.binary(level + 1)
                left = Node("binop", name=op, args=(left, right))
        return left

    def type_name(self) -> str:
        if self.peek().kind != "id":
            raise self.error("expected a type name")
        token = self.take()
        name = token.text.strip("`")
        if self.peek().text == "." and self.tokens[self.pos + 1].kind == "id":
            self.pos += 1  # a qualified name such as FHIR.Quantity or System.String
            name = self.take().text.strip("`")
        return name

    def unary(self) -> Node:
        if self.peek().kind == "op" and self.peek().text in ("+", "-"):
            op = self.take().text
            return Node("unary", name=op, base=self.unary())
        return self.postfix(self.term())

    def postfix(self, node: Node) -> Node:
        while True:
            token = self.peek()
            if token.kind == "op" and token.text == ".":
                self.pos += 1
                node = self.invocation(node)
            elif token.kind == "op" and token.text == "[":
                self.pos += 1
                index = self.binary(0)
                self.expect("]")
                node = Node("index", base=node, args=(index,))
            else:
                return node

    def invocation(self, base: Node | None) -> Node:
        if self.peek().kind != "id":
            raise self.error("expected a name after '.'")
        token = self.take()
        name = token.text[1:-1] if token.text.startswith("`") else token.text
        if self.peek().kind == "op" and self.peek().text == "(" and not token.text.startswith("`"):
            self.pos += 1
            args: list[Node] = []
            if not (self.peek().kind == "op" and self.peek().text == ")"):
                args.append(self.binary(0))
                while self.peek().kind == "op" and self.peek().text == ",":
                    self.pos += 1
                    args.append(self.binary(0))
            self.expect(")")
            return Node("call", name=name, base=base, args=tuple(args))
        return Node("member", name=name, base=base)

    def term(self) -> Node:
        token = self.peek()
        if token.kind == "num":
            self.pos += 1
            return Node("lit", value=float(token.text) if "." in token.text else int(token.text))
        if token.kind == "str":
            self.pos += 1
            return Node("lit", value=unescape(token.text[1:-1]))
        if token.kind == "date":
            self.pos += 1
            return Node("lit", value=token.text[2:] if token.text.startswith("@T") else token.text[1:])
        if token.kind == "ext":
            self.pos += 1
            body = token.text[1:]
            if body[:1] in ("`", "'"):
                body = unescape(body[1:-1])
            return Node("ext", name=body)
        if token.kind == "var":
            self.pos += 1
            return Node("var", name=token.text[1:])
        if token.kind == "op" and token.text == "(":
            self.pos += 1
            inner = self.binary(0)
            self.expect(")")
            return inner
        if token.kind == "op" and token.text == "{}":
            self.pos += 1
            return Node("empty")
        if token.kind == "id":
            if token.text in ("true", "false"):
                self.pos += 1
                return Node("lit", value=token.text == "true")
            return self.invocation(None)
        raise self.error("expected a name, a literal, '%constant', '$this' or '('")


def parse(text: str) -> Node:
    """Parse FHIRPath text; a syntax error raises :class:`ViewError` naming the position."""
    if not isinstance(text, str):
        raise ViewError(f"a FHIRPath expression must be a string, not {type(text).__name__} ({text!r})")
    return _Parser(text).parse()
