"""ViewDefinitions shipped with the package: patient demographics, observations, conditions, encounters,
medication requests. Pass a name (``"observations"``) wherever a view is accepted."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from airflow_provider_smart.views.errors import ViewError


def names() -> list[str]:
    folder = resources.files(__name__)
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load(name: str) -> dict[str, Any]:
    """The shipped ViewDefinition called ``name``."""
    if name not in names():
        raise ViewError(f"no shipped view called {name!r}; shipped views: {', '.join(names())}")
    view: dict[str, Any] = json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text("utf-8"))
    return view
