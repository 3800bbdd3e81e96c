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


def test_airflow_config_knows_the_providers_options() -> None:
    """The ``[smart_fhir]`` options come from provider info: Airflow shows their defaults and descriptions."""
    result = run_airflow("config", "get-value", "smart_fhir", "jwks_merged")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"
    listed = run_airflow(
        "config", "list", "--section", "smart_fhir", "--include-descriptions", "--include-examples", "--show-values"
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "\njwks_merged = False\n" in listed.stdout and "# Example: jwks_merged = True" in listed.stdout
    assert "all smart_fhir connections in one set" in listed.stdout
