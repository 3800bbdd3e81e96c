"""The official SQL on FHIR v2 tests, read from the shared fixtures (never copied into the repo)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import SHARED_FIXTURES

SUITE_DIR = SHARED_FIXTURES / "sql-on-fhir-v2" / "tests"


@dataclass(frozen=True)
class Case:
    file: str
    title: str
    tags: tuple[str, ...]
    view: Any
    resources: list[dict[str, Any]]
    expect: list[dict[str, Any]] | None
    expect_columns: list[str] | None
    expect_error: bool

    @property
    def id(self) -> str:
        return f"{self.file}::{self.title}"


def suite_missing() -> str | None:
    """Why the suite cannot run here (None when it can); with CI=true, a missing suite is an error."""
    if SUITE_DIR.is_dir() and any(SUITE_DIR.glob("*.json")):
        return None
    reason = f"SQL on FHIR v2 tests not found at {SUITE_DIR}"
    if os.environ.get("CI", "").lower() == "true":
        raise RuntimeError(f"CI=true but {reason}")
    return reason


def load_cases() -> list[Case]:
    cases: list[Case] = []
    for path in sorted(Path(SUITE_DIR).glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        for test in doc["tests"]:
            cases.append(
                Case(
                    file=path.name,
                    title=test["title"],
                    tags=tuple(test.get("tags", ())),
                    view=test["view"],
                    resources=doc.get("resources", []),
                    expect=test.get("expect"),
                    expect_columns=test.get("expectColumns"),
                    expect_error=bool(test.get("expectError")),
                )
            )
    return cases


def rows_match(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    """Same rows in any order, as a multiset; 5 and 5.0 are equal, true and 1 are not."""
    if len(actual) != len(expected):
        return False
    remaining = [_canon(row) for row in actual]
    for row in expected:
        want = _canon(row)
        for i, got in enumerate(remaining):
            if got == want:
                del remaining[i]
                break
        else:
            return False
    return True


def _canon(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _canon(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_canon(v) for v in value)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("num", float(value))
    return value
