"""SMART scopes as the sandbox grants and checks them: v1 (``system/Observation.read``) and v2 (``.rs``).

A requested scope is granted only inside the client's registered scope. Wildcards are expanded to one
scope per resource type, the way Aidbox lists them in its token response (``system/*.read`` is granted
as ``system/AllergyIntolerance.read system/CarePlan.read ...``). A wildcard request against narrower
registered scopes is narrowed to them. v1 ``read`` means v2 ``rs``, ``write`` means ``cud``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_V1 = {"read": frozenset("rs"), "write": frozenset("cud"), "*": frozenset("cruds")}
_V2 = re.compile(r"^c?r?u?d?s?$")
_SCOPE = re.compile(r"^(?P<context>system|patient|user)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<perms>[a-z*]+)$")


class ScopeError(ValueError):
    """A requested scope cannot be granted; the message says which and why."""


@dataclass(frozen=True)
class ResourceScope:
    context: str
    resource_type: str
    permissions: frozenset[str]
    v2: bool

    def format(self, resource_type: str | None = None, permissions: frozenset[str] | None = None) -> str:
        perms = self.permissions if permissions is None else permissions
        text = "".join(p for p in "cruds" if p in perms)
        if not self.v2:
            for name, value in _V1.items():
                if value == perms:
                    text = name
        return f"{self.context}/{resource_type or self.resource_type}.{text}"


def parse_scope(text: str) -> ResourceScope | None:
    """A resource scope, or None for other scopes (``openid``, ``launch`` ...). Raises on a malformed one."""
    if "?" in text:
        raise ScopeError(f"granular scope {text!r} is not supported by the sandbox (drop the ?query part)")
    match = _SCOPE.match(text)
    if match is None:
        if "/" in text:
            raise ScopeError(f"malformed scope {text!r}: expected e.g. system/Observation.read or system/*.rs")
        return None
    perms = match["perms"]
    if perms in _V1:
        return ResourceScope(match["context"], match["type"], _V1[perms], v2=False)
    if perms and _V2.match(perms):
        return ResourceScope(match["context"], match["type"], frozenset(perms), v2=True)
    raise ScopeError(f"malformed scope {text!r}: permissions must be read, write, * or a subset of cruds in order")


def grant_scopes(requested: Sequence[str], registered: Iterable[str], resource_types: Sequence[str]) -> list[str]:
    """The granted scope list for a request, or :class:`ScopeError` naming what is outside the registration."""
    registered_list = list(registered)
    registered_scopes = [scope for scope in (parse_scope(text) for text in registered_list) if scope is not None]
    granted: list[str] = []
    refused: list[str] = []
    for text in requested:
        wanted = parse_scope(text)
        if wanted is None:
            (granted if text in registered_list else refused).append(text)
            continue
        if wanted.context != "system":
            raise ScopeError(f"scope {text!r}: backend services clients are granted system/ scopes only")
        per_type: dict[str, frozenset[str]] = {}
        for have in registered_scopes:
            if have.context != wanted.context:
                continue
            if wanted.resource_type == "*":
                resource_type = have.resource_type
            elif have.resource_type in ("*", wanted.resource_type):
                resource_type = wanted.resource_type
            else:
                continue
            perms = wanted.permissions & have.permissions
            if perms:
                per_type[resource_type] = per_type.get(resource_type, frozenset()) | perms
        if not per_type:
            refused.append(text)
            continue
        if "*" in per_type:
            wildcard = per_type.pop("*")
            for resource_type in resource_types:
                per_type[resource_type] = per_type.get(resource_type, frozenset()) | wildcard
        for resource_type in sorted(per_type):
            granted.append(wanted.format(resource_type, per_type[resource_type]))
    if refused:
        raise ScopeError(
            f"scope {' '.join(refused)!r} is outside the client's registered scope {' '.join(registered_list)!r}"
        )
    return list(dict.fromkeys(granted))


def allows(granted: Iterable[str], resource_type: str, interaction: str) -> bool:
    """Whether granted scopes allow ``read`` (needs r) or ``search`` (needs s) on a resource type."""
    needed = {"read": "r", "search": "s", "create": "c", "update": "u", "delete": "d"}[interaction]
    for text in granted:
        try:
            scope = parse_scope(text)
        except ScopeError:
            continue
        if scope is None or scope.context != "system":
            continue
        if scope.resource_type in ("*", resource_type) and needed in scope.permissions:
            return True
    return False
