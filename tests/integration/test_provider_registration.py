"""The provider is found by a real Airflow through its entry point."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_airflow

pytestmark = pytest.mark.integration


def test_airflow_providers_list_shows_the_provider() -> None:
    result = run_airflow("providers", "list", "--output", "json")
    assert result.returncode == 0, result.stderr[-2000:]
    # Log lines may come before the JSON document: take the line that holds it.
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("[{"))
    packages = {p["package_name"] for p in json.loads(line)}
    assert "airflow-provider-smart" in packages
