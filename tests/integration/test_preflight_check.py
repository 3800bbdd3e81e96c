"""``smart-fhir check``: token, scopes, what the server declares and the detected vendor, against the sandbox."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_provider_smart.cli import main
from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.sandbox.state import SandboxConfig
from tests.sandbox_fixtures import SmartClient

pytestmark = pytest.mark.integration

SMART_FHIR = str(Path(sys.executable).with_name("smart-fhir"))
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


def rows(text: str) -> dict[str, tuple[str, str]]:
    """check -> (status, value) from the printed table."""
    found = {}
    for line in text.splitlines()[1:]:
        match = re.match(r"^(\S+)\s{2,}(.+?)\s{2,}(.*)$", line)
        if match:
            found[match.group(2).strip()] = (match.group(1), match.group(3))
    return found


@pytest.fixture
def playing(
    sandbox_factory: Callable[..., SandboxServer], smart_client_factory: Callable[..., SmartClient]
) -> Callable[..., SmartClient]:
    def start(vendor: str | None, connection_vendor: str | None) -> SmartClient:
        server = sandbox_factory(SandboxConfig(patients=1, seed=42, vendor=vendor))
        return smart_client_factory(server=server, extra={"vendor": connection_vendor} if connection_vendor else None)

    return start


def test_the_command_reports_a_matching_vendor(playing: Callable[..., SmartClient]) -> None:
    client = playing("oracle-health", "oracle-health")
    result = subprocess.run([SMART_FHIR, "check", client.conn_id], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = rows(result.stdout)
    assert table["token"][0] == "ok" and "not shown" in table["token"][1]
    assert table["software"][1].startswith("airflow-provider-smart sandbox playing Oracle Health")
    assert table["export levels declared"][1] == "patient, group"
    assert table["detected vendor"][1] == "oracle-health"
    assert table["vendor profile"][1].startswith("oracle-health")
    assert "20000" in table["profile group limit"][1] and "docs.oracle.com" in table["profile group limit"][1]
    assert "system/Patient.read" in table["scopes granted"][1]
    assert table["scope vs profile"][0] == "warn" and "system/<Type>.read for each type" in table["scope vs profile"][1]
    assert not any(status == "FAIL" for status, _ in table.values())
    assert not JWT.search(result.stdout + result.stderr)  # the token is never printed
    for line in client.private_key_pem.splitlines()[1:-1]:
        assert line not in result.stdout + result.stderr


def test_a_profile_the_server_contradicts_fails(
    playing: Callable[..., SmartClient], capsys: pytest.CaptureFixture[str]
) -> None:
    client = playing("epic", "oracle-health")
    assert main(["check", client.conn_id]) == 2
    out = capsys.readouterr()
    table = rows(out.out)
    assert table["detected vendor"][1] == "epic"
    assert table["profile vs server"] == ("FAIL", "the server reports epic, not oracle-health")
    assert "hard mismatch" in out.err


def test_levels_the_server_does_not_declare_fail(
    playing: Callable[..., SmartClient], capsys: pytest.CaptureFixture[str]
) -> None:
    client = playing("athenahealth", "medplum")  # Medplum exports at system level too; this server does not
    assert main(["check", client.conn_id]) == 2
    table = rows(capsys.readouterr().out)
    assert table["levels vs server"] == ("FAIL", "the profile expects system; the server declares none")
    assert table["export levels declared"][1] == "group"


def test_no_profile_chosen_suggests_the_detected_one(
    playing: Callable[..., SmartClient], capsys: pytest.CaptureFixture[str]
) -> None:
    client = playing("medplum", None)
    assert main(["check", client.conn_id]) == 0
    table = rows(capsys.readouterr().out)
    assert table["vendor profile"] == ("warn", "none chosen; set the connection's vendor extra to 'medplum'")


def test_a_plain_sandbox_matches_no_vendor(
    playing: Callable[..., SmartClient], capsys: pytest.CaptureFixture[str]
) -> None:
    client = playing(None, None)
    assert main(["check", client.conn_id]) == 0
    table = rows(capsys.readouterr().out)
    assert table["detected vendor"][1].startswith("none")
    assert table["export levels declared"][1] == "system, patient, group"
    assert table["vendor profile"] == ("info", "none chosen")


def test_the_test_button_names_the_detected_vendor_and_the_mismatch(playing: Callable[..., SmartClient]) -> None:
    from airflow_provider_smart.hooks.smart import SmartFhirHook

    matching = playing("oracle-health", "oracle-health")
    ok, message = SmartFhirHook(matching.conn_id).test_connection()
    assert ok, message
    assert "detected vendor: oracle-health" in message and "vendor profile: oracle-health" in message
    wrong = playing("epic", "oracle-health")
    ok, message = SmartFhirHook(wrong.conn_id).test_connection()
    assert not ok
    assert "detected vendor: epic" in message
    assert "profile vs server: the server reports epic, not oracle-health (FAIL)" in message
    assert not JWT.search(message)
