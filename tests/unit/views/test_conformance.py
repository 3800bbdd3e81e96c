"""Every official SQL on FHIR v2 test runs through ``run_view`` and through the DuckDB SQL compiler; shareable
ones must pass on both (a view the compiler refuses at compile time is counted and listed as refused)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from airflow_provider_smart.views import ViewError, run_view
from airflow_provider_smart.views.sql import ViewCompileError
from tests.conftest import CONFORMANCE_PROPERTY, CONFORMANCE_REFUSED_PROPERTY, CONFORMANCE_SQL_PROPERTY
from tests.unit.views import conformance

_MISSING = conformance.suite_missing()
_CASES = [] if _MISSING else conformance.load_cases()


def _outcome(case: conformance.Case, engine: str = "python") -> tuple[bool, str]:
    try:
        if engine == "duckdb":
            from airflow_provider_smart.views.sql.duckdb_engine import run_rows

            rows = run_rows(case.view, case.resources)
        else:
            rows = run_view(case.view, case.resources, engine="python")
    except ViewCompileError:
        raise
    except ViewError as exc:
        if case.expect_error:
            return True, ""
        return False, f"raised {exc}"
    if case.expect_error:
        return False, f"expected an error, got {len(rows)} rows: {rows[:3]}"
    if case.expect_columns is not None and rows and list(rows[0]) != case.expect_columns:
        return False, f"columns {list(rows[0])} != {case.expect_columns}"
    if case.expect is not None and not conformance.rows_match(rows, case.expect):
        return False, f"rows {rows} != expected {case.expect}"
    return True, ""


@pytest.mark.skipif(bool(_MISSING), reason=_MISSING or "")
@pytest.mark.parametrize("case", _CASES, ids=[c.id for c in _CASES])
def test_conformance(case: conformance.Case, record_property: Callable[[str, object], None]) -> None:
    ok, why = _outcome(case)
    record_property(CONFORMANCE_PROPERTY, ok)  # tallied by tests/conftest.py, across xdist workers too
    if not ok:
        if "shareable" in case.tags:
            pytest.fail(why)
        pytest.xfail(f"not shareable ({', '.join(case.tags)}): {why}")


@pytest.mark.skipif(bool(_MISSING), reason=_MISSING or "")
@pytest.mark.parametrize("case", _CASES, ids=[c.id for c in _CASES])
def test_conformance_duckdb(case: conformance.Case, record_property: Callable[[str, object], None]) -> None:
    """The same test through the SQL compiler and DuckDB; a compile-time refusal is listed, never wrong rows."""
    try:
        ok, why = _outcome(case, "duckdb")
    except ViewCompileError as exc:
        record_property(CONFORMANCE_REFUSED_PROPERTY, f"{'shareable' in case.tags}|{exc}")
        pytest.skip(f"refused by the SQL compiler: {exc}")
    record_property(CONFORMANCE_SQL_PROPERTY, ok)
    if not ok:
        if "shareable" in case.tags:
            pytest.fail(why)
        pytest.xfail(f"not shareable ({', '.join(case.tags)}): {why}")


@pytest.mark.skipif(bool(_MISSING), reason=_MISSING or "")
def test_suite_is_complete() -> None:
    """The fixture holds the suite the brief names: 134 tests in 22 files, 123 of them shareable."""
    assert len(_CASES) == 134
    assert len({c.file for c in _CASES}) == 22
    assert sum("shareable" in c.tags for c in _CASES) == 123
