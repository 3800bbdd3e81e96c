"""FhirViewRunOperator without a scheduler: which views it loads, what it refuses, what DAG parsing costs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_smart.operators.views import FhirViewRunOperator
from airflow_provider_smart.views import ViewError, library


def _op(views: object) -> FhirViewRunOperator:
    return FhirViewRunOperator(task_id="v", views=views, source="/src", destination="/dst")


def test_views_from_names_files_and_dicts(tmp_path: Path) -> None:
    custom = {"name": "ids", "resource": "Condition", "select": [{"column": [{"name": "id", "path": "id"}]}]}
    path = tmp_path / "ids2.json"
    path.write_text(json.dumps(dict(custom, name="ids2")))
    plans = _op(["observations", str(path), custom])._load_views()
    assert [(p.name, p.resource) for p in plans] == [
        ("observations", "Observation"),
        ("ids2", "Condition"),
        ("ids", "Condition"),
    ]


def test_every_shipped_view_compiles() -> None:
    assert library.names() == [
        "conditions",
        "encounters",
        "medication_requests",
        "observations",
        "patient_demographics",
    ]
    assert len(_op(library.names())._load_views()) == 5


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a shipped view"):
        _op(["observashuns"])._load_views()
    with pytest.raises(ValueError, match="views is empty"):
        _op([])._load_views()
    with pytest.raises(ValueError, match="two views are named"):
        _op(["observations", "observations"])._load_views()
    with pytest.raises(ViewError, match=r"views\[1\]: the ViewDefinition has no 'resource'"):
        _op(["observations", {"select": []}])._load_views()


def test_dag_level_imports_do_not_load_pyarrow() -> None:
    code = (
        "import sys\n"
        "import airflow_provider_smart.operators.views, airflow_provider_smart.views\n"
        "from airflow_provider_smart.views import library\n"
        "assert 'pyarrow' not in sys.modules, 'pyarrow loaded at DAG parse time'\n"
        "assert 'duckdb' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
