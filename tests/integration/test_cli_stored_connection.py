"""``smart-fhir token`` finds connections stored in the metadata DB, as ``airflow connections test`` does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_airflow

pytestmark = pytest.mark.integration

SMART_FHIR = str(Path(sys.executable).with_name("smart-fhir"))


@pytest.fixture
def fernet_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """One Fernet key for every process of the test: in unit-test mode each process would make its own,
    and a password stored by one process could not be read by the next."""
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", key)
    return key


def test_token_for_a_connection_in_the_metadata_db(airflow_db, fernet_key, sandbox, smart_client, monkeypatch):
    conn_id = "smart_fhir_in_db"
    monkeypatch.delenv(f"AIRFLOW_CONN_{conn_id.upper()}", raising=False)
    # The worker's metadata DB is a fresh copy (airflow_db) with no such connection: no delete beforehand.
    added = run_airflow(
        "connections",
        "add",
        conn_id,
        "--conn-json",
        smart_client.connection_json(),
    )
    assert added.returncode == 0, added.stdout[-2000:] + added.stderr[-2000:]
    try:
        result = subprocess.run(
            [SMART_FHIR, "token", "--conn-id", conn_id], capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, result.stderr[-3000:]
        # Airflow's own notices (a connection type with '_' breaks RFC 3986) are not this command's answer.
        assert "RFC3986" not in result.stderr and "[warning" not in result.stderr, result.stderr[-3000:]
        summary = json.loads(result.stdout)
        assert summary["conn_id"] == conn_id
        assert summary["token_url"] == sandbox.token_url
        assert "system/Patient.read" in summary["granted_scopes"]
        for line in smart_client.private_key_pem.splitlines()[1:-1]:
            assert line not in result.stdout + result.stderr
    finally:
        # In-process (the worker shares this DB): a second `airflow` process would cost seconds.
        _delete_connection(conn_id)


def _delete_connection(conn_id: str) -> None:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == conn_id).delete(synchronize_session=False)


def test_token_for_a_connection_defined_nowhere(airflow_db, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_SMART_FHIR_NOWHERE", raising=False)
    result = subprocess.run(
        [SMART_FHIR, "token", "--conn-id", "smart_fhir_nowhere"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1
    assert "no connection 'smart_fhir_nowhere'" in result.stderr
    assert "airflow connections add" in result.stderr
