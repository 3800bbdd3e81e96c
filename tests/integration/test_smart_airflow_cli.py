"""The real airflow CLI on a smart_fhir connection: `connections test` and `dags test` of the auth check DAG."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from airflow_provider_smart.auth.keys import generate_private_key, private_key_pem
from tests.conftest import run_airflow

pytestmark = pytest.mark.integration

JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+")
ENABLED = {"AIRFLOW__CORE__TEST_CONNECTION": "Enabled"}


def key_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def assert_no_secrets(text: str, pem: str) -> None:
    assert not JWT_PATTERN.search(text), "a JWT (assertion or token) reached the output"
    for line in key_lines(pem):
        assert line not in text


def test_connections_test_succeeds_with_discovery_and_scopes(airflow_db, sandbox, smart_client):
    result = run_airflow("connections", "test", smart_client.conn_id, env=ENABLED)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Connection success!" in output
    assert_no_secrets(output, smart_client.private_key_pem)


def test_connections_test_failure_explains_the_fix(airflow_db, sandbox, smart_client, monkeypatch):
    wrong = private_key_pem(generate_private_key("RS384")).decode()
    conn = json.loads(smart_client.connection_json())
    conn["password"] = wrong
    conn["extra"].pop("kid")
    monkeypatch.setenv("AIRFLOW_CONN_SMART_WRONG_KEY", json.dumps(conn))
    result = run_airflow("connections", "test", "smart_wrong_key", env=ENABLED)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Connection failed!" in output
    assert "invalid_client" in output and "is registered for client_id" in output
    assert_no_secrets(output, wrong)


def test_connections_test_is_disabled_by_default(airflow_db, sandbox, smart_client):
    result = run_airflow(
        "connections", "test", smart_client.conn_id, env={"AIRFLOW__CORE__TEST_CONNECTION": "Disabled"}
    )
    assert result.returncode != 0
    assert "Testing connections is disabled" in result.stdout + result.stderr


def test_dags_test_auth_check(airflow_db, sandbox, smart_client_factory):
    client = smart_client_factory(algorithm="ES384", scope="system/Patient.read system/Observation.read")
    result = run_airflow("dags", "test", "smart_fhir_auth_check")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # `airflow dags test` runs the task in-process and writes its log to the console, not to log files: the
    # task's own lines (its summary, the discovery and token request lines) are in the output checked below.
    assert "granted 2 scope(s): system/Patient.read system/Observation.read" in output
    assert f"token endpoint {sandbox.token_url}" in output
    assert_no_secrets(output, client.private_key_pem)


def test_smart_fhir_token_command(sandbox, smart_client):
    import subprocess
    import sys

    command = str(Path(sys.executable).with_name("smart-fhir"))
    result = subprocess.run(
        [command, "token", "--conn-id", smart_client.conn_id], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["token_url"] == sandbox.token_url
    assert "system/Patient.read" in summary["granted_scopes"]
    assert summary["expires_in"] > 0 and "access_token" not in summary
    assert_no_secrets(result.stdout + result.stderr, smart_client.private_key_pem)

    shown = subprocess.run(
        [command, "token", "--conn-id", smart_client.conn_id, "--show-token"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert JWT_PATTERN.fullmatch(json.loads(shown.stdout)["access_token"])
