"""Evaluation failures: linear-time patterns, and every failure a ViewError naming the column and resource."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from airflow_provider_smart.views import ViewError, compile_view, run_view


def _view(*columns: tuple[str, str], constant: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {"resource": "Patient", "select": [{"column": [{"name": n, "path": p} for n, p in columns]}]}
    if constant:
        view["constant"] = constant
    return view


def _patient(family: str, rid: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": rid, "name": [{"family": family}]}


def test_a_backtracking_pattern_from_the_data_runs_in_linear_time() -> None:
    # With a backtracking engine this is about 6 s at 27 characters and doubles per character; at 60 it
    # would run for years. It runs in a child process with a hard timeout so a regression fails, not hangs.
    code = textwrap.dedent(
        """
        from airflow_provider_smart.views import run_view
        view = {"resource": "Patient", "constant": [{"name": "p", "valueString": "^(a+)+$"}],
                "select": [{"column": [{"name": "m", "path": "name.family.matches(%p)"},
                                       {"name": "r", "path": "name.family.replaceMatches(%p, 'x')"}]}]}
        rows = run_view(view, [{"resourceType": "Patient", "id": "p", "name": [{"family": "a" * 60 + "!"}]}])
        print(rows)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'m': False" in done.stdout and "'r': '" + "a" * 60 + "!'" in done.stdout


def test_matches_and_replace_matches_answer_like_fhirpath() -> None:
    rows = run_view(
        _view(
            ("m", "name.family.matches('^Sm.th$')"),
            ("partial", "name.family.matches('mit')"),
            ("r", "name.family.replaceMatches('(S)(m)', '$2$1$3')"),
        ),
        [_patient("Smith")],
    )
    # $3 names no group of the pattern: it stays as written.
    assert rows == [{"m": True, "partial": True, "r": "mS$3ith"}]


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [("(?=a)b", "invalid perl operator"), ("(a)\\\\1", "invalid escape"), ("[", "missing ]"), ("a{1000}{1000}", "")],
)
def test_a_pattern_re2_cannot_run_is_a_view_error_naming_column_and_resource(pattern: str, reason: str) -> None:
    view = _view(("id", "id"), ("odd", f"name.family.matches('{pattern}')"))
    with pytest.raises(ViewError) as caught:
        run_view(view, [_patient("abc", rid="p-42")])
    message = str(caught.value)
    assert "Patient/p-42" in message and "column 'odd'" in message and "RE2" in message
    assert reason in message


def test_deep_nesting_is_a_view_error_naming_column_and_resource() -> None:
    def deep(depth: int) -> dict[str, Any]:
        node: dict[str, Any] = {"url": "x"}
        for _ in range(depth):
            node = {"url": "x", "extension": [node]}
        return node

    # Two equal, separately built values: comparing them recurses once per level.
    depth = sys.getrecursionlimit() * 2
    patient = {"resourceType": "Patient", "id": "deep-1", "extension": [deep(depth), deep(depth)]}
    view = _view(("same", "extension.first() = extension.last()"))
    with pytest.raises(ViewError, match=r"Patient/deep-1: column 'same': .*nested too deeply"):
        run_view(view, [patient])


def test_a_deeply_nested_expression_is_a_view_error() -> None:
    path = "(" * 5000 + "id" + ")" * 5000
    with pytest.raises(ViewError, match="nested too deeply to compile"):
        compile_view(_view(("id", path)))


def test_where_and_for_each_failures_name_the_resource() -> None:
    view = {
        "resource": "Patient",
        "where": [{"path": "name.family.matches('(?!x)')"}],
        "select": [{"column": [{"name": "id", "path": "id"}]}],
    }
    with pytest.raises(ViewError, match=r"Patient/p9: where path .*RE2"):
        run_view(view, [_patient("abc", rid="p9")])
