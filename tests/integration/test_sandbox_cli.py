"""``python -m airflow_provider_smart.sandbox`` in-process: prints its URLs, registers a client, serves."""

from __future__ import annotations

import json
import re
import threading

import pytest
import requests

from airflow_provider_smart.sandbox.cli import main
from tests.sandbox_fixtures import SmartClient, make_key

pytestmark = pytest.mark.integration


def test_cli_runs_registers_and_stops(tmp_path, capsys):
    key, pem, public = make_key("ES384")
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [public]}))
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            main(
                [
                    "--port",
                    "0",
                    "--patients",
                    "5",
                    "--seed",
                    "9",
                    "--register-client",
                    "cli-client",
                    "--jwks-file",
                    str(jwks_file),
                    "--scope",
                    "system/Patient.read",
                ],
                stop=stop,
            )
        )
    )
    thread.start()
    try:
        for _ in range(200):
            out = capsys.readouterr().out
            if "Press Ctrl+C" in out:
                break
            threading.Event().wait(0.05)
        fhir_base = re.search(r"FHIR base:\s+(\S+)", out)[1]
        assert "BEGIN" not in out and "PRIVATE" not in out  # never key material
        assert "registered client:   cli-client" in out
        token_url = re.search(r"token endpoint:\s+(\S+)", out)[1]
        server = type("S", (), {"token_url": token_url})()
        client = SmartClient(server, "cli-client", "unused", "ES384", key, pem, public, scope="system/Patient.read")  # type: ignore[arg-type]
        token = client.token()
        response = requests.get(f"{fhir_base}/Patient", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert response.json()["total"] == 5
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result == [0]


def test_cli_refuses_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--register-client", "x"])
    assert "--jwks-file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--load-ndjson", str(tmp_path / "missing")])
    assert "not a directory" in capsys.readouterr().err


def test_cli_vendor_switch(capsys):
    from airflow_provider_smart.sandbox.cli import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args(["--vendor", "oracle-health"])).vendor == "oracle-health"
    assert config_from_args(build_parser().parse_args([])).vendor is None
    with pytest.raises(SystemExit):
        main(["--vendor", "cernr"])
    err = capsys.readouterr().err
    assert "invalid choice: 'cernr'" in err and "oracle-health" in err
