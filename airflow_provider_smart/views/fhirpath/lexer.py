"""Tokens of FHIRPath text."""

from __future__ import annotations

import re
from dataclasses import dataclass

from airflow_provider_smart.views.errors import ViewError


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "num", "str", "id", "ext" (%name), "var" ($this), "date", "op", "end"
    text: str
    pos: int


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<date>@T?[0-9][0-9:\-T.+Z]*)
  | (?P<num>[0-9]+(?:\.[0-9]+)?)
  | (?P<str>'(?:[^'\\]|\\.)*')
  | (?P<ext>%(?:[A-Za-z_][A-Za-z0-9_]*|`[^`]*`|'(?:[^'\\]|\\.)*'))
  | (?P<var>\$[A-Za-z_]+)
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]*`)
  | (?P<op><=|>=|!=|!~|\{\}|[-+*/&|=~<>().,\[\]])
    """,
    re.VERBOSE | re.DOTALL,
)

_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def unescape(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "u" and i + 5 < len(body):
                out.append(chr(int(body[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ViewError(f"FHIRPath {text!r}: unexpected character {text[pos]!r} at position {pos}")
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, match.group(), pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens
