"""The FHIR R4 type model: for each complex type, resource and BackboneElement, its elements.

Loaded from ``r4_model.json``, generated once from the official R4 StructureDefinitions by
``tools/gen_fhir_r4_model.py`` and committed, so nothing is fetched at run time.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

# Value kinds a leaf can have; anything else in the model is the name of a complex type.
LEAF_KINDS = frozenset({"string", "boolean", "int32", "int64", "decimal", "json"})

Element = tuple[str, bool]  # (kind or complex type name, is_array)


@functools.cache
def _raw() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(__file__).with_name("r4_model.json")).read_text(encoding="utf-8"))
    return data


@functools.cache
def _types() -> dict[str, dict[str, Element]]:
    return {
        name: {el: (spec[0], bool(spec[1])) for el, spec in elements.items()}
        for name, elements in _raw()["types"].items()
    }


def element(type_name: str | None, name: str) -> Element | None:
    """The (type, is_array) of element ``name`` of ``type_name``, or None when FHIR R4 has no such element."""
    if type_name is None:
        return None
    elements = _types().get(type_name)
    if elements is None:
        return None
    return elements.get(name)


def element_names(type_name: str) -> list[str]:
    """The elements of ``type_name`` in model order (empty for an unknown type)."""
    return list(_types().get(type_name, {}))


def is_resource_type(name: str) -> bool:
    elements = _types().get(name)
    return elements is not None and "resourceType" in elements


def fhir_version() -> str:
    return str(_raw()["fhirVersion"])
