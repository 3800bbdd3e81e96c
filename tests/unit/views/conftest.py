"""Counts conformance results and prints the tally at the end of every pytest run that ran them."""

from __future__ import annotations

import pytest

from tests.unit.views import conformance

RESULTS: dict[str, bool] = {}  # the Python evaluator: test id -> passed
SQL_RESULTS: dict[str, bool] = {}  # the SQL compiler on DuckDB: test id -> passed
REFUSED: dict[str, str] = {}  # test id -> why the SQL compiler refused the view


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS and not SQL_RESULTS and not REFUSED:
        return
    cases = conformance.load_cases() if conformance.suite_missing() is None else []
    total = len(cases) or len(RESULTS)
    terminalreporter.write_sep("=", "SQL on FHIR v2")
    if RESULTS:
        terminalreporter.write_line(
            f"SQL on FHIR v2 conformance (Python evaluator): {sum(RESULTS.values())}/{total} passed"
        )
    if SQL_RESULTS or REFUSED:
        shareable = {c.id for c in cases if "shareable" in c.tags}
        terminalreporter.write_line(
            f"SQL on FHIR v2 conformance (DuckDB SQL): {sum(SQL_RESULTS.values())}/{total} passed, "
            f"{len(REFUSED)} refused at compile time ({len(shareable & set(REFUSED))} of them shareable)"
        )
        for case_id, why in sorted(REFUSED.items()):
            terminalreporter.write_line(f"  refused: {case_id}: {why}")
