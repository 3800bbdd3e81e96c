"""Test-wide setup: an isolated AIRFLOW_HOME with a SQLite metadata DB, made once per session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="smart-airflow-home-"))
os.environ.setdefault("AIRFLOW_HOME", str(_HOME))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")

REPO = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"

pytest_plugins = ["tests.sandbox_fixtures", "tests.s3_fixtures"]


def _leave_warnings_to_pytest() -> None:
    """Airflow's logging setup replaces ``warnings.showwarning`` to log warnings, which also takes them from
    pytest's warning capture: a deprecation our code triggers would vanish instead of failing or showing in
    the summary. Tests keep the hook pytest installs (the pyproject filters decide what is shown)."""
    from airflow._shared.logging import structlog as core_logging
    from airflow.sdk._shared.logging import structlog as sdk_logging

    for module in (core_logging, sdk_logging):
        module._WarningsInterceptor.register = staticmethod(lambda new_callable: None)  # type: ignore[method-assign]


_leave_warnings_to_pytest()

AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))


def run_airflow(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real ``airflow`` command with the test AIRFLOW_HOME and the repo's dags/ folder."""
    full_env = dict(os.environ)
    full_env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    full_env.update(env or {})
    return subprocess.run(
        [AIRFLOW_BIN, *args], env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """A migrated SQLite metadata DB in the session's AIRFLOW_HOME (for `airflow dags test` and friends)."""
    result = run_airflow("db", "migrate")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    yield Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture(autouse=True)
def _restore_secret_masker() -> Iterator[None]:
    """Forget secrets masked during a test (every access token adds a pattern to a process-wide regex,
    recompiled at each addition), so a long test session does not slow down test after test."""
    from airflow._shared.secrets_masker import _secrets_masker as core_masker
    from airflow.sdk._shared.secrets_masker import _secrets_masker as sdk_masker

    maskers = [sdk_masker(), core_masker()]
    saved = [(m.patterns.copy(), m.replacer) for m in maskers]
    yield
    for masker, (patterns, replacer) in zip(maskers, saved, strict=True):
        masker.patterns, masker.replacer = patterns, replacer
    # Tokens and discovery cached process-wide must not leak from one test into the next.
    from airflow_provider_smart.auth import cache

    cache.clear()


def pytest_sessionstart(session: pytest.Session) -> None:
    """On CI the shared fixtures lie beside the clone: tests that use them must run, not skip."""
    if os.environ.get("CI", "").lower() == "true" and not (SHARED_FIXTURES / "synthea-100").is_dir():
        raise pytest.UsageError(f"CI=true but the synthea-100 fixture is missing at {SHARED_FIXTURES}")
