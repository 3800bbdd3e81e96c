"""FHIRPath value rules over plain JSON: singletons, three-valued booleans, equality, order, types."""

from __future__ import annotations

from typing import Any

from airflow_provider_smart.views.errors import ViewError, shown

# FHIR primitive types that JSON carries as strings, numbers or booleans.
_STRING_TYPES = frozenset(
    {
        "string", "code", "id", "uri", "url", "canonical", "oid", "uuid", "markdown", "base64Binary",
        "date", "dateTime", "time", "instant", "xhtml",
    }
)  # fmt: skip
_INTEGER_TYPES = frozenset({"integer", "positiveInt", "unsignedInt", "integer64"})
_SYSTEM_TYPES = {"String": "string", "Boolean": "boolean", "Integer": "integer", "Decimal": "decimal"}


def singleton(values: list[Any], what: str) -> Any:
    """The one item of ``values``, None when empty; more than one is an error naming ``what``."""
    if not values:
        return None
    if len(values) > 1:
        raise ViewError(f"{what} expects one value but got {len(values)}: {shown(values[:3])}")
    return values[0]


def to_bool(values: list[Any], what: str) -> bool | None:
    """FHIRPath singleton evaluation as Boolean: empty -> None, [true/false] -> it, [other] -> True."""
    if not values:
        return None
    if len(values) > 1:
        raise ViewError(f"{what} expects a single boolean but got {len(values)} values")
    value = values[0]
    return value if type(value) is bool else True


def item_equal(a: Any, b: Any) -> bool:
    if (type(a) is bool) != (type(b) is bool):
        return False
    return bool(a == b)


def equal(left: list[Any], right: list[Any]) -> bool | None:
    if not left or not right:
        return None
    if len(left) != len(right):
        return False
    return all(item_equal(a, b) for a, b in zip(left, right, strict=True))


def _norm_text(value: Any) -> Any:
    return " ".join(value.lower().split()) if isinstance(value, str) else value


def equivalent(left: list[Any], right: list[Any]) -> bool:
    if not left and not right:
        return True
    if len(left) != len(right):
        return False
    rest = [_norm_text(b) for b in right]
    for a in left:
        a = _norm_text(a)
        for i, b in enumerate(rest):
            if item_equal(a, b):
                del rest[i]
                break
        else:
            return False
    return True


def is_number(value: Any) -> bool:
    return type(value) in (int, float)


def compare(op: str, left: list[Any], right: list[Any]) -> bool | None:
    a = singleton(left, f"'{op}'")
    b = singleton(right, f"'{op}'")
    if a is None or b is None:
        return None
    if is_number(a) and is_number(b):
        pass
    elif not (isinstance(a, str) and isinstance(b, str)):
        raise ViewError(f"cannot compare {shown(a)} {op} {shown(b)}: both sides must be numbers, or both strings/dates")
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def type_matches(value: Any, type_name: str) -> bool:
    """Whether a JSON value can be of FHIR type ``type_name`` (JSON does not say which string type)."""
    name = _SYSTEM_TYPES.get(type_name, type_name)
    kind = type(value)
    if kind is str:
        return name in _STRING_TYPES
    if kind is bool:
        return name == "boolean"
    if kind is int:
        return name in _INTEGER_TYPES or name == "decimal"
    if kind is float:
        return name == "decimal"
    if kind is dict:
        resource_type = value.get("resourceType")
        if resource_type is not None:
            return bool(resource_type == name or name in ("Resource", "DomainResource"))
        return name[:1].isupper()
    return False
