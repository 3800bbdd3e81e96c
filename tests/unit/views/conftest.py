"""Counts conformance results and prints the tally at the end of every pytest run that ran them."""

from __future__ import annotations

import pytest

from tests.unit.views import conformance

RESULTS: dict[str, bool] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    total = len(conformance.load_cases()) if conformance.suite_missing() is None else len(RESULTS)
    passed = sum(RESULTS.values())
    terminalreporter.write_sep("=", "SQL on FHIR v2")
    terminalreporter.write_line(f"SQL on FHIR v2 conformance: {passed}/{total} passed")
