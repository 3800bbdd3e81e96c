"""Test-wide setup: an isolated AIRFLOW_HOME with a SQLite metadata DB, made once per test process.

``make test`` runs the suite on several pytest-xdist workers (processes) at once. A test is parallel-safe when
it follows these rules:

* Files go under ``tmp_path`` (or ``tmp_path_factory``), never a fixed path, the repo or the home directory.
* Servers listen on 127.0.0.1 port 0 (``tests/loopback.py``, the ``sandbox*`` fixtures, ``moto_s3``); a fixed
  port is a defect. Subprocesses that serve get ``--port 0`` and report the port they got.
* Environment variables are set with ``monkeypatch.setenv`` (undone after the test), never ``os.environ[...]``.
* The Airflow metadata DB comes from the ``airflow_db`` fixture: each worker has its own AIRFLOW_HOME (made
  below with ``tempfile`` when the worker starts) and its own SQLite file, copied from one migrated template.
* Process-wide caches (tokens, discovery) are cleared after every test by ``_restore_secret_masker``.

Each worker runs a share of the tests in one process, so module- and session-scoped fixtures are made once
per worker, and a test never sees another worker's servers, files or environment.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

# Always a home of our own: `make` exports AIRFLOW_HOME (the demo's), and parallel workers must not share one.
_HOME = Path(tempfile.mkdtemp(prefix="smart-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
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


def _migrated_template(shared: Path) -> Path:
    """One ``airflow db migrate`` for the whole run, into a template home all workers copy from (under a lock:
    the first worker to ask migrates, the others wait and copy)."""
    template = shared / "airflow-db-template"
    with (shared / "airflow-db-template.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (template / "done").exists():
            shutil.rmtree(template, ignore_errors=True)
            template.mkdir()
            result = run_airflow("db", "migrate", env={"AIRFLOW_HOME": str(template)})
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
            (template / "done").touch()
    return template / "airflow.db"


@pytest.fixture(scope="session")
def airflow_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A migrated SQLite metadata DB in this worker's AIRFLOW_HOME (for `airflow dags test` and friends)."""
    # Under xdist each worker's basetemp is a child of one directory shared by the run; alone, it is its own.
    basetemp = tmp_path_factory.getbasetemp()
    shared = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp
    home = Path(os.environ["AIRFLOW_HOME"])
    staged = home / "airflow.db.copying"
    shutil.copyfile(_migrated_template(shared), staged)
    staged.replace(home / "airflow.db")  # whole, never half-copied, for any process that opens it
    # An earlier test in this worker may have opened the (then empty) DB in-process: drop pooled connections
    # so the next session opens the migrated file.
    from airflow import settings

    if settings.engine is not None:
        settings.engine.dispose()
    yield home


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


#: The user properties each SQL on FHIR conformance case records; tallied below.
CONFORMANCE_PROPERTY = "sql_on_fhir_conformance"  # the Python evaluator: True when the case passed
CONFORMANCE_SQL_PROPERTY = "sql_on_fhir_conformance_duckdb"  # the SQL compiler on DuckDB: True when passed
CONFORMANCE_REFUSED_PROPERTY = "sql_on_fhir_conformance_refused"  # "<shareable>|<why the compiler refused>"
_conformance: dict[str, dict[str, object]] = {
    CONFORMANCE_PROPERTY: {},
    CONFORMANCE_SQL_PROPERTY: {},
    CONFORMANCE_REFUSED_PROPERTY: {},
}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect conformance outcomes where reports arrive: in a serial run's only process, and in the xdist
    controller (which receives every worker's reports but runs no test itself)."""
    for name, value in report.user_properties:
        if name in _conformance:
            _conformance[name][report.nodeid] = value


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    python, sql, refused = (_conformance[k] for k in _conformance)
    if not (python or sql or refused):
        return
    from tests.unit.views import conformance

    total = len(conformance.load_cases()) if conformance.suite_missing() is None else len(python)
    terminalreporter.write_sep("=", "SQL on FHIR v2")
    if python:
        passed = sum(bool(v) for v in python.values())
        terminalreporter.write_line(f"SQL on FHIR v2 conformance (Python evaluator): {passed}/{total} passed")
    if sql or refused:
        passed = sum(bool(v) for v in sql.values())
        shareable = sum(str(v).startswith("True|") for v in refused.values())
        terminalreporter.write_line(
            f"SQL on FHIR v2 conformance (DuckDB SQL): {passed}/{total} passed, "
            f"{len(refused)} refused at compile time ({shareable} of them shareable)"
        )
        for nodeid, why in sorted(refused.items()):
            case_id = nodeid.rsplit("[", 1)[-1].rstrip("]")
            terminalreporter.write_line(f"  refused: {case_id}: {str(why).split('|', 1)[-1]}")


def pytest_sessionstart(session: pytest.Session) -> None:
    """On CI the shared fixtures lie beside the clone: tests that use them must run, not skip."""
    if os.environ.get("CI", "").lower() == "true" and not (SHARED_FIXTURES / "synthea-100").is_dir():
        raise pytest.UsageError(f"CI=true but the synthea-100 fixture is missing at {SHARED_FIXTURES}")
