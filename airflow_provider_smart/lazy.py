"""Package attributes loaded on first use, so importing a package (from a DAG file) stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def lazy_attribute(package: str, exports: Mapping[str, str], name: str) -> Any:
    """The attribute ``name`` of ``package`` from the module ``exports`` maps it to, imported now.

    Call it from a package's module-level ``__getattr__``: the heavy module (pyarrow, deltalake) loads only
    when code asks for one of its names.
    """
    module = exports.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
