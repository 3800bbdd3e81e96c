"""Failures no retry can fix fail the task at once (AirflowFailException), over real HTTP to the sandbox.

A revoked client, a scope the registration does not hold, a kick-off parameter the server refuses: each
comes back the same way on every retry, so the task must not spend its retries (``retries=2`` five minutes
apart: ten minutes to fail) and must not claim an export was kept for a retry when none was started.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_smart.fhir.errors import FhirError
from airflow_provider_smart.operators.search import FhirSearchOperator
from airflow_provider_smart.sandbox.server import SandboxServer
from tests.integration.bulk_helpers import context, export_operator, kickoffs
from tests.sandbox_fixtures import SmartClient, register_client

pytestmark = pytest.mark.integration

KEPT = "kept on the server for the retry to re-attach"


def test_a_revoked_client_fails_the_export_without_retries(
    sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    register_client(sandbox, smart_client.client_id, jwks={"keys": [smart_client.jwk]}, active=False)
    op = export_operator(tmp_path / "out", retries=2)
    with caplog.at_level(logging.INFO), pytest.raises(AirflowFailException) as failed:
        op.execute(context())
    message = str(failed.value)
    assert "invalid_client" in message
    assert "No retry" in message and "clear the task" in message
    assert f"client_id {smart_client.client_id!r}" in message  # the fix names the client to look at
    assert KEPT not in caplog.text  # no export was started, so none was kept
    assert kickoffs(sandbox) == 0


def test_a_scope_the_registration_lacks_fails_without_retries(
    sandbox: SandboxServer,
    smart_client_factory: Callable[..., SmartClient],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = smart_client_factory(scope="system/Patient.read", set_connection=False)
    conn = json.loads(client.connection_json())
    conn["extra"]["scope"] = "system/Observation.read"  # not in the registration
    monkeypatch.setenv("AIRFLOW_CONN_SMART_FHIR_DEFAULT", json.dumps(conn))
    with pytest.raises(AirflowFailException, match="invalid_scope"):
        export_operator(tmp_path / "out", retries=2).execute(context())


def test_a_refused_kickoff_parameter_fails_without_retries(
    sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    op = export_operator(tmp_path / "out", retries=2, types=["Basic"])
    with caplog.at_level(logging.INFO), pytest.raises(AirflowFailException) as failed:
        op.execute(context())
    message = str(failed.value)
    assert "HTTP 400" in message and "Basic" in message  # the server's own reason
    assert "lenient=True" in message  # and the way out
    assert KEPT not in caplog.text
    assert not (tmp_path / "out" / "_exports").exists() or not list((tmp_path / "out").rglob("state.json"))


def test_a_refused_search_parameter_fails_the_search_without_retries(
    sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path
) -> None:
    op = FhirSearchOperator(
        task_id="search",
        resource_type="Observation",
        search_params={"colour": "red"},
        output=str(tmp_path / "out"),
        incremental=None,
        retries=2,
    )
    with pytest.raises(AirflowFailException, match="unknown search parameter 'colour'"):
        op.execute(context())


def test_a_failure_a_retry_can_fix_keeps_its_retries(
    sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server error (HTTP 500 at the kick-off) may be gone on the next try: the task fails normally."""
    sandbox.state.faults.fail("*$export", status=500, times=None)
    with caplog.at_level(logging.INFO), pytest.raises(FhirError) as failed:
        export_operator(tmp_path / "out", retries=2).execute(context())
    assert not isinstance(failed.value, AirflowFailException), failed.value
    assert "HTTP 500" in str(failed.value)
    assert KEPT not in caplog.text  # the kick-off failed: there is no export a retry could re-attach to
