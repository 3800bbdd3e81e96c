"""The import layering: ``transport/`` is the floor; ``auth/`` and ``fhir/`` build on it, never on each other;
``tables/`` and ``export/`` sit below the Airflow faces.

Every import counts, also those inside functions and under ``TYPE_CHECKING``: a circle hidden there is
still a circle for the reader and for the next refactoring.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_provider_smart"

#: Which of the provider's packages each layer may import (besides itself).
ALLOWED = {
    "transport": set(),
    "auth": {"transport"},
    "fhir": {"transport"},
    "vendors": {"fhir", "transport"},
    # The plain engines and the export's life below the operators: no Airflow face (operators, hooks,
    # triggers) and no Airflow import of their own, so a finishing child process never pays for Airflow.
    "tables": {"fhir", "lazy", "parquet", "reporting", "storage", "transport"},
    "export": {"fhir", "parquet", "reporting", "storage", "tables", "transport"},
}


def provider_imports(path: Path) -> set[tuple[str, int]]:
    """The provider's top-level packages a module imports, with the line of each import."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif node.module and node.level == 0:
            names = [node.module]
        elif node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: use absolute imports so the layering can be checked")
        for name in names:
            parts = name.split(".")
            if parts[0] == "airflow_provider_smart" and len(parts) > 1:
                found.add((parts[1], node.lineno))
            elif parts[0] == "airflow":
                found.add(("airflow", node.lineno))
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_the_layers_below(layer: str) -> None:
    modules = sorted((PACKAGE / layer).rglob("*.py"))
    assert modules, f"no modules under {layer}/"
    wrong = [
        f"{path.relative_to(PACKAGE)}:{line} imports {imported}"
        for path in modules
        for imported, line in sorted(provider_imports(path))
        if imported != layer and imported not in ALLOWED[layer]
    ]
    assert not wrong, f"{layer}/ may import only {sorted(ALLOWED[layer]) or 'nothing of the provider'}: {wrong}"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The parser finds imports inside functions and TYPE_CHECKING blocks (so the test above can fail)."""
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from airflow_provider_smart.auth.client import SmartAuthClient\n"
        "def f():\n    import airflow_provider_smart.fhir.http\n"
    )
    assert {name for name, _ in provider_imports(module)} == {"auth", "fhir"}
