"""The sandbox command's Bulk Data options, run in-process over loopback."""

from __future__ import annotations

import json
import re
import threading

import pytest
import requests

from airflow_provider_smart.sandbox.cli import main
from tests.sandbox_fixtures import SmartClient, make_key

pytestmark = pytest.mark.integration


def test_cli_bulk_options(tmp_path, capsys):
    key, pem, public = make_key("RS384")
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [public]}))
    argv = ["--port", "0", "--patients", "3", "--register-client", "bulk-cli", "--jwks-file", str(jwks_file)]
    argv += ["--bulk-presigned", "--bulk-max-file-resources", "4", "--bulk-polls", "0", "--bulk-retry-after", "7"]
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(main(argv, stop=stop)))
    thread.start()
    try:
        out = ""
        for _ in range(200):
            out += capsys.readouterr().out
            if "Press Ctrl+C" in out:
                break
            threading.Event().wait(0.05)
        fhir_base = re.search(r"FHIR base:\s+(\S+)", out)[1]
        files_origin = re.search(r"Bulk Data files:\s+(\S+) \(presigned URLs;", out)[1]
        token_url = re.search(r"token endpoint:\s+(\S+)", out)[1]
        server = type("S", (), {"token_url": token_url})()
        client = SmartClient(server, "bulk-cli", "unused", "RS384", key, pem, public)  # type: ignore[arg-type]
        session = client.session()
        kickoff = session.get(
            f"{fhir_base}/$export", params={"_type": "Observation"}, headers={"Prefer": "respond-async"}, timeout=30
        )
        assert kickoff.status_code == 202
        status_url = kickoff.headers["Content-Location"]
        for _ in range(200):
            status = session.get(status_url, timeout=30)
            if status.status_code == 200:
                break
            assert status.headers["Retry-After"] == "7"
            threading.Event().wait(0.02)
        manifest = status.json()
        assert manifest["requiresAccessToken"] is False
        assert manifest["output"] and all(item["count"] <= 4 for item in manifest["output"])
        assert all(item["url"].startswith(files_origin) for item in manifest["output"])
        assert requests.get(manifest["output"][0]["url"], timeout=30).status_code == 200
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result == [0]


def test_cli_refuses_bad_bulk_options(capsys):
    with pytest.raises(SystemExit):
        main(["--bulk-max-file-resources", "0"])
    assert "at least 1" in capsys.readouterr().err
