"""The example DAGs do not start by surprise and write where a user would look.

Unpausing a scheduled DAG (the UI's "unpause on trigger" does it too) must not create a run for a night
that has already passed, and no example writes into a home directory by default.
"""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
from airflow.sdk import DAG

DAGS = Path(__file__).resolve().parents[2] / "dags"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dags() -> list[tuple[str, DAG, ModuleType]]:
    found = []
    for path in sorted(DAGS.glob("*.py")):
        module = _load(path)
        found += [(path.name, v, module) for v in vars(module).values() if isinstance(v, DAG)]
    return found


EXPORT_DAGS = ("fhir_bulk_export_nightly", "fhir_delta_nightly", "fhir_views_from_export")


@pytest.mark.parametrize("dag_id", EXPORT_DAGS)
def test_unpausing_a_nightly_export_starts_no_run_for_a_past_night(dag_id: str) -> None:
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    (dag,) = [d for _, d, _ in _dags() if d.dag_id == dag_id]
    timetable = coerce_to_core_timetable(dag.timetable)
    before = datetime.now(UTC)
    first = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=dag.catchup),
    )
    assert first is not None
    assert first.run_after > before, f"{dag_id} would start a run for {first.run_after} as soon as it is unpaused"


def test_no_example_writes_into_a_home_directory_by_default() -> None:
    home = str(Path.home())
    for name, _, module in _dags():
        default = getattr(module, "DEFAULT_OUTPUT", None)
        if default is None:
            continue
        assert "fhir-output" in default, (name, default)
        assert not default.startswith(home + "/fhir-"), f"{name} writes to {default} by default"
